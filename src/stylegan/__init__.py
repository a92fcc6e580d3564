"""StyleGAN2-ADA networks with the official names, safe loaders and the convert CLI."""
from src.stylegan.networks import Discriminator, Generator

"""StyleGAN2-ADA networks with the official names, safe loaders and the convert CLI.

    from src.stylegan import load_generator, save_generator, Generator, Discriminator
    G = load_generator("ffhq.pkl", device="cuda")      # NVIDIA .pkl, rosinality .pt, our .safetensors
    save_generator(G, "out.safetensors", fp16=True)     # out.safetensors + out.json
"""
from src.stylegan.discriminator import Discriminator
from src.stylegan.generator import Generator
from src.stylegan.loaders import detect_format, load_generator
from src.stylegan.native import save_generator
from src.stylegan.sampling import seeded_ws

__all__ = ["Generator", "Discriminator", "load_generator", "save_generator", "detect_format", "seeded_ws"]

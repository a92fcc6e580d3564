"""Projection of real images into the generator's W / W+ space, and latent file loading."""

"""Data: real-face folders, e4e latents and captions, prompt batches, augmentation, image I/O and
face alignment. Never imports a model (the embedded domain's renderer and data modules: src/embedded)."""

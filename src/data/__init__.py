"""Data: the synthetic face renderer (src.data.synthetic), data modules and image I/O."""

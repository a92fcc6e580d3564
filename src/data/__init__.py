"""Data: the synthetic face renderer (src.embedded), data modules and image I/O."""

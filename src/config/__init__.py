"""Structured-config schemas and Hydra resolvers (import registers them)."""
from src.config.schema import register_configs, validate_config  # noqa: F401

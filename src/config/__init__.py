"""Structured-config schemas and Hydra resolvers (``src.config.schema``, imported on first use: the
inference commands read their settings without importing Hydra)."""


def __getattr__(name: str):
    if name in ("register_configs", "validate_config"):
        from src.config import schema

        return getattr(schema, name)
    raise AttributeError(f"module 'src.config' has no attribute {name!r}")

"""Compose a primary config of ``conf/`` with a user's overrides, without Hydra's run folders (the
inference entry points write only what they are asked to). Every config problem is one UserError line."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from src.config.schema import register_configs, register_resolvers, validate_config
from src.utils.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def compose_config(config_name: str, overrides: Sequence[str]):
    """``conf/<config_name>.yaml`` with the overrides, resolved (paths from the repository root and
    the working directory) and validated against its schema."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    register_configs()
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
        # ${hydra:runtime.*} is not available with compose: resolve paths from the repo root
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.output_dir = str(Path.cwd())
        OmegaConf.resolve(cfg)
    except UserError:
        raise
    except Exception as e:  # Hydra/OmegaConf errors: keep their first line, which names the key
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"bad argument: {msg}") from None
    validate_config(cfg)
    return cfg

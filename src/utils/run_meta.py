"""Reproducibility record saved with every run: resolved config, seed, package versions, git state."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from src.utils.io import atomic_write_text

PACKAGES = ("torch", "torchvision", "pytorch-lightning", "hydra-core", "omegaconf", "open-clip-torch",
            "wandb", "torchmetrics", "safetensors", "numpy")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide a run's numbers."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        import torch

        out["cuda"] = str(torch.version.cuda)
        out["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none"
    except Exception:  # torch import problems are reported elsewhere
        pass
    return out


def git_state(root: str | os.PathLike) -> dict[str, str]:
    """Commit hash and whether the work tree had uncommitted changes ('unknown' outside git)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD") or "unknown", "dirty": str(bool(git("status", "--porcelain")))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": "unknown"}


def save_run_metadata(run_dir: str | os.PathLike, config_yaml: str, seed: int, root: str | os.PathLike) -> Path:
    """Write ``config.yaml`` (resolved) and ``run.json`` (seed, versions, git, argv) into ``run_dir``."""
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "config.yaml", config_yaml)
    record = {"seed": seed, "argv": sys.argv, "versions": package_versions(), "git": git_state(root)}
    path = run_dir / "run.json"
    atomic_write_text(path, json.dumps(record, indent=2))
    return path

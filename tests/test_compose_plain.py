"""Inference commands without overrides read their config without Hydra, and get what Hydra composes."""
from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from src.config.compose import _compose_hydra, compose_config, compose_plain
from tests.conftest import ROOT


@pytest.mark.parametrize("name", ["animate", "evaluate", "demo"])
def test_plain_composition_equals_hydras(name):
    plain, hydra = compose_plain(name), _compose_hydra(name, [])
    assert OmegaConf.to_yaml(plain) == OmegaConf.to_yaml(hydra)
    assert OmegaConf.get_type(plain) is OmegaConf.get_type(hydra)
    assert OmegaConf.is_struct(plain) and OmegaConf.is_struct(plain.paths)


def test_configs_with_other_defaults_go_through_hydra():
    assert compose_plain("train") is None


def test_verbatim_text_and_overrides_compose_as_before(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose_config("animate", ["text=The person's smiling, then winking"], verbatim=("text",))
    assert cfg.text == "The person's smiling, then winking" and cfg.frames == 16
    assert cfg.checkpoint == str(ROOT / "assets" / "animator_synthetic.safetensors")
    assert cfg.paths.output_dir == str(tmp_path)
    assert compose_config("animate", ["frames=8"]).frames == 8


def test_the_default_animate_config_imports_no_hydra():
    code = ("import sys; from src.config.cli import run_command; from src.config.compose import compose_config; "
            "compose_config('animate', []); import src.pipeline; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('hydra', 'lightning', 'pytorch_lightning')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

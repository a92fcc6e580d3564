"""Multirun sweeps through train.py: a grid over loss weights and an Optuna search (tiny oracle task)."""
from __future__ import annotations

import subprocess
import sys

import yaml

from tests.conftest import ROOT

TINY = ["task=oracle", "hardware=cpu", "logger=csv", "trainer.max_steps=2", "trainer.val_check_interval=1",
        "model.resolution=32", "model.batch_size=8", "model.width=8", "model.hidden=16",
        "data.val_batches=1", "data.test_batches=1", "name=sweep"]


def _train(args, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", *TINY, f"paths.log_dir={tmp_path}", *args],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path / "oracle" / "multiruns" / "sweep"


def test_grid_sweep_over_loss_weights(tmp_path):
    sweep = _train(["loss.contrastive=0.2,0.5"], tmp_path)
    values = sorted(yaml.safe_load((sweep / str(i) / "config.yaml").read_text())["loss"]["contrastive"] for i in (0, 1))
    assert values == [0.2, 0.5]
    assert all((sweep / str(i) / "run.json").is_file() for i in (0, 1))


def test_optuna_search_returns_the_monitored_metric(tmp_path):
    sweep = _train(["hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=1"],
                   tmp_path)
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(result["best_params"]) == {"loss.contrastive", "loss.lpips", "loss.smoothness", "loss.latent"}
    assert isinstance(result["best_value"], float)

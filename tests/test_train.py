"""train.py on a tiny model: fast_dev_run, run records, resume from last.ckpt, wandb offline, errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, compose_train
from tests.test_animator import write_tiny_models


CKPT_EVERY_STEP = "callbacks.model_checkpoint.every_n_train_steps=1"


@pytest.fixture(scope="module")
def tiny_overrides(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    g_path, clip_cfg = write_tiny_models(tmp)
    over = ["task=animator", "domain=synthetic", "loss=paper", "hardware=cpu", "logger=csv",
            f"domain.generator.checkpoint={g_path}", "domain.resolution=16", "domain.perceptual=none",
            "domain.identity_metric=none", "domain.prompts.concepts=[smiling,angry,winking]",
            "model.net.hidden=8", "model.inference.frames=4", "model.validation.video_every_n_steps=0",
            "data.batch_size=3", "data.val_batches=1", "data.test_batches=1", "data.train_batches=4",
            "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1"]
    for key in ("clip", "loss_clip"):
        over += [f"domain.{key}.{field}={'null' if value is None else value}" for field, value in clip_cfg.items()]
    return over


def test_fast_dev_run(tiny_overrides, tmp_path):
    from train import train

    cfg = compose_train(tiny_overrides + ["debug=fast_dev_run"], tmp_path)
    metrics = train(cfg)
    assert "test/text_top1" in metrics and "train/loss" in metrics
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_run_records_and_resume(tiny_overrides, tmp_path, capsys):
    from train import train

    cfg = compose_train(tiny_overrides + ["seed=7", CKPT_EVERY_STEP], tmp_path)
    train(cfg)
    run = tmp_path / "run"
    record = json.loads((run / "run.json").read_text())
    assert record["seed"] == 7 and torch.__version__.startswith(record["versions"]["torch"])
    assert "seed: 7" in (run / "config.yaml").read_text()
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file() and (run / "csv" / "metrics.csv").is_file()
    assert torch.load(last, weights_only=True)["global_step"] == 2
    capsys.readouterr()
    # the same run dir again with a longer budget: it continues from last.ckpt instead of restarting
    cfg = compose_train(tiny_overrides + ["seed=7", CKPT_EVERY_STEP, "trainer.max_steps=4"], tmp_path)
    train(cfg)
    assert "resuming from" in capsys.readouterr().err
    assert torch.load(last, weights_only=True)["global_step"] == 4


def test_wandb_offline(tiny_overrides, tmp_path, monkeypatch):
    import wandb

    from src.systems.run import finish_wandb as _finish_wandb
    from train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = compose_train(tiny_overrides + ["logger=wandb", "model.validation.video_every_n_steps=1", "model.validation.num_videos=2"], tmp_path)
    try:
        train(cfg)
    finally:
        _finish_wandb(False)
    assert wandb.run is None  # finished
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = {p.name for p in runs[0].rglob("*")}
    assert any(n.endswith(".wandb") for n in files)  # the run's event log (scalars, config)
    assert any(n.endswith((".mp4", ".gif")) for n in files), sorted(files)  # the logged video


def test_bad_config_value_exits_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "loss.tau=0", f"paths.log_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert lines == ["error: loss.tau must be > 0, got 0.0"] and "Traceback" not in proc.stderr


def test_missing_file_in_a_constructor_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"paths.log_dir={tmp_path}",
                           f"domain.generator.checkpoint={tmp_path / 'missing.pkl'}"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "missing.pkl" in errors[0] and "Traceback" not in proc.stderr


def test_training_on_a_latents_file(tiny_overrides, tmp_path):
    """The paper trains on precomputed (e4e) W+ codes: domain.data.latents feeds them as input faces."""
    from src.data.prompts import PromptDataModule
    from train import train

    bank = torch.randn(40, 6, 16)  # the tiny generator: num_ws 6, w_dim 16
    torch.save(bank, tmp_path / "codes.pt")
    dm = PromptDataModule({"template": "{}", "concepts": ["a", "b", "c"]}, batch_size=3, latents=str(tmp_path / "codes.pt"))
    batch = dm.dataset("train")[0]
    assert batch["ws"].shape == (3, 6, 16)
    train_rows = {tuple(r.flatten()[:3].tolist()) for r in bank[:36]}
    assert all(tuple(r.flatten()[:3].tolist()) in train_rows for r in batch["ws"])  # test codes held out
    cfg = compose_train(tiny_overrides + [f"domain.data.latents={tmp_path / 'codes.pt'}", "debug=fast_dev_run"], tmp_path)
    assert "train/loss" in train(cfg)
    torch.save(torch.randn(40, 5, 16), tmp_path / "bad.pt")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"paths.log_dir={tmp_path}",
                           f"domain.data.latents={tmp_path / 'bad.pt'}", "debug=fast_dev_run", "domain.perceptual=none"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2 and "generator takes" in proc.stderr, proc.stderr[-1500:]


def test_cpu_threads_per_ddp_rank(monkeypatch):
    """DDP ranks on one node share its cores instead of each taking all of them."""
    from omegaconf import OmegaConf

    import src.systems.run as train  # where the thread policy lives

    def hw(**kw):
        return OmegaConf.create({**dict(accelerator="gpu", devices=2, strategy="ddp", cpu_threads=None), **kw})

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(train.os, "cpu_count", lambda: 32)
    assert train.cpu_threads_per_process(hw()) == 16
    assert train.cpu_threads_per_process(hw(devices=[0, 1, 2, 3])) == 8
    assert train.cpu_threads_per_process(hw(cpu_threads=3)) == 3
    assert train.cpu_threads_per_process(hw(devices=1)) is None  # one process: torch's default
    assert train.cpu_threads_per_process(hw(accelerator="cpu", strategy="ddp_spawn")) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert train.cpu_threads_per_process(hw()) is None  # the user's setting, read by torch itself


def test_bad_cpu_threads_is_rejected(tmp_path):
    from src.config.schema import validate_config

    cfg = compose_train(["hardware=ddp", "hardware.cpu_threads=0"], tmp_path)
    with pytest.raises(Exception, match="cpu_threads"):
        validate_config(cfg)

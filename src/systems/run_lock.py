"""One run per run folder: ``<run dir>/run.lock`` holds the owner's pid, host, process start time and
SLURM job id while a run trains there.

* A second run of the same folder while the owner lives is refused (:class:`RunLocked`), or, with
  ``run_lock=new_folder``, moves to a fresh folder beside it (``<name>-2``, ``<name>-3``, ...).
* A lock whose owner is gone is taken over: same host and the pid no longer runs (or runs another
  process: its start time differs), or the same SLURM job id (a requeued job is the old job reborn,
  wherever it lands). A lock from another host with no such proof is live: the refusal says which
  file to delete if that machine is known to be gone.
* Only the process of global rank 0 takes the lock: the other DDP ranks (Lightning's children,
  srun's other tasks, torchrun's workers) run in the folder their rank 0 holds.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional

LOCK_NAME = "run.lock"
MODES = ("refuse", "new_folder")
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def launched_as_rank_zero() -> bool:
    """Whether this process is global rank 0 of its job, as the launcher's variables say."""
    for key in _RANK_VARIABLES:
        value = os.environ.get(key, "0").strip() or "0"
        if value.isdigit() and int(value) != 0:
            return False
    return True


def _start_time(pid: int) -> Optional[str]:
    """The kernel's start time of process ``pid`` (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def slurm_job() -> Optional[str]:
    """This SLURM job: an array task as <array job>_<task>, else SLURM_JOB_ID (None outside SLURM)."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{task}" if job and task else job


def me() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start": _start_time(pid), "slurm_job": slurm_job()}


def owner_alive(owner: dict[str, Any]) -> bool:
    """Whether the process that wrote ``owner`` may still run (see the module docstring)."""
    if owner.get("slurm_job") and owner.get("slurm_job") == slurm_job():
        return False  # this job, requeued: its earlier run is over
    if owner.get("host") != socket.gethostname():
        return True
    try:
        pid = int(owner["pid"])
        os.kill(pid, 0)
    except (KeyError, TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # someone else's process
        pass
    return not owner.get("start") or owner.get("start") == _start_time(pid)


class RunLocked(Exception):
    def __init__(self, path: Path, owner: dict[str, Any]):
        super().__init__(f"{path} is held by pid {owner.get('pid')} on {owner.get('host')}")
        self.path, self.owner = path, owner


class RunLock:
    """The lock of ``run_dir``; :meth:`acquire` takes it, :meth:`release` gives it back if still ours."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.mine = me()

    def _read(self) -> Optional[dict[str, Any]]:
        try:
            owner = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # half written (its writer died or is writing): an owner that proves nothing
        return owner if isinstance(owner, dict) else {}

    def _is_mine(self, owner: dict[str, Any]) -> bool:
        return all(owner.get(k) == self.mine[k] for k in ("pid", "host", "start"))

    def acquire(self) -> Optional[dict[str, Any]]:
        """Take the lock; returns the owner of a stale lock taken over (None: there was none).
        Raises RunLocked while a live run holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stale = None
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._read()
                if owner == {}:  # maybe being written this instant: look once more
                    time.sleep(0.2)
                    owner = self._read()
                if owner is None:
                    continue  # released in between
                if self._is_mine(owner):
                    return None
                if owner and owner_alive(owner):
                    raise RunLocked(self.path, owner) from None
                stale = owner
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.mine, f)
            return stale
        raise RunLocked(self.path, self._read() or {})

    def release(self) -> None:
        owner = self._read()
        if owner and self._is_mine(owner):
            self.path.unlink(missing_ok=True)


def fresh_folder(run_dir: Path) -> Path:
    """The first ``<run_dir>-k`` (k = 2, 3, ...) that does not exist yet."""
    k = 2
    while run_dir.with_name(f"{run_dir.name}-{k}").exists():
        k += 1
    return run_dir.with_name(f"{run_dir.name}-{k}")


def claim_run_dir(cfg: Any) -> tuple[Path, Optional[RunLock]]:
    """(run folder, its lock) for this run: ``cfg.paths.output_dir`` locked, or with
    ``run_lock=new_folder`` a fresh folder beside it when a live run holds it (``cfg`` and Hydra's
    run dir then point there). Ranks > 0 get their rank 0's folder and no lock."""
    from src.utils.errors import UserError
    from src.utils.log import warn

    mode = cfg.get("run_lock") or "refuse"
    if mode not in MODES:
        raise UserError(f"run_lock must be one of {', '.join(MODES)}, got '{mode}'")
    run_dir = Path(cfg.paths.output_dir)
    if not launched_as_rank_zero():
        return run_dir, None
    lock = RunLock(run_dir)
    try:
        stale = lock.acquire()
    except RunLocked as held:
        if mode != "new_folder":
            gone = "" if held.owner.get("host") == socket.gethostname() else " (delete it if that machine is gone)"
            raise UserError(f"{held}: a live run of this folder{gone}; wait for it to end, use another name=, "
                            "or run_lock=new_folder to start afresh in a folder beside it") from None
        lock, stale = _fresh_folder_lock(run_dir)
        _move_run(cfg, run_dir, lock.path.parent)
        print(f"{held}: this run starts afresh in {lock.path.parent} (run_lock=new_folder)", file=sys.stderr)
    if stale is not None:
        warn(f"took over {lock.path} from pid {stale.get('pid')} on {stale.get('host')}: that run is gone")
    return lock.path.parent, lock


def _fresh_folder_lock(run_dir: Path) -> tuple[RunLock, Optional[dict[str, Any]]]:
    from src.utils.errors import UserError

    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        raise UserError(f"{run_dir / LOCK_NAME} is held by a live run, and run_lock=new_folder cannot move the "
                        "tasks of a multi-task SLURM job: use another name=")
    for _ in range(5):
        lock = RunLock(fresh_folder(run_dir))
        try:
            return lock, lock.acquire()
        except RunLocked:
            continue
    raise UserError(f"no free folder beside {run_dir}: use another name=")


def _move_run(cfg: Any, old: Path, new: Path) -> None:
    """Point the config, Hydra's run dir (DDP children read it) and the log file at ``new``, with a
    copy of the Hydra record this command wrote into ``old``."""
    import logging
    import shutil

    from omegaconf import open_dict, read_write

    if (old / ".hydra").is_dir():
        shutil.copytree(old / ".hydra", new / ".hydra", dirs_exist_ok=True)
    with open_dict(cfg.paths):
        cfg.paths.output_dir = str(new)
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        with read_write(hydra_cfg), open_dict(hydra_cfg):
            hydra_cfg.run.dir = str(new)
            hydra_cfg.runtime.output_dir = str(new)
    except ValueError:  # no Hydra run (train() called from code)
        pass
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == old.resolve():
            moved = logging.FileHandler(new / Path(handler.baseFilename).name, mode="a")
            moved.setFormatter(handler.formatter)
            moved.setLevel(handler.level)
            root.removeHandler(handler)
            handler.close()
            root.addHandler(moved)

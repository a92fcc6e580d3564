"""Lazy, cached, multi-process-safe build of the CUDA extension (src/ops/csrc).

* Built with ``torch.utils.cpp_extension.load`` (ninja) on FIRST USE, never at import.
* Build directory: ``$LGFA_CACHE_DIR`` (default ``~/.cache/lgfa/torch_extensions``) /
  ``lgfa_ops_<key>``, where key = sha256 of the sources and headers + torch, CUDA and Python
  versions + the target compute capability, so a changed source/toolchain/GPU gets a fresh build.
  A module already built under that key is imported as it is, without asking ninja (whose
  timestamps a copied cache or a fresh checkout does not keep): a cache folder copied to another
  machine of the same kind skips the compile. A file that does not import is built again.
* An own inter-process lock file (``O_CREAT|O_EXCL``) next to the build dir: with several DDP
  ranks starting at once one builds, the others wait. A lock left by a killed build makes the
  waiters time out (``lock_timeout`` seconds) with a one-line message naming the file to delete.
* Module-level cache guarded by a ``threading.Lock``.
* Failures raise ``OpsBuildError`` (defined here); ``src.ops.policy`` decides what a failure means.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import torch

CSRC_DIR = Path(__file__).resolve().parent / "csrc"
SOURCES = ("ops.cpp", "bias_act.cu", "bias_act_nchw.cu", "bias_act_nhwc.cu", "upfirdn2d.cu",
           "upfirdn2d_nchw.cu", "upfirdn2d_nhwc.cu")
HEADERS = ("bias_act.cuh",)  # included by the sources: part of the build key, not compiled alone
_NVCC_FLAGS = ("-O3", "--expt-relaxed-constexpr")  # torch adds its own -std
_CXX_FLAGS = ("-O3",)

_cache_lock = threading.Lock()
_plugin = None


class OpsBuildError(RuntimeError):
    """The CUDA extension could not be built or loaded (message is one line; cause is chained)."""


def reset_cache() -> None:
    """Forget the loaded module (the next get_plugin() loads again; a built .so is reused)."""
    global _plugin
    with _cache_lock:
        _plugin = None


def cache_dir() -> Path:
    """Root folder of the build cache (env LGFA_CACHE_DIR, default ~/.cache/lgfa/torch_extensions)."""
    root = os.environ.get("LGFA_CACHE_DIR", "").strip()
    return Path(root).expanduser() if root else Path.home() / ".cache" / "lgfa" / "torch_extensions"


def current_arch() -> str:
    """Compute capability of the current CUDA device as 'MAJORMINOR' (e.g. '90' for sm_90)."""
    if not torch.cuda.is_available():
        raise OpsBuildError("cannot build the CUDA ops: no CUDA device is visible")
    major, minor = torch.cuda.get_device_capability()
    return f"{major}{minor}"


def build_key(arch: str) -> str:
    """sha256 over sources, headers, torch version, CUDA version, target arch and flags (first 16 hex)."""
    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        h.update(name.encode())
        h.update((CSRC_DIR / name).read_bytes())
    python = f"py{sys.version_info[0]}.{sys.version_info[1]}"
    for part in (torch.__version__, str(torch.version.cuda), python, arch, *_NVCC_FLAGS, *_CXX_FLAGS):
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:16]


class _BuildLock:
    """Inter-process exclusive lock via an O_EXCL lock file; stale locks time out (no stealing,
    because a slow build on another host sharing the cache would look exactly like a stale one)."""

    def __init__(self, path: Path, timeout: float, poll: float = 0.25):
        self.path = Path(path)
        self.timeout = float(timeout)
        self.poll = poll
        self._held = False

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if time.monotonic() >= deadline:
                    raise OpsBuildError(
                        f"timed out after {self.timeout:g}s waiting for the CUDA ops build lock "
                        f"{self.path}; if no other process is building, delete that file") from None
                time.sleep(self.poll)
                continue
            with os.fdopen(fd, "w") as fh:  # owner info, to help whoever finds a stale lock
                fh.write(f"pid={os.getpid()} host={socket.gethostname()} time={time.time():.0f}\n")
            self._held = True
            return self

    def __exit__(self, *exc):
        if self._held:
            self._held = False
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        return False


def _import_built(name: str, path: Path):
    """Import the extension module file ``path`` as ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not an importable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_built(name: str, build_dir: Path):
    """The module a finished build left in ``build_dir`` (its key names the sources and the
    toolchain), or None when there is none or it does not import."""
    path = build_dir / f"{name}.so"
    if not path.is_file():
        return None
    try:
        return _import_built(name, path)
    except Exception:  # a truncated copy, another ABI: build it again
        return None


def _compile(name: str, build_dir: Path, arch: str, verbose: bool):
    """Run torch.utils.cpp_extension.load; returns the imported module."""
    from torch.utils import cpp_extension

    gencode = f"-gencode=arch=compute_{arch},code=sm_{arch}"
    # An explicit -gencode flag makes torch skip its own (all-visible-GPUs) arch flags.
    return cpp_extension.load(
        name=name,
        sources=[str(CSRC_DIR / s) for s in SOURCES],
        extra_cflags=list(_CXX_FLAGS),
        extra_cuda_cflags=[*_NVCC_FLAGS, gencode],
        build_directory=str(build_dir),
        verbose=verbose,
        with_cuda=True,
    )


def build_extension(arch: Optional[str] = None, lock_timeout: float = 600.0, verbose: bool = False):
    """Build (or reuse) and import the extension for ``arch`` (default: current GPU).

    Raises OpsBuildError with a one-line message on failure (the compiler output is chained).
    """
    arch = arch or current_arch()
    key = build_key(arch)
    name = f"lgfa_ops_{key}"
    build_dir = cache_dir() / name
    with _BuildLock(cache_dir() / f"{name}.lock", lock_timeout):
        build_dir.mkdir(parents=True, exist_ok=True)
        # We hold the exclusive lock, so a torch FileBaton 'lock' left inside by a killed build is
        # stale; without removing it torch's load() would wait forever.
        stale = build_dir / "lock"
        if stale.exists():
            stale.unlink()
        built = _load_built(name, build_dir)
        if built is not None:
            return built
        try:
            return _compile(name, build_dir, arch, verbose)
        except Exception as exc:  # compiler errors, missing nvcc/ninja, import errors
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            errors = [ln for ln in lines if "error:" in ln.lower()]  # compiler diagnostics
            first = (errors or lines or [type(exc).__name__])[0]
            raise OpsBuildError(f"building the CUDA ops in {build_dir} failed: {first[:300]} "
                                f"(set LGFA_OPS_ON_BUILD_FAILURE=fallback to use the slow reference ops)"
                                ) from exc


def get_plugin(lock_timeout: float = 600.0):
    """The loaded extension module, building it on first use (thread-safe, cached)."""
    global _plugin
    if _plugin is not None:
        return _plugin
    with _cache_lock:
        if _plugin is None:
            _plugin = build_extension(lock_timeout=lock_timeout)
        return _plugin

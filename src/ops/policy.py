"""Global implementation policy for the custom ops (ref vs. CUDA kernels).

Resolution of the implementation for one call:
  * the call's ``impl`` argument wins unless it is ``'auto'``; otherwise the global policy
    (``configure(impl=...)`` or env ``LGFA_OPS_IMPL``, default ``'auto'``) is used;
  * ``'ref'`` -> pure PyTorch; CPU tensors ALWAYS use ref (also with ``impl='cuda'``);
  * ``'auto'`` / ``'cuda'`` on CUDA tensors -> the compiled extension, built lazily on first use.
    If the build fails: ``on_build_failure='error'`` (default) raises ``build.OpsBuildError``
    (and keeps raising the same error without rebuilding), ``'fallback'`` warns once and uses
    ref from then on.

This module imports ``src.ops.build`` (never the other way round): build compiles and loads the
extension and defines ``OpsBuildError``; policy decides whether and when to use it.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Optional

import torch

from src.ops import build
from src.utils.errors import UserError

IMPLS = ("auto", "ref", "cuda")
FAILURE_POLICIES = ("error", "fallback")


def _env_choice(name: str, default: str, choices) -> str:
    value = os.environ.get(name, "").strip().lower() or default
    if value not in choices:
        raise UserError(f"env {name}={value!r} is invalid; expected one of {', '.join(choices)}")
    return value


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise UserError(f"env {name}={raw!r} is not a number") from None


_lock = threading.Lock()
_state = {
    "impl": None,  # filled lazily from env so that env changes before first use count
    "on_build_failure": None,
    "lock_timeout": None,
    "fallback_active": False,  # set once a build failed under the 'fallback' policy
    "build_error": None,  # the build.OpsBuildError of a failed build (never retried)
}


def _ensure_defaults() -> None:
    if _state["impl"] is None:
        _state["impl"] = _env_choice("LGFA_OPS_IMPL", "auto", IMPLS)
    if _state["on_build_failure"] is None:
        _state["on_build_failure"] = _env_choice("LGFA_OPS_ON_BUILD_FAILURE", "error", FAILURE_POLICIES)
    if _state["lock_timeout"] is None:
        _state["lock_timeout"] = _env_float("LGFA_OPS_LOCK_TIMEOUT", 600.0)


def configure(impl: Optional[str] = None, on_build_failure: Optional[str] = None,
              lock_timeout: Optional[float] = None) -> dict:
    """Set the global policy; arguments left as None keep their value. Returns the current policy.

    impl: 'auto' | 'ref' | 'cuda'. on_build_failure: 'error' | 'fallback'.
    lock_timeout: seconds to wait for another process's build lock before giving up (default 600).
    """
    with _lock:
        _ensure_defaults()
        if impl is not None:
            if impl not in IMPLS:
                raise UserError(f"ops impl must be one of {', '.join(IMPLS)}, got {impl!r}")
            _state["impl"] = impl
        if on_build_failure is not None:
            if on_build_failure not in FAILURE_POLICIES:
                raise UserError(f"on_build_failure must be one of {', '.join(FAILURE_POLICIES)}, "
                                f"got {on_build_failure!r}")
            _state["on_build_failure"] = on_build_failure
        if lock_timeout is not None:
            if not float(lock_timeout) > 0:
                raise UserError(f"lock_timeout must be > 0 seconds, got {lock_timeout!r}")
            _state["lock_timeout"] = float(lock_timeout)
        return get_config_unlocked()


def get_config_unlocked() -> dict:
    return {k: _state[k] for k in ("impl", "on_build_failure", "lock_timeout")}


def get_config() -> dict:
    """Current policy as a dict(impl, on_build_failure, lock_timeout)."""
    with _lock:
        _ensure_defaults()
        return get_config_unlocked()


def reset() -> None:
    """Forget the policy, any recorded build failure and the loaded extension (tests use this)."""
    with _lock:
        for k in _state:
            _state[k] = False if k == "fallback_active" else None
    build.reset_cache()


def resolve(impl: str, *tensors: torch.Tensor):
    """Return the compiled extension module to use, or None for the reference implementation.

    impl: the call's 'auto' | 'ref' | 'cuda'. tensors: the call's tensor inputs (device decides).
    """
    if impl not in IMPLS:
        raise UserError(f"ops impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    with _lock:
        _ensure_defaults()
        effective = impl if impl != "auto" else _state["impl"]
        if effective == "ref":
            return None
        if not all(t.is_cuda for t in tensors if t is not None):
            return None  # CPU tensors always use ref (documented)
        if _state["fallback_active"]:
            return None
        if _state["build_error"] is not None:
            raise _state["build_error"]
        policy = _state["on_build_failure"]
        timeout = _state["lock_timeout"]
    try:
        return build.get_plugin(lock_timeout=timeout)
    except build.OpsBuildError as err:
        with _lock:
            if policy == "fallback":
                if not _state["fallback_active"]:
                    _state["fallback_active"] = True
                    warnings.warn(f"src.ops: CUDA kernels unavailable, using the slower reference "
                                  f"implementation from now on ({err})", RuntimeWarning, stacklevel=3)
                return None
            _state["build_error"] = err
        raise

"""Keep freed CPU memory for reuse (glibc).

glibc serves allocations above its mmap threshold with fresh mmap'd pages and gives them back to the
OS when freed. CPU inference allocates and frees every layer's activations (tens of MB at 128 px),
so each forward pass page-faults and zeroes all of them again: measured on 2 cores, system time was
as large as user time, and 16 frames took 1.2-1.35 s instead of 0.73-0.81 s
(`python bench/bench_animate_cpu.py [--default-malloc]`). Raising the mmap and trim thresholds lets
glibc keep and reuse that memory; the process holds on to its peak heap instead of returning it.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20  # blocks up to 256 MB come from the reusable heap
TRIM_THRESHOLD = 1 << 30    # keep up to 1 GB of free heap instead of returning it
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
_done: bool | None = None


def reuse_freed_memory() -> bool:
    """Raise glibc's mmap / trim thresholds once per process; True when they are set.

    A no-op (False) off Linux/glibc, when the user set MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_
    or GLIBC_TUNABLES (their choice wins), or when LGFA_DEFAULT_MALLOC=1.
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if os.environ.get("LGFA_DEFAULT_MALLOC") == "1" or any(k in os.environ for k in _ENV):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        _done = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        _done = False
    return _done

"""reuse_freed_memory: set once on glibc, and the user's allocator settings win."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from tests.conftest import ROOT

CODE = "from src.utils.cpu_memory import reuse_freed_memory as r; print(r(), r())"


def run(env_extra: dict) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "LGFA_DEFAULT_MALLOC"))}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_thresholds_are_set_once_unless_the_user_chose_their_own():
    assert run({}) == "True True"  # set, and a second call reports the same without calling again
    assert run({"MALLOC_MMAP_THRESHOLD_": "131072"}) == "False False"
    assert run({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}) == "False False"
    assert run({"LGFA_DEFAULT_MALLOC": "1"}) == "False False"

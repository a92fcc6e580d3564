"""Shared by the GPU test modules: exact fp32 maths and a build policy that fails loudly.

Import ``strict_cuda_policy`` into a test module to make it apply there (autouse, module scope).
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from src.ops import policy


@contextlib.contextmanager
def no_tf32():
    """Exact fp32 convs and matmuls, so that cuda-vs-ref differences are only the ops' own."""
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.fixture(autouse=True, scope="module")
def strict_cuda_policy():
    """impl='auto' with on_build_failure='error': a failed kernel build must fail the tests."""
    policy.reset()
    policy.configure(impl="auto", on_build_failure="error")
    yield
    policy.reset()

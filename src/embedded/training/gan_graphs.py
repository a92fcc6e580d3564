"""CUDA graphs for the phases of a GAN training iteration (``model.precision.cuda_graphs``).

At small batches one iteration of the 128 px network is thousands of small kernels, and the host
takes longer to launch them than the GPU to run them. A CUDA graph records a phase once and then
launches it as one unit. The phases recorded are the work between zeroing the gradients and the
optimiser step: the forward passes, the losses (with the lazy regulariser or without: one graph
per variant), the backward pass and the gradient clean-up. The optimiser step, the EMA update and
logging stay outside, so the trainer counts steps as before.

What makes replaying a recorded phase correct:

* every parameter has its ``.grad`` allocated before the first recording and the phases zero it in
  place (``zero_grad(set_to_none=False)``), so the backward pass accumulates into the same memory
  on every replay, which is the memory the optimiser reads. A graph whose gradients were replaced
  or freed since its recording (Lightning frees them before validation unless told otherwise) is
  recorded again instead of writing into memory that is no longer theirs;
* the phase's input that changes between iterations (the real batch) is copied into a static
  tensor before each replay; random numbers (latents, mixing, noise) come from the CUDA generator,
  which advances on every replay;
* running statistics (path-length mean, ``w_avg``) are updated in place by the phase itself;
* the first ``warmup`` iterations run eagerly, so cuDNN's algorithm search, the optimiser state
  and the allocator have settled before anything is recorded.
"""
from __future__ import annotations

from typing import Callable, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["PhaseGraphs"]


class PhaseGraphs:
    """Records each phase variant on first use after ``warmup`` iterations, then replays it.

    ``run(key, fn, iteration)`` returns what ``fn()`` returns (a tuple of tensors): eagerly during
    the warm-up, afterwards the static outputs of the recorded graph after a replay.
    """

    def __init__(self, warmup: int = 32):
        if warmup < 1:
            raise ValueError("PhaseGraphs needs at least one eager warm-up iteration")
        self.warmup = int(warmup)
        self._graphs: Dict[Hashable, torch.cuda.CUDAGraph] = {}
        self._outputs: Dict[Hashable, Tuple[Tensor, ...]] = {}
        self._grads: Dict[Hashable, List[int]] = {}  # per graph: the addresses its gradients had
        self._static: Dict[str, Tensor] = {}
        self.rerecorded = 0  # graphs recorded again because their gradients had moved

    def active(self, iteration: int) -> bool:
        """Whether phases of this iteration are recorded/replayed (not eager)."""
        return iteration >= self.warmup

    @property
    def recorded(self) -> int:
        return len(self._graphs)

    def static_input(self, name: str, value: Tensor) -> Tensor:
        """A tensor with a fixed address holding ``value`` (copied in on every call)."""
        buf = self._static.get(name)
        if buf is None:
            buf = self._static[name] = torch.empty_like(value)
        elif buf.shape != value.shape or buf.dtype != value.dtype or buf.device != value.device:
            if self._graphs:  # a recorded graph may read the old buffer
                raise RuntimeError(f"static input '{name}' changed from {tuple(buf.shape)} {buf.dtype} to "
                                   f"{tuple(value.shape)} {value.dtype} after graphs were recorded")
            buf = self._static[name] = torch.empty_like(value)
        buf.copy_(value)
        return buf

    @staticmethod
    def allocate_grads(params: Iterable[torch.nn.Parameter]) -> None:
        """Give every trainable parameter a zeroed ``.grad`` that later phases accumulate into."""
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    @staticmethod
    def _addresses(params: Sequence[torch.nn.Parameter]) -> List[int]:
        return [p.grad.data_ptr() if p.grad is not None else 0 for p in params]

    def run(self, key: Hashable, fn: Callable[[], Tuple[Tensor, ...]], iteration: int,
            params: Sequence[torch.nn.Parameter] = ()) -> Tuple[Tensor, ...]:
        """params: the parameters whose ``.grad`` the phase accumulates into: allocated before the
        recording, and checked before every replay (host-side addresses, no sync)."""
        if not self.active(iteration):
            return fn()
        params = list(params)
        graph = self._graphs.get(key)
        if graph is not None and self._addresses(params) != self._grads[key]:
            del self._graphs[key], self._outputs[key], self._grads[key]
            graph = None
            self.rerecorded += 1
        if graph is None:
            self.allocate_grads(params)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            # Each variant gets its own memory pool: variants replay in any order, so their
            # temporaries must never share memory.
            with torch.cuda.graph(graph):
                out = fn()
            self._graphs[key] = graph
            self._outputs[key] = tuple(out)
            self._grads[key] = self._addresses(params)
        graph.replay()  # recording ran nothing: the first replay is this iteration's work
        return self._outputs[key]

    def reset(self) -> None:
        """Forget the recorded graphs (e.g. after parameters were replaced by a checkpoint load)."""
        self._graphs.clear()
        self._outputs.clear()
        self._grads.clear()
        self._static.clear()

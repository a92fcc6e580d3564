"""The real images of GAN training: synthetic faces rendered on the training device, with the next
training batch rendered ahead of time (on a side CUDA stream on the GPU)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from src.ops.graph_cache import GraphCache

__all__ = ["RealPrefetcher", "render_reals"]


def render_reals(n: int, generator: torch.Generator, resolution: int, device: torch.device,
                 active_prob: float = 0.35, neutral_prob: float = 0.3, graphs: Optional[GraphCache] = None) -> Tensor:
    """[n, 3, R, R] in [-1, 1] rendered on ``device`` (on the current stream), faces drawn by
    ``sample_params`` with ``active_prob`` and ``neutral_prob``.

    ``sample_params`` draws on a CPU generator; the parameters go to the GPU through pinned
    memory with ``non_blocking=True`` so that the copy does not stall the host. With ``graphs`` the
    render is replayed as a CUDA graph (one launch instead of ~2,000 kernel launches a batch); the
    images are the eager ones.
    """
    from src.embedded import sample_params

    params = sample_params(n, generator, "cpu", active_prob=active_prob, neutral_prob=neutral_prob)
    if device.type == "cuda":
        params = params.pin_memory().to(device, non_blocking=True)
    if graphs is None:
        return _render(params, resolution)
    with torch.no_grad():
        return graphs.run(lambda p: _render(p, resolution), params, key=("render", resolution))


def _render(params: Tensor, resolution: int) -> Tensor:
    from src.embedded import render

    # drawn by sample_params: finite by construction, so no host sync for a NaN check
    return render(params, resolution, check_finite=False).to(torch.float32)


class RealPrefetcher:
    """Holds the next training batch of reals [batch_size, 3, R, R], rendered ahead of time.

    On CUDA the render runs on a side stream: the renderer's own host syncs (value checks,
    small constant uploads) then wait only for that stream, not for the queued G/D work,
    and its kernels overlap with training. On CPU it simply renders.
    """

    def __init__(self, batch_size: int, resolution: int, active_prob: float = 0.35, neutral_prob: float = 0.3,
                 cuda_graphs: bool = False):
        self.batch_size = batch_size
        self.resolution = resolution
        self.draw = dict(active_prob=active_prob, neutral_prob=neutral_prob)
        # on CUDA, the render replayed as a graph (precision.cuda_graphs); elsewhere it runs eagerly
        self.graphs = GraphCache(capacity=2) if cuda_graphs else None
        self._side_stream = None
        self._next_real: Optional[Tensor] = None
        # the render generator's state before the pending prefetch: what a checkpoint must record,
        # so that a resumed run renders that batch again instead of skipping it
        self.state_before_pending: Optional[Tensor] = None

    def prefetch(self, generator: torch.Generator, device: torch.device) -> None:
        """Render the next batch now (queued on the side stream on CUDA)."""
        self.state_before_pending = generator.get_state()
        if device.type != "cuda":
            self._next_real = render_reals(self.batch_size, generator, self.resolution, device, **self.draw)
            return
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(device=device)
        # No wait on the main stream: the render reads only fresh pinned parameters, and the
        # result is handed over with wait_stream + record_stream in take().
        with torch.cuda.stream(self._side_stream):
            self._next_real = render_reals(self.batch_size, generator, self.resolution, device, **self.draw,
                                           graphs=self.graphs)

    def take(self, generator: torch.Generator, device: torch.device) -> Tensor:
        """The prefetched reals (rendered now if none are), safe to use on the current stream."""
        if self._next_real is None:
            self.prefetch(generator, device)
        real = self._next_real
        self._next_real, self.state_before_pending = None, None
        if device.type == "cuda":
            main = torch.cuda.current_stream(device)
            main.wait_stream(self._side_stream)
            # The allocator must not recycle this memory until the main stream is done with it.
            real.record_stream(main)
        return real

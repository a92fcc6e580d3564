"""CUDA graphs for inference: a pure function of fixed-shape CUDA tensors, recorded once per key
and replayed.

At batch 1 the 1024 px generator is hundreds of small kernels for a fraction of a millisecond of
arithmetic, so the host launching them sets the pace. A CUDA graph records the launches once and
replays them as one unit.

    cache = GraphCache(capacity=8)
    with torch.no_grad():
        img = cache.run(lambda w: G.synthesis(w, noise_mode="const"), ws, key=("synthesis", "const"),
                        state=module_state(G))

What makes a replay compute what an eager call computes:

* one graph per key: the caller's ``key`` (whatever changes the computation and is not a tensor:
  noise mode, frame counts, Python numbers the function reads), each input's shape, dtype and
  device, inference mode, the TF32 switches and the custom ops' implementation;
* the inputs are copied into the graph's own input tensors before each replay and the outputs are
  cloned after it; with ``clone=False`` the graph's own output tensors come back, and the next call
  of the same key overwrites them;
* random numbers from the default CUDA generator (noise_mode 'random') are new on every replay:
  ``torch.cuda.graph`` records the philox offsets, which advance per replay;
* ``state`` (e.g. :func:`module_state`): when it differs from the previous call's (weights moved to
  another device or dtype, train/eval switched), every graph is dropped and recorded again. Weights
  changed in place (``load_state_dict``) are what the next replay reads.

The function runs eagerly instead where autograd is on, where an input is not on a CUDA device,
inside another graph's capture, and for a key whose recording failed (one warning for the cache,
then that key stays eager). The last warm-up call runs with host synchronisation made an error, so
a function that syncs (``.item()``, a copy to the host) is found before any capture begins: a
capture that fails midway can leave the CUDA random generator in capture mode. At most
``capacity`` keys are kept, the least recently used dropped first. With ``clone=True`` graphs of a
device share a memory pool (their temporaries overlap, which is safe because each replay's outputs
are cloned before any other replay); replays run on the caller's current stream and must not
overlap (one stream, or streams synchronised). A pool cannot shrink while one of its graphs lives, so
after a drop the next recordings start a new pool: a pool is given back to PyTorch's allocator when
its last graph goes (freed to the device by ``torch.cuda.empty_cache()`` or when an allocation would
otherwise fail), and a cache cycling through many shapes keeps at most ``capacity`` pools.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

import torch
from torch import Tensor

from src.ops.policy import get_config as ops_config
from src.utils.log import warn

__all__ = ["GraphCache", "module_state", "run_chunked"]

#: a key whose recording failed: it runs eagerly from then on
_FAILED = object()
#: one warm-up stream per device for the process: cuBLAS keeps a workspace for every stream it has
#: run on, so a new stream per recording would grow the reserved memory by one workspace each time
_WARMUP_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _warmup_stream(device: torch.device) -> torch.cuda.Stream:
    device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    if device not in _WARMUP_STREAMS:
        _WARMUP_STREAMS[device] = torch.cuda.Stream(device)
    return _WARMUP_STREAMS[device]


class _HostSync(RuntimeError):
    """The function synchronises with the host: it cannot be recorded."""


@dataclass
class Recording:
    """One recorded key: ``replay()`` reruns the graph over ``inputs`` into ``outputs``."""
    replay: Callable[[], None]
    inputs: list[Tensor]
    outputs: list[Tensor]
    structure: Any
    graph: Any = None


def module_state(module: torch.nn.Module) -> tuple:
    """A cheap summary of where a module's weights live: its train flag and the address, dtype and
    device of its first parameter and first buffer. ``.to()``, ``.half()`` and ``.train()`` change it."""
    first = [next(iter(ts), None) for ts in (module.parameters(), module.buffers())]
    return (module.training,) + tuple(None if t is None else (t.data_ptr(), t.dtype, t.device) for t in first)


def _flatten(out: Any) -> tuple[list[Tensor], Any]:
    """A tensor, a tuple/list of tensors or a dict of tensors -> (tensors, how to rebuild it)."""
    if isinstance(out, Tensor):
        return [out], None
    if isinstance(out, dict):
        keys = list(out)
        return [out[k] for k in keys], ("dict", keys)
    if isinstance(out, (tuple, list)):
        return list(out), (type(out),)
    raise TypeError(f"a graphed function returns tensors, a tuple or a dict of them, not {type(out).__name__}")


def _unflatten(tensors: list[Tensor], structure: Any) -> Any:
    if structure is None:
        return tensors[0]
    if structure[0] == "dict":
        return dict(zip(structure[1], tensors))
    return structure[0](tensors)


class GraphCache:
    """Records ``fn(*inputs)`` as a CUDA graph per key on first use, then replays it; see the module
    docstring. ``warmup``: eager calls on a side stream before each recording (cuDNN's algorithm
    choice, lazily built kernels and the allocator settle first)."""

    def __init__(self, capacity: int = 8, warmup: int = 2, clone: bool = True):
        if capacity < 1 or warmup < 0:
            raise ValueError("GraphCache needs capacity >= 1 and warmup >= 0")
        self.capacity, self.warmup, self.clone = int(capacity), int(warmup), bool(clone)
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._pools: dict[torch.device, Any] = {}
        self._state: Any = None
        self.recorded = 0  # recordings made (a key dropped and recorded again counts twice)
        self.warned = False

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[Hashable]:
        """The keys held, least recently used first."""
        return list(self._entries)

    def clear(self) -> None:
        """Drop every graph (their memory returns to PyTorch's allocator)."""
        self._entries.clear()
        self._pools.clear()

    def __deepcopy__(self, memo) -> "GraphCache":
        return GraphCache(self.capacity, self.warmup, self.clone)  # graphs are not copied: a copy records its own

    def __getstate__(self) -> dict:
        return {"capacity": self.capacity, "warmup": self.warmup, "clone": self.clone}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    # ------------------------------------------------------------------ when graphs apply
    def applies(self, *inputs: Tensor) -> bool:
        """Whether ``run`` would replay a graph for these inputs (else it calls fn eagerly)."""
        return (not torch.is_grad_enabled() and bool(inputs) and all(self._device_ok(x) for x in inputs)
                and len({x.device for x in inputs}) == 1 and not self._capturing(inputs[0].device))

    def _device_ok(self, x: Tensor) -> bool:
        return isinstance(x, Tensor) and x.is_cuda

    def _capturing(self, device: torch.device) -> bool:
        return torch.cuda.is_current_stream_capturing()

    def key_of(self, inputs: Sequence[Tensor], key: Hashable = ()) -> tuple:
        """The full key of a call: the caller's key, the inputs' layout and the global switches."""
        layout = tuple((tuple(x.shape), x.dtype, x.device) for x in inputs)
        switches = (torch.is_inference_mode_enabled(), torch.backends.cuda.matmul.allow_tf32,
                    torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic, ops_config()["impl"])
        return (key, layout, switches)

    # ------------------------------------------------------------------ running
    def run(self, fn: Callable[..., Any], *inputs: Tensor, key: Hashable = (), state: Hashable = None) -> Any:
        """``fn(*inputs)``, by a graph replay where one applies. ``fn`` must be a pure function of the
        inputs' values (no host syncs, no data-dependent shapes); everything else it depends on goes
        into ``key`` (or ``state``, which drops all graphs when it changes)."""
        if not self.applies(*inputs):
            return fn(*inputs)
        if state != self._state:
            self.clear()
            self._state = state
        full = self.key_of(inputs, key)
        entry = self._entries.get(full)
        if entry is None:
            entry = self._record_or_fail(fn, inputs, full)
        else:
            self._entries.move_to_end(full)
        if entry is _FAILED:
            return fn(*inputs)
        for static, x in zip(entry.inputs, inputs):
            static.copy_(x)
        entry.replay()
        outs = [t.clone() for t in entry.outputs] if self.clone else list(entry.outputs)
        return _unflatten(outs, entry.structure)

    def _record_or_fail(self, fn: Callable[..., Any], inputs: Sequence[Tensor], full: tuple) -> Any:
        static = [x.detach().clone(memory_format=torch.contiguous_format) for x in inputs]
        device = static[0].device
        try:
            self._warm_up(fn, static, device)  # fn's own errors surface here, as an eager call's would
        except _HostSync as err:
            entry = self._failed(err.__cause__ or err)
        else:
            try:
                entry = self._record(fn, static, device)
            except Exception as err:  # noqa: BLE001 -- any failure to record means: run this key eagerly
                entry = self._failed(err)
            else:
                self.recorded += 1
        self._entries[full] = entry
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
            self._pools.clear()  # the dropped graph's pool is released once its other graphs go
        return entry

    def _failed(self, err: BaseException) -> object:
        if not self.warned:
            self.warned = True
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            warn(f"CUDA graph recording failed, running eagerly instead ({type(err).__name__}: {first[:200]})")
        return _FAILED

    def _warm_up(self, fn: Callable[..., Any], static: list[Tensor], device: torch.device) -> None:
        """``warmup`` eager calls on a side stream, the last one with host syncs made errors."""
        if self.warmup == 0:
            return
        main = torch.cuda.current_stream(device)
        side = _warmup_stream(device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            for _ in range(self.warmup - 1):
                fn(*static)
            previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")
            try:
                fn(*static)
            except RuntimeError as err:
                if "synchroniz" not in str(err):
                    raise
                raise _HostSync(str(err)) from err
            finally:
                torch.cuda.set_sync_debug_mode(previous)
        main.wait_stream(side)

    def _record(self, fn: Callable[..., Any], static: list[Tensor], device: torch.device) -> Recording:
        pool = None
        if self.clone:
            pool = self._pools.get(device)
            if pool is None:
                with torch.cuda.device(device):
                    pool = self._pools[device] = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(device), torch.cuda.graph(graph, pool=pool):
            out = fn(*static)
        outputs, structure = _flatten(out)
        if not all(isinstance(t, Tensor) for t in outputs):
            raise TypeError("a graphed function returns tensors only")
        return Recording(graph.replay, static, outputs, structure, graph)


def run_chunked(cache: GraphCache, fn: Callable[[Tensor], Tensor], x: Tensor, rows: int, key: Hashable = (),
                state: Hashable = None) -> Tensor:
    """``fn`` over the rows of x [M, ...] with every call at one shape, so one graph serves them all:
    M <= rows in one call of M rows; else calls of ``rows`` rows, the last one padded (with copies of
    x's last row) and the padding's results dropped. ``fn`` must treat rows independently (a batch
    of frames)."""
    if len(x) <= rows:
        return cache.run(fn, x, key=key, state=state)
    out = None  # filled chunk by chunk: the whole result is held once, not twice
    for i in range(0, len(x), rows):
        chunk = x[i:i + rows]
        short = rows - len(chunk)
        if short:
            chunk = torch.cat([chunk, chunk[-1:].expand(short, *chunk.shape[1:])])
        part = cache.run(fn, chunk, key=key, state=state)
        if out is None:
            out = part.new_empty((len(x), *part.shape[1:]))
        out[i:i + rows - short] = part[:rows - short]
    return out

"""The CUDA-graph cache without a GPU: its keys, LRU bound, static-input copies, fallbacks and the
padded chunks, through a cache whose "recording" runs the function eagerly; and the pipeline's
cuda_graphs option, a no-op on a CPU."""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch

from src.ops.graph_cache import GraphCache, Recording, module_state, run_chunked

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "assets" / "animator_synthetic.safetensors"


class FakeGraphs(GraphCache):
    """Records on any device: a "graph" is fn rerun on the static inputs, into the static outputs."""

    def __init__(self, *args, fail: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.fail, self.recorded_shapes = fail, []

    def _device_ok(self, x):
        return isinstance(x, torch.Tensor)

    def _capturing(self, device):
        return False

    def _warm_up(self, fn, static, device):
        for _ in range(self.warmup):
            fn(*static)

    def _record(self, fn, static, device):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing\nsecond line")
        self.recorded_shapes.append(tuple(static[0].shape))
        out = fn(*static)
        outputs = [out] if isinstance(out, torch.Tensor) else list(out.values() if isinstance(out, dict) else out)
        structure = None if isinstance(out, torch.Tensor) else ("dict", list(out)) if isinstance(out, dict) \
            else (type(out),)

        def replay():
            again = fn(*static)
            again = [again] if isinstance(again, torch.Tensor) else list(
                again.values() if isinstance(again, dict) else again)
            for o, a in zip(outputs, again):
                o.copy_(a)

        return Recording(replay, static, outputs, structure)


def double(x):
    return 2 * x


@pytest.fixture
def lgfa_records():
    """The warnings of the 'lgfa' logger, whatever its propagation."""
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("lgfa")
    handler = Keep(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


@torch.no_grad()
def test_one_recording_per_key_and_the_inputs_copied_in():
    cache = FakeGraphs()
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.equal(cache.run(double, a), 2 * a)
    assert torch.equal(cache.run(double, b), 2 * b)  # the static input holds b now, not a
    assert cache.recorded == 1 and len(cache) == 1
    cache.run(double, torch.randn(5, 4))  # another batch size: another graph
    cache.run(double, a, key="other")  # another key: another graph
    cache.run(double, a.double())  # another dtype: another graph
    assert cache.recorded == 4 and cache.recorded_shapes == [(3, 4), (5, 4), (3, 4), (3, 4)]


@torch.no_grad()
def test_outputs_are_cloned_unless_asked_not_to():
    x = torch.randn(2, 3)
    cache = FakeGraphs()
    first = cache.run(double, x)
    second = cache.run(double, x + 1)
    assert torch.equal(first, 2 * x) and torch.equal(second, 2 * (x + 1))
    shared = FakeGraphs(clone=False)
    first = shared.run(double, x)
    shared.run(double, x + 1)
    assert torch.equal(first, 2 * (x + 1))  # documented: the next call of the key overwrites it


@torch.no_grad()
def test_tuple_and_dict_outputs():
    cache = FakeGraphs()
    x = torch.randn(2, 3)
    pair = cache.run(lambda v: (v + 1, v * 3), x, key="pair")
    named = cache.run(lambda v: {"a": v - 1, "b": v.sum(1)}, x, key="dict")
    assert isinstance(pair, tuple) and torch.equal(pair[1], 3 * x)
    assert set(named) == {"a", "b"} and torch.equal(named["b"], x.sum(1))


@torch.no_grad()
def test_least_recently_used_key_is_dropped_past_the_capacity():
    cache = FakeGraphs(capacity=2)
    for n in (1, 2):
        cache.run(double, torch.randn(n, 2))
    cache.run(double, torch.randn(1, 2))  # batch 1 is now the most recently used
    cache.run(double, torch.randn(3, 2))
    assert len(cache) == 2
    assert [k[1][0][0] for k in cache.keys()] == [(1, 2), (3, 2)]  # batch 2 went
    cache.run(double, torch.randn(2, 2))
    assert cache.recorded == 4 and len(cache) == 2
    for n in range(4, 40):  # many batch sizes: the cache never holds more than its capacity
        cache.run(double, torch.randn(n, 2))
        assert len(cache) <= 2


@torch.no_grad()
def test_a_changed_state_drops_every_graph():
    cache = FakeGraphs()
    net = torch.nn.Linear(2, 2)
    x = torch.randn(1, 2)
    cache.run(net, x, state=module_state(net))
    cache.run(net, x, state=module_state(net))
    assert cache.recorded == 1
    net.double()  # new weight tensors: the recorded graph would read the old ones
    assert cache.run(net, x.double(), state=module_state(net)).dtype == torch.float64
    net.train(False)
    cache.run(net, x.double(), state=module_state(net))
    assert cache.recorded == 3 and len(cache) == 1


def test_module_state_follows_moves_dtypes_and_modes():
    net = torch.nn.BatchNorm1d(3)
    before = module_state(net)
    assert module_state(net) == before
    net.load_state_dict(net.state_dict())  # in place: the same memory
    assert module_state(net) == before
    assert module_state(net.double()) != before
    assert module_state(net.eval()) != module_state(net.train())


def test_eager_with_autograd_and_for_mixed_devices():
    cache = FakeGraphs()
    x = torch.randn(2, 2, requires_grad=True)
    y = cache.run(double, x)
    assert y.requires_grad and cache.recorded == 0
    with torch.no_grad():
        assert not cache.applies()  # no tensor input: nothing to key a graph on
    plain = GraphCache()  # the real one: CPU tensors never record
    with torch.no_grad():
        assert not plain.applies(torch.zeros(1))
        assert torch.equal(plain.run(double, torch.ones(2)), torch.full((2,), 2.0))
    assert len(plain) == 0 and plain.recorded == 0


@torch.no_grad()
def test_a_failed_recording_runs_eagerly_and_warns_once(lgfa_records):
    cache = FakeGraphs(fail=True)
    for n in (1, 1, 2, 3):
        x = torch.randn(n, 2)
        assert torch.equal(cache.run(double, x), 2 * x)
    messages = [r.getMessage() for r in lgfa_records]
    assert len(messages) == 1, messages
    assert "CUDA graph recording failed" in messages[0] and "\n" not in messages[0]
    assert cache.recorded == 0 and len(cache) == 3  # each failed key stays eager, within the bound


@torch.no_grad()
def test_the_functions_own_errors_surface_as_in_an_eager_call():
    cache = FakeGraphs()

    def broken(x):
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        cache.run(broken, torch.zeros(1))


@torch.no_grad()
def test_chunks_share_one_shape_and_the_padding_is_dropped():
    cache = FakeGraphs()
    x = torch.randn(7, 3)
    out = run_chunked(cache, double, x, rows=3)
    assert torch.equal(out, 2 * x)
    assert cache.recorded_shapes == [(3, 3)]  # 3 + 3 + 1 padded to 3: one graph
    assert torch.equal(run_chunked(cache, double, x[:2], rows=3), 2 * x[:2])  # fewer rows: one call
    assert cache.recorded_shapes == [(3, 3), (2, 3)]


def test_copies_and_pickles_start_empty():
    import pickle

    cache = FakeGraphs(capacity=3)
    with torch.no_grad():
        cache.run(double, torch.zeros(2))
    twin = copy.deepcopy(cache)
    assert len(twin) == 0 and twin.capacity == 3
    original = GraphCache(capacity=5, clone=False)
    assert pickle.dumps(original)  # a pipeline holding one can be sent to spawned workers
    again = GraphCache.__new__(GraphCache)  # what unpickling does with the pickled state
    again.__setstate__(original.__getstate__())
    assert again.capacity == 5 and again.clone is False and len(again) == 0


def test_bad_settings():
    with pytest.raises(ValueError):
        GraphCache(capacity=0)
    with pytest.raises(ValueError):
        GraphCache(warmup=-1)


@pytest.fixture(scope="module")
def embedded():
    from src.pipeline import FaceAnimator

    return FaceAnimator.from_pretrained(EMBEDDED, device="cpu")


@pytest.mark.slow
def test_the_option_is_a_no_op_on_a_cpu(embedded):
    from src.pipeline import FaceAnimator

    graphed = FaceAnimator.from_pretrained(EMBEDDED, device="cpu", cuda_graphs=True)
    assert isinstance(graphed.graphs, GraphCache) and embedded.graphs is None
    ws = embedded.sample_latents(seeds=[1])
    kw = dict(num_frames=3, identity_projection=0.0)
    want = embedded.animate(ws, "The person is smiling.", **kw)["frames"]
    got = graphed.animate(ws, "The person is smiling.", **kw)["frames"]
    assert torch.equal(got, want)
    assert len(graphed.graphs) == 0 and graphed.graphs.recorded == 0
    assert graphed.use_cuda_graphs(False) is graphed and graphed.graphs is None


@pytest.mark.slow
def test_pipeline_chunks_through_the_cache(embedded):
    """The wiring: render_image and synthesize go through the cache, frames in calls of one shape
    (the last one padded), and give the eager frames."""
    ws = embedded.sample_latents(seeds=[3])[:, None] + 0.1 * torch.randn(1, 5, 1, 1)  # 5 frames
    from src.pipeline.face_animator import CPU_PIXELS_PER_CALL

    step = max(1, CPU_PIXELS_PER_CALL // embedded.generator.img_resolution ** 2)
    assert 5 % step  # the last call is not full
    fake = FakeGraphs(warmup=0)
    with torch.no_grad():
        want = embedded.synthesize(ws)
        embedded.graphs = fake
        try:
            got = embedded.synthesize(ws)
            image = embedded.render_image(ws[:, 0])
        finally:
            embedded.graphs = None
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert torch.allclose(image, want[:, 0], atol=1e-5, rtol=0)
    shape = tuple(ws.shape[2:])
    assert fake.recorded_shapes == [(step, *shape), (1, *shape)]

"""GPU tests of the inference CUDA graphs: replayed generator frames equal eager ones (fp32 and
fp16 blocks), new inputs reach the graph, each batch size records its own graph within the bound,
random noise stays random, autograd and a failed recording run eagerly, and the pipeline's
``cuda_graphs`` option (generator and recurrence graphs) gives the frames of the eager pipeline."""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch

from src.ops.graph_cache import GraphCache, module_state, run_chunked
from src.stylegan import Generator

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

from tests.gpu_helpers import no_tf32, strict_cuda_policy  # noqa: E402,F401  (autouse: a failed build fails)

EMBEDDED = Path(__file__).resolve().parents[1] / "assets" / "animator_synthetic.safetensors"
# max |graphed - eager| / max |eager|: fp32 (no TF32) and generators with fp16 blocks
REL_TOL = {False: 1e-5, True: 1e-2}
# the whole pipeline in fp32: cuBLAS picks its kernels for a captured stream's workspace, so the
# recurrence's matmuls may sum in another order; 16 recurrent steps and the generator carry that
# rounding (fp32's eps 1.2e-7) to 5e-5 - 1.4e-4 of the frames' range, seeds apart, on an H100
PIPELINE_REL_TOL = {False: 5e-4, True: 1e-2}


def config_f(res: int, fp16: bool) -> Generator:
    torch.manual_seed(0)
    G = Generator(z_dim=512, w_dim=512, img_resolution=res, img_channels=3, mapping_kwargs=dict(num_layers=8),
                  synthesis_kwargs=dict(channel_base=32768, channel_max=512, num_fp16_res=4 if fp16 else 0,
                                        conv_clamp=256 if fp16 else None))
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.add_(0.1)  # the noise must matter
    return G.eval().requires_grad_(False).cuda()


def latents(G: Generator, n: int, seed: int) -> torch.Tensor:
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed)).cuda()
    return G.mapping(z, None)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def synthesis(G: Generator, noise_mode: str = "const"):
    return lambda ws: G.synthesis(ws, noise_mode=noise_mode)


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("batch", [1, 4])
@torch.no_grad()
def test_replayed_frames_equal_eager_ones_and_follow_new_inputs(fp16, batch):
    G = config_f(256, fp16)
    cache = GraphCache()
    with no_tf32():
        for seed in (1, 2, 3):  # recorded on the first call, replayed with other ws on the next ones
            ws = latents(G, batch, seed)
            want = G.synthesis(ws, noise_mode="const")
            got = cache.run(synthesis(G), ws, key="const", state=module_state(G))
            assert got.shape == want.shape and bool(torch.isfinite(got).all())
            assert rel(got, want) <= REL_TOL[fp16], (seed, rel(got, want))
            if seed > 1:
                assert rel(got, previous) > 1e-2  # other ws: other frames, not the recorded ones
            previous = got
    assert cache.recorded == 1 and len(cache) == 1


@torch.no_grad()
def test_each_batch_size_records_its_own_graph_and_replays_interleave():
    G = config_f(64, fp16=True)
    cache = GraphCache(capacity=2)
    fn = synthesis(G)
    for round_ in range(3):  # graphs of batch 2 and 3 share a memory pool: replays in any order
        for n in (2, 3):
            ws = latents(G, n, seed=10 * round_ + n)
            assert rel(cache.run(fn, ws, state=module_state(G)), G.synthesis(ws, noise_mode="const")) <= 1e-2
    assert cache.recorded == 2
    for n in (4, 5, 2):  # past the capacity: the least recently used go, and come back when asked
        ws = latents(G, n, seed=n)
        assert rel(cache.run(fn, ws, state=module_state(G)), G.synthesis(ws, noise_mode="const")) <= 1e-2
        assert len(cache) <= 2
    assert cache.recorded == 5


@torch.no_grad()
def test_many_batch_sizes_keep_memory_bounded():
    G = config_f(64, fp16=False)
    cache = GraphCache(capacity=2)

    def cycle():  # four sizes through a cache of two: each one evicted and recorded again
        for n in range(1, 5):
            cache.run(synthesis(G), latents(G, n, n), state=module_state(G))
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # pools of dropped graphs go back to the device
        return torch.cuda.memory_reserved()

    settled = cycle()
    for _ in range(4):  # what stays reserved is the two live graphs' pools: no growth per cycle
        assert cycle() <= settled * 1.05 + 2**20
    assert len(cache) == 2 and cache.recorded == 4 * 5


@torch.no_grad()
def test_random_noise_is_new_on_every_replay():
    G = config_f(64, fp16=False)
    cache = GraphCache()
    ws = latents(G, 2, 0)
    frames = [cache.run(synthesis(G, "random"), ws, key="random", state=module_state(G)) for _ in range(3)]
    assert cache.recorded == 1
    const = G.synthesis(ws, noise_mode="const")
    eager = G.synthesis(ws, noise_mode="random")
    for a, b in zip(frames, frames[1:]):
        assert rel(a, b) > 1e-4  # another draw
    for f in frames:  # the same face, as far from the constant-noise one as an eager random draw is
        assert bool(torch.isfinite(f).all())
        assert 0.5 <= float((f - const).std() / (eager - const).std()) <= 2.0


def test_autograd_runs_eagerly():
    G = config_f(64, fp16=False)
    cache = GraphCache()
    ws = latents(G, 1, 0).detach().requires_grad_(True)
    img = cache.run(synthesis(G), ws, state=module_state(G))
    img.square().mean().backward()
    assert ws.grad is not None and cache.recorded == 0 and len(cache) == 0


@torch.no_grad()
def test_a_failed_recording_runs_eagerly_warns_once_and_leaves_cuda_usable():
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger, handler = logging.getLogger("lgfa"), Keep(logging.WARNING)
    logger.addHandler(handler)
    try:
        cache = GraphCache()

        def syncs(x):  # a host sync cannot be recorded
            return x * float(x.sum().item() != 0)

        for n in (2, 2, 3):
            x = torch.randn(n, 8, device="cuda")
            assert torch.equal(cache.run(syncs, x), x)
    finally:
        logger.removeHandler(handler)
    assert len(records) == 1 and "CUDA graph recording failed" in records[0]
    assert cache.recorded == 0
    assert float(torch.ones(4, device="cuda").sum()) == 4.0


@torch.no_grad()
def test_padded_chunks_equal_one_eager_call():
    G = config_f(64, fp16=False)
    cache = GraphCache()
    ws = latents(G, 7, 0)
    fn = lambda w: G.synthesis(w, noise_mode="const", fused_modconv=False)  # noqa: E731
    with no_tf32():
        got = run_chunked(cache, fn, ws, rows=3, state=module_state(G))
        want = G.synthesis(ws, noise_mode="const", fused_modconv=False)
    assert rel(got, want) <= 1e-5 and cache.recorded == 1


def twin(G: Generator, fp16: bool) -> Generator:
    kwargs = copy.deepcopy(G.init_kwargs)
    kwargs["synthesis_kwargs"]["num_fp16_res"] = 4 if fp16 else 0
    out = Generator(**kwargs)
    out.load_state_dict(G.state_dict())
    return out.eval()


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_the_pipeline_option_gives_the_eager_frames(fp16):
    from src.pipeline import FaceAnimator

    shipped = FaceAnimator.from_pretrained(EMBEDDED)
    G = twin(shipped.generator, fp16)
    eager = FaceAnimator.from_pretrained(EMBEDDED, device="cuda", generator=G, hash_check="off")
    graphed = FaceAnimator.from_pretrained(EMBEDDED, device="cuda", generator=copy.deepcopy(G), hash_check="off",
                                           cuda_graphs=True)
    prompts = ["The person is smiling.", "The person is winking."]
    with no_tf32():
        for seeds in ([1, 2], [3, 4]):
            ws = eager.sample_latents(seeds=seeds)
            want = eager.animate(ws, prompts, num_frames=16)["frames"]
            got = graphed.animate(ws, prompts, num_frames=16)["frames"]
            assert rel(got, want) <= PIPELINE_REL_TOL[fp16], (seeds, rel(got, want))
    # the input faces (batch 2), the recurrence and the frames (batch 32): three graphs, replayed
    # for the second faces
    assert graphed.graphs.recorded == 3 and len(graphed.graphs) == 3
    graphed.to("cpu").to("cuda")  # weights in new memory: recorded again
    with no_tf32():
        again = graphed.animate(ws, prompts, num_frames=16)["frames"]
    assert rel(again, want) <= PIPELINE_REL_TOL[fp16] and graphed.graphs.recorded == 6


def test_gpu_frames_render_in_calls_of_the_pixel_budget(monkeypatch):
    """Without gradients on a GPU, eager or graphed, frames go through the generator in calls of
    GPU_PIXELS_PER_CALL pixels and give the frames of one call."""
    from src.pipeline import FaceAnimator, face_animator

    pipe = FaceAnimator.from_pretrained(EMBEDDED, device="cuda")
    ws = pipe.sample_latents(seeds=[1, 2])[:, None] + 0.05 * torch.randn(2, 5, 1, 1, device="cuda")  # 10 frames
    with torch.no_grad(), no_tf32():
        whole = pipe.synthesize(ws)  # the default budget: all 10 at 128 px in one call
        monkeypatch.setattr(face_animator, "GPU_PIXELS_PER_CALL", 4 * 128 * 128)
        calls = []
        hook = pipe.generator.synthesis.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
        try:
            chunked = pipe.synthesize(ws)
        finally:
            hook.remove()
    assert calls == [4, 4, 2]
    assert rel(chunked, whole) <= REL_TOL[True]  # the shipped generator's top blocks run in fp16


def test_gan_reals_replayed_as_a_graph_are_the_eager_renders():
    """precision.cuda_graphs also replays the reals' render: the same images as the eager render of
    the same parameters, one recording for all batches, no fallback warning."""
    from src.embedded.training.gan_reals import RealPrefetcher

    device = torch.device("cuda")
    eager, graphed = RealPrefetcher(8, 64), RealPrefetcher(8, 64, cuda_graphs=True)
    g_eager, g_graphed = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(4):
        want = eager.take(g_eager, device)
        got = graphed.take(g_graphed, device)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        graphed.prefetch(g_graphed, device)
        eager.prefetch(g_eager, device)
    assert graphed.graphs.recorded == 1 and not graphed.graphs.warned

"""Text -> frames through the public pipeline on one device: ms per video, frames/s, peak memory.

    python bench/bench_animate_gpu.py [--res 1024 256 128] [--videos 1 4] [--precision fp32 fp16 bf16]
        [--frames 16] [--iters 20] [--warmup 3] [--identity-projection P] [--device cuda] [--cuda-graphs]
        [--nchw]
    python bench/bench_animate_gpu.py --device cpu --res 128 --iters 1      # a smoke run on a CPU

Every row times ``FaceAnimator.animate(ws, prompts, num_frames)``, what a user calls: the input
face's image, CLIP's text and image embeddings, the recurrent animator and every frame, for
``videos`` faces with one prompt each in one call. The pipeline is built as a user builds it:

* at the embedded default's resolution (128): ``FaceAnimator.from_pretrained`` of
  assets/animator_synthetic.safetensors, its generator as shipped, or its weights in a generator
  of the other precision (then the frozen-hash check is off: the same weights, another dtype);
* at any other resolution: the paper's animator (``experiment=human_paper``: OpenAI RN50 CLIP,
  variant 'paper', no identity projection) with random weights on a config-f generator with random
  weights (channel_base 32768, channel_max 512, z/w 512, 8 mapping layers, noise const), built as
  bench/bench_generator.py builds it.

Precision is the generator's: fp32, or fp16 in its top blocks (num_fp16_res 4, conv_clamp 256, as
NVIDIA's FFHQ pickle), or those blocks in bf16 (``SynthesisNetwork.set_half_dtype``); CLIP and the
animator run in fp32. On a CPU, whose half-precision blocks compute in fp32, fp16 and bf16 rows are
'n/a'. Timing: CUDA events
around each call after --warmup calls, median of --iters. Peak memory: torch.cuda.max_memory_allocated
over the row's calls, weights included, reset between rows ('resident' is what the row started with).

--cuda-graphs: every row is timed twice, eagerly (graphs off) and with the pipeline's CUDA graphs
(``FaceAnimator.use_cuda_graphs``: the generator's calls replayed; recorded during the warm-up, so
their memory pools count in the peak), one after the other on the same pipeline. The fp16 and bf16 rows run the generator's fp16
blocks channels-last, as the pipeline does by default (``FaceAnimator.use_channels_last``), labelled
'fp16 NHWC'; --nchw runs them with NCHW activations instead (labelled 'fp16').
"""
from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from src.utils.errors import UserError, exit_code  # noqa: E402

EMBEDDED_ANIMATOR = ROOT / "assets" / "animator_synthetic.safetensors"
PAPER_EXPERIMENT = "human_paper"
PRECISIONS = ("fp32", "fp16", "bf16")

# Issue #25's anchors, one H100, config-f 1024, random weights, noise const: the authors' code
# (researchmm/language-guided-animation) renders a 16-frame video in 16 batch-1 fp32 generator calls.
ANCHOR_RES, ANCHOR_FRAMES = 1024, 16
AUTHORS_MS_PER_VIDEO, AUTHORS_PEAK_GIB = 132.6, 1.5
GOAL_MS_PER_VIDEO, GOAL_PEAK_GIB = 20.0, 4.0

COLUMNS = ("res", "model", "videos/call", "precision", "graphs", "proj", "ms/call", "ms/video", "frames/s", "ms/frame",
           "peak GiB", "resident GiB", "ms ÷ authors", "ms ÷ goal", "peak ÷ authors", "peak ÷ goal")


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are a UserError (one 'error:' line, exit 2)."""

    def error(self, message):
        raise UserError(message)


def parse_args(argv):
    ap = Parser(description=__doc__.splitlines()[0], epilog="See the module docstring for what is timed.")
    ap.add_argument("--res", type=int, nargs="+", default=[1024, 256, 128])
    ap.add_argument("--videos", type=int, nargs="+", default=[1, 4], help="videos (faces) per animate() call")
    ap.add_argument("--precision", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    ap.add_argument("--frames", type=int, default=16, help="frames per video")
    ap.add_argument("--iters", type=int, default=20, help="timed calls per row (the median is reported)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed calls before them (default 3; 0 on a CPU, where a run is a smoke test)")
    ap.add_argument("--identity-projection", type=float, default=None,
                    help="0..1 (default: each animator's recorded setting)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--nchw", action="store_true",
                    help="fp16/bf16 rows with NCHW activations in the generator's fp16 blocks (default: "
                         "channels-last, as the pipeline runs them)")
    ap.add_argument("--cuda-graphs", action="store_true",
                    help="also time every row with the pipeline's CUDA graphs (use_cuda_graphs), beside the eager row")
    args = ap.parse_args(argv)
    if args.warmup is None:
        args.warmup = 0 if str(args.device).startswith("cpu") else 3
    bad = [r for r in args.res if r < 8 or r > 2048 or r & (r - 1)]
    if bad:
        raise UserError(f"--res {bad[0]}: a resolution is a power of two from 8 to 2048")
    for name, low in (("videos", 1), ("frames", 2), ("iters", 1), ("warmup", 0)):
        values = getattr(args, name)
        for v in values if isinstance(values, list) else [values]:
            if v < low:
                raise UserError(f"--{name} {v}: must be at least {low}")
    if args.identity_projection is not None and not 0.0 <= args.identity_projection <= 1.0:
        raise UserError(f"--identity-projection {args.identity_projection}: must be in [0, 1]")
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        raise UserError(f"--device {args.device}: not a torch device (cuda, cuda:1, cpu)") from None
    if args.device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("no CUDA device here (a smoke run on a CPU: --device cpu --res 128 --iters 1)")
    if args.device.type not in ("cuda", "cpu"):
        raise UserError(f"--device {args.device}: only cuda and cpu are benchmarked")
    return args


def unsupported(precision: str, device: torch.device) -> str | None:
    """Why the pipeline cannot run ``precision`` on ``device`` (None: it can)."""
    from src.stylegan import layers

    if precision in ("fp16", "bf16") and device.type not in layers.FP16_DEVICE_TYPES:
        return f"n/a: {precision} blocks compute in fp32 on a {device.type}"
    return None


def embedded_resolution() -> int:
    from src.pipeline.animator_file import read_animator_file

    return int(read_animator_file(EMBEDDED_ANIMATOR).hyper_parameters["domain"]["resolution"])


def generator_twin(G, fp16: bool):
    """A generator with G's weights whose top blocks compute in fp16 (num_fp16_res 4) or none do."""
    from src.stylegan import Generator

    kwargs = copy.deepcopy(G.init_kwargs)
    syn = kwargs.setdefault("synthesis_kwargs", {})
    syn["num_fp16_res"] = 4 if fp16 else 0
    if fp16 and syn.get("conv_clamp") is None:
        syn["conv_clamp"] = 256  # the official fp16 networks clamp every conv's output
    twin = Generator(**kwargs)
    twin.load_state_dict(G.state_dict())
    return twin.eval()


def build_embedded(fp16: bool, device: torch.device):
    """(pipeline, model label): the embedded default, its generator in the precision asked."""
    from src.pipeline import FaceAnimator

    pipe = FaceAnimator.from_pretrained(EMBEDDED_ANIMATOR)
    if (pipe.generator.synthesis.num_fp16_res > 0) == fp16:
        return pipe.to(device).eval(), "embedded, as shipped"
    twin = generator_twin(pipe.generator, fp16)
    pipe = FaceAnimator.from_pretrained(EMBEDDED_ANIMATOR, generator=twin, hash_check="off")
    return pipe.to(device).eval(), f"embedded, {'fp16' if fp16 else 'fp32'} twin"


def random_open_clip(name: str):
    """open_clip's ``name`` with random weights, wrapped as the pipeline wraps a loaded one."""
    import open_clip

    from src.networks.clip_encoder import ClipEncoder

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # "no pretrained weights loaded": none are wanted
    try:
        model = open_clip.create_model(name, pretrained=None)
    finally:
        logging.disable(previous)
    return ClipEncoder.wrap_open_clip(model, open_clip.get_tokenizer(name), source=f"open_clip:{name}:random")


def build_paper(config: dict, res: int, fp16: bool, device: torch.device):
    """(pipeline, model label): the paper's animator, random weights, on a random config-f generator."""
    from src.pipeline import FaceAnimator
    from src.stylegan import Generator

    torch.manual_seed(0)
    G = Generator(z_dim=512, w_dim=512, img_resolution=res, img_channels=3, mapping_kwargs=dict(num_layers=8),
                  synthesis_kwargs=dict(channel_base=32768, channel_max=512, num_fp16_res=4 if fp16 else 0,
                                        conv_clamp=256 if fp16 else None))
    torch.manual_seed(1)
    clip = random_open_clip(config["domain"]["clip"]["model_name"])
    config = copy.deepcopy(config)
    config["domain"].update(resolution=res)
    config["domain"]["generator"]["checkpoint"] = None  # the generator is built here
    torch.manual_seed(2)
    pipe = FaceAnimator(config, generator=G, clip=clip)
    return pipe.to(device).eval(), f"{PAPER_EXPERIMENT}, random"


def paper_config() -> dict:
    from src.pipeline.authors_checkpoint import experiment_config

    return experiment_config(PAPER_EXPERIMENT)


def time_row(pipe, videos: int, args) -> dict:
    """Time ``pipe.animate`` for ``videos`` faces: the median ms per call, peak and resident GiB (None
    on a CPU) and the identity projection used; the last call's frames are checked (shape, finite)."""
    device = args.device
    cuda = device.type == "cuda"
    ws = pipe.sample_latents(seeds=list(range(videos)))
    prompts = [pipe.prompt_list[i % len(pipe.prompt_list)] for i in range(videos)]
    kw = {} if args.identity_projection is None else {"identity_projection": args.identity_projection}

    def call():
        return pipe.animate(ws, prompts, num_frames=args.frames, **kw)["frames"]

    resident = peak = None
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device) / 2**30
    frames = None
    for _ in range(args.warmup):
        frames = None  # the previous call's frames are not kept alive during the next one
        frames = call()
    times = []
    for _ in range(args.iters):
        frames = None
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            frames = call()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            frames = call()
            times.append(1000.0 * (time.perf_counter() - t0))
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    shape = tuple(frames.shape)
    want = (videos, args.frames, 3, pipe.generator.img_resolution, pipe.generator.img_resolution)
    if shape != want or not bool(torch.isfinite(frames).all()):
        raise RuntimeError(f"animate returned frames {shape} (expected {want}) or non-finite values")
    projection = kw.get("identity_projection", pipe.inference_cfg.identity_projection or 0.0)
    return dict(ms=statistics.median(times), peak=peak, resident=resident, projection=float(projection))


def ratio(ours, anchor) -> str:
    return "-" if ours is None or anchor is None else f"{ours / anchor:.2f}"


def row_cells(res: int, label: str, videos: int, precision: str, r: dict, frames: int,
              graphs: str = "off") -> list[str]:
    per_video = r["ms"] / videos
    anchored = res == ANCHOR_RES and frames == ANCHOR_FRAMES
    gib = (lambda v: "-" if v is None else f"{v:.2f}")
    return [str(res), label, str(videos), precision, graphs, f"{r['projection']:g}", f"{r['ms']:.2f}",
            f"{per_video:.2f}", f"{1000.0 * videos * frames / r['ms']:.1f}", f"{r['ms'] / (videos * frames):.3f}",
            gib(r["peak"]), gib(r["resident"]),
            ratio(per_video, AUTHORS_MS_PER_VIDEO if anchored else None),
            ratio(per_video, GOAL_MS_PER_VIDEO if anchored else None),
            ratio(r["peak"], AUTHORS_PEAK_GIB if anchored else None),
            ratio(r["peak"], GOAL_PEAK_GIB if anchored else None)]


def note_row(res: int, label: str, videos: int, precision: str, note: str, graphs: str = "off") -> list[str]:
    """A row whose timing columns hold ``note`` (a precision not run, a call out of memory)."""
    return [str(res), label, str(videos), precision, graphs, "-", note] + ["-"] * (len(COLUMNS) - 7)


def print_row(cells) -> None:
    print("| " + " | ".join(cells) + " |", flush=True)


def free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def run(argv=None) -> None:
    args = parse_args(argv)
    device = args.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# text -> {args.frames} frames through FaceAnimator.animate on {name}; torch {torch.__version__}; "
          f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}; cudnn.allow_tf32="
          f"{torch.backends.cudnn.allow_tf32}; median of {args.iters} after {args.warmup} warm-up calls")
    print(f"# anchors (issue #25, one H100, {ANCHOR_RES} px, {ANCHOR_FRAMES} frames): authors' code "
          f"{AUTHORS_MS_PER_VIDEO} ms per video (16 batch-1 fp32 calls), peak {AUTHORS_PEAK_GIB} GiB; "
          f"goal {GOAL_MS_PER_VIDEO:g} ms, peak {GOAL_PEAK_GIB:g} GiB; ratio = ours / anchor (below 1: faster, "
          "smaller), on 1024 px 16-frame rows only")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    embedded_res = embedded_resolution()
    settings = ("off", "on") if args.cuda_graphs else ("off",)
    config = None
    for res in args.res:
        for precision in args.precision:
            why = unsupported(precision, device)
            label = "embedded" if res == embedded_res else f"{PAPER_EXPERIMENT}, random"
            if why:
                for videos in args.videos:
                    for graphs in settings:
                        print_row(note_row(res, label, videos, precision, why, graphs))
                continue
            fp16 = precision in ("fp16", "bf16")
            if res == embedded_res:
                pipe, label = build_embedded(fp16, device)
            else:
                config = config or paper_config()
                pipe, label = build_paper(config, res, fp16, device)
            if precision == "bf16":  # the fp16 blocks computing in bfloat16
                pipe.generator.synthesis.set_half_dtype(torch.bfloat16)
            nhwc = fp16 and not args.nchw
            pipe.use_channels_last(nhwc)
            shown = f"{precision} NHWC" if nhwc else precision
            for videos in args.videos:
                for graphs in settings:
                    if graphs == "on" and device.type != "cuda":
                        print_row(note_row(res, label, videos, shown, "n/a: CUDA graphs run on CUDA only", graphs))
                        continue
                    pipe.use_cuda_graphs(graphs == "on")
                    try:
                        r = time_row(pipe, videos, args)
                        cells = row_cells(res, label, videos, shown, r, args.frames, graphs)
                    except torch.cuda.OutOfMemoryError:
                        cells = note_row(res, label, videos, shown, "out of GPU memory", graphs)
                    pipe.use_cuda_graphs(False)  # the row's graphs go with it
                    print_row(cells)
                    free(device)
            del pipe
            free(device)


def main(argv=None) -> int:
    return exit_code(lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())

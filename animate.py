"""Animate a face from a sentence.

    python animate.py                                   # embedded default: a sampled face, smiling
    python animate.py text="The person is winking." seed=3 output=wink.gif
    python animate.py image=face.png text='["The person is smiling.","The person is closing eyes."]'
    python animate.py latent=w_plus.npy frames=24 fps=12 decay=sqrt strength=1.2

Arguments are Hydra-style key=value overrides of conf/animate.yaml (composed with Hydra's compose
API, so no output folders are created). Bad input ends with one line `error: ...` and exit code 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def compose_config(overrides: list[str]):
    """The animate config with the user's overrides; one-line UserError on any config problem."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from src.config.schema import register_configs, register_resolvers, validate_config
    from src.utils.errors import UserError

    register_configs()
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="animate", overrides=overrides)
        # ${hydra:runtime.*} is not available with compose: resolve paths from the repo root
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.output_dir = str(Path.cwd())
        OmegaConf.resolve(cfg)
    except UserError:
        raise
    except Exception as e:  # Hydra/OmegaConf errors: keep their first line, which names the key
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"bad argument: {msg}") from None
    validate_config(cfg)
    return cfg


def prompts_of(text) -> list[str]:
    from src.utils.errors import UserError

    prompts = [text] if isinstance(text, str) else list(text)
    prompts = [str(p).strip() for p in prompts]
    if not prompts or any(not p for p in prompts):
        raise UserError("text must be a non-empty prompt or a list of non-empty prompts")
    return prompts


def run(cfg) -> Path:
    """Render the animation described by ``cfg``; returns the video path."""
    import torch
    from tqdm import tqdm

    from src.inversion.projection import load_latent, project
    from src.systems.animator import load_animator
    from src.utils.errors import UserError
    from src.utils.video import video_format, write_strip, write_video

    output = Path(cfg.output)
    video_format(output)  # fail on a bad extension before any work
    prompts = prompts_of(cfg.text)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but CUDA is not available")
    overrides = {"projection_reader": cfg.projection_reader} if cfg.get("projection_reader") else None
    module = load_animator(cfg.checkpoint, device=device, map_overrides=overrides)
    G = module.generator

    if cfg.latent is not None:
        ws = load_latent(cfg.latent, G).to(device)
    elif cfg.image is not None:
        from src.data.images import load_image

        image = load_image(cfg.image).unsqueeze(0).to(device)
        # optimisation needs gradients: outside no_grad; LPIPS-VGG when installed, else pixels only
        result = project(G, image, steps=cfg.projection_steps, progress=True)
        ws = result["ws"].detach()
        print(f"projected {cfg.image}: PSNR {result['psnr']:.2f} dB, MSE {result['mse']:.5f}", file=sys.stderr)
    else:
        ws = module.sample_latents(1, seed=0 if cfg.seed is None else int(cfg.seed))

    with torch.no_grad():
        segments = []
        for i, prompt in enumerate(tqdm(prompts, desc="animating", unit="prompt", disable=len(prompts) == 1)):
            out = module.animate(ws, [prompt], num_frames=cfg.frames, decay=cfg.decay, strength=cfg.strength,
                                 motion_total=cfg.get("motion_total"),
                                 identity_projection=cfg.get("identity_projection"))
            frames = out["frames"][0]
            # chained segments start from the previous last frame: drop the repeated first frame
            segments.append(frames if i == 0 else frames[1:])
            ws = out["ws"][:, -1]
        video = torch.cat(segments, dim=0)

    write_video(video, output, fps=cfg.fps)
    if cfg.strip:
        write_strip(video, output.with_suffix(".png"))
    return output


def main(argv: list[str] | None = None) -> int:
    from src.utils.errors import UserError

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    from src.utils.cpu_memory import reuse_freed_memory

    reuse_freed_memory()  # CPU inference reuses freed activations instead of faulting fresh pages in
    try:
        cfg = compose_config(argv)
        path = run(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    print(f"wrote {path}" + (f" and {path.with_suffix('.png')}" if cfg.strip else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

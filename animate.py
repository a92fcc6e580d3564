"""Animate a face from a sentence.

    python animate.py                                   # embedded default: a sampled face, smiling
    python animate.py text="The person is winking." seed=3 output=wink.gif
    python animate.py image=face.png text='["The person is smiling.","The person is closing eyes."]'
    python animate.py latent=w_plus.npy frames=24 fps=12 decay=sqrt strength=1.2

Arguments are Hydra-style key=value overrides of conf/animate.yaml (composed with Hydra's compose
API, so no output folders are created). A thin command line over ``src.pipeline.FaceAnimator``.
Bad input ends with one line `error: ...` and exit code 2.
"""
from __future__ import annotations

import sys
from pathlib import Path


def run(cfg) -> Path:
    """Render the animation described by ``cfg``; returns the video path."""
    import torch

    from src.pipeline import FaceAnimator
    from src.utils.errors import UserError
    from src.utils.video import video_format, write_strip, write_video

    output = Path(cfg.output)
    video_format(output)  # fail on a bad extension before any work
    text = cfg.text
    prompts = [text] if isinstance(text, str) else list(text)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but CUDA is not available")
    overrides = {"inference.projection_reader": cfg.projection_reader} if cfg.get("projection_reader") else None
    animator = FaceAnimator.from_pretrained(cfg.checkpoint, device=device, overrides=overrides)
    face = cfg.latent if cfg.latent is not None else cfg.image
    with torch.no_grad():
        video = animator(face, prompts, frames=cfg.frames, strength=cfg.strength, decay=cfg.decay,
                         seed=cfg.seed, motion_total=cfg.get("motion_total"),
                         identity_projection=cfg.get("identity_projection"),
                         projection_steps=cfg.projection_steps, progress=True)
    write_video(video, output, fps=cfg.fps)
    if cfg.strip:
        write_strip(video, output.with_suffix(".png"))
    return output


def main(argv: list[str] | None = None) -> int:
    from src.config.cli import run_command

    def render(cfg) -> str:
        path = run(cfg)
        return f"wrote {path}" + (f" and {path.with_suffix('.png')}" if cfg.strip else "")

    return run_command("animate", argv, __doc__, render)


if __name__ == "__main__":
    sys.exit(main())

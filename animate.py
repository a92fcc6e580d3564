"""Animate a face from a sentence.

    python animate.py                                   # embedded default: a sampled face, smiling
    python animate.py text="The person is winking." seed=3 output=wink.gif
    python animate.py text="The person is smiling, then closing eyes"   # two motions, one after the other
    python animate.py image=face.png text="The person is opening mouth."
    python animate.py seed=7 save_latent=w_plus.npy     # also keep the face's W+ latent (a projected photo's too)
    python animate.py latent=w_plus.npy frames=24 fps=12 decay=sqrt strength=1.2
    python animate.py diverse=16 text="The person is smiling."   # 16 new faces near the average: a grid video
    python animate.py list_prompts=true                 # the concepts the animator was trained on

Arguments are key=value (conf/animate.yaml; no output folders are created). text= takes the
sentence exactly as typed inside shell quotes; every other key is a Hydra override. A thin command
line over ``src.pipeline.FaceAnimator``. Bad input ends with one line `error: ...` and exit code 2.
"""
from __future__ import annotations

import sys
from pathlib import Path


def run(cfg) -> Path:
    """Render the animation described by ``cfg``; returns the video path."""
    import torch

    from src.pipeline import FaceAnimator
    from src.utils.io import together
    from src.utils.video import write_strip, write_video

    output, text, device = check_arguments(cfg)
    if cfg.get("diverse") is not None:
        check_diverse(cfg)
    overrides = {"inference.projection_reader": cfg.projection_reader} if cfg.get("projection_reader") else None
    animator = FaceAnimator.from_pretrained(cfg.checkpoint, device=device, overrides=overrides,
                                            cuda_graphs=bool(cfg.cuda_graphs) and device.type == "cuda",
                                            channels_last=bool(cfg.get("channels_last")))
    motion = dict(frames=cfg.frames, strength=cfg.strength, decay=cfg.decay, check_latent=False,
                  motion_total=cfg.get("motion_total"), identity_projection=cfg.get("identity_projection"),
                  text_adapter=cfg.get("text_adapter"))
    if cfg.get("diverse") is not None:
        return animate_diverse(animator, cfg, text, motion, output)
    face = cfg.latent if cfg.latent is not None else cfg.image
    ws = animator.face_latent(face, seed=cfg.seed, projection_steps=cfg.projection_steps, progress=True)
    if cfg.get("save_latent"):
        save_latent(ws, Path(cfg.save_latent))
    with torch.no_grad():
        video = animator(ws, text, **motion)
    with together():  # the video and its strip: both new, or both as they were
        write_video(video, output, fps=cfg.fps)
        if cfg.strip:
            write_strip(video, output.with_suffix(".png"), title=text)
    return output


def check_arguments(cfg) -> tuple:
    """(output path, text, torch.device), once every value and path is checked: before any work,
    a bad value or a file that cannot be read or written ends in one line."""
    from src.config.cli import parse_device, prompt_text
    from src.utils.errors import UserError
    from src.utils.io import check_input_file, check_output_path
    from src.utils.video import check_fps, video_format

    output = check_output_path(cfg.output)
    check_fps(cfg.fps, video_format(output))
    if cfg.strip:
        check_output_path(output.with_suffix(".png"), "strip")
    if cfg.get("save_latent"):
        if Path(cfg.save_latent).suffix != ".npy":
            raise UserError(f"save_latent={cfg.save_latent}: write a .npy file")
        check_output_path(cfg.save_latent, "save_latent")
    for key in ("checkpoint", "image", "latent"):
        if cfg.get(key):
            check_input_file(cfg[key], f"{key}=")
    return output, prompt_text(cfg.text), parse_device(cfg.device)


def check_diverse(cfg) -> None:
    """diverse=N draws N >= 1 faces of its own: no other face, no latent to save."""
    from src.utils.errors import UserError

    if cfg.diverse < 1:
        raise UserError(f"diverse must be a number of faces >= 1, got {cfg.diverse}")
    given = [f"{k}=" for k in ("image", "latent", "seed", "save_latent") if cfg.get(k) is not None]
    if given:
        raise UserError(f"diverse= draws its own faces: drop {', '.join(given)}")


def animate_diverse(animator, cfg, text, motion: dict, output: Path) -> Path:
    """The authors' diverse samples: ``cfg.diverse`` new faces near the average face
    (``sample_near_average``), each animated with the text, tiled in one grid video (rows of
    ceil(sqrt(N)) faces, blank cells white), and beside it a contact sheet: a row a face, at most 8
    of its frames (the first and the last among them)."""
    import math

    import torch
    from tqdm import tqdm

    from src.utils.io import together
    from src.utils.video import write_contact_sheet, write_grid_video

    faces = animator.sample_near_average(cfg.diverse)
    with torch.no_grad():
        videos = torch.stack([animator(w[None], text, **motion)
                              for w in tqdm(faces, unit="face", file=sys.stderr, desc="diverse faces")])
    n, t, c, h, w = videos.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    cells = torch.cat([videos, videos.new_ones(rows * cols - n, t, c, h, w)])
    # each column of faces stacked into one tall video; write_grid_video puts the columns side by side
    columns = cells.reshape(rows, cols, t, c, h, w).permute(1, 2, 3, 0, 4, 5).reshape(cols, t, c, rows * h, w)
    with together():
        write_grid_video(columns, output, fps=cfg.fps)
        if cfg.strip:
            write_contact_sheet(videos, output.with_suffix(".png"), row_labels=[f"face {i}" for i in range(n)],
                                frame_step=max(1, math.ceil((t - 1) / 7)), title=text)
    return output


def save_latent(ws, path: Path) -> None:
    """The input face's W+ [1, L, C] as .npy (atomic): reuse it with latent=, e.g. a projected photo."""
    import numpy as np

    from src.utils.errors import UserError
    from src.utils.io import atomic_write

    if path.suffix != ".npy":
        raise UserError(f"save_latent={path}: write a .npy file")
    array = ws.detach().cpu().numpy()

    def same_array(tmp: Path) -> None:
        if not np.array_equal(np.load(tmp, allow_pickle=False), array):
            raise ValueError("the latent read back differs")

    with atomic_write(path, verify=same_array) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def list_prompts(cfg) -> str:
    """The prompts the checkpoint's animator was trained on, one a line (its file's record only)."""
    from src.pipeline.animator_file import read_animator_file
    from src.pipeline.components import prompt_list
    from src.utils.io import check_input_file

    check_input_file(cfg.checkpoint, "checkpoint=")
    prompts = prompt_list(read_animator_file(cfg.checkpoint).hyper_parameters.get("domain") or {})
    if not prompts:
        return f"{cfg.checkpoint} records no prompt list: any sentence goes"
    return f"{len(prompts)} prompts {cfg.checkpoint} was trained on (any other sentence goes too):\n" + \
        "\n".join(f"  {p}" for p in prompts)


def main(argv: list[str] | None = None) -> int:
    from src.config.cli import run_command

    def render(cfg) -> str:
        if cfg.list_prompts:
            return list_prompts(cfg)
        path = run(cfg)
        return f"wrote {path}" + (f" and {path.with_suffix('.png')}" if cfg.strip else "")

    return run_command("animate", argv, __doc__, render, verbatim=("text",))


def exit_now(code: int) -> None:
    """End the process with ``code`` once stdout and stderr are flushed, skipping the interpreter's
    teardown: every file is written and closed by then, and the static destructors of torch's
    libraries (which run at a normal exit) cost about 0.3 s and 130 MB of peak memory on a CPU."""
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())

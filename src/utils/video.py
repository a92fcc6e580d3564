"""Writing animations: mp4 / gif / webp videos, labelled PNG strips and contact sheets, always atomically.

The sheets' layout (labels in margins, never over a frame) is ``src.utils.contact_sheet``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from src.utils.contact_sheet import MAX_FRAME_SIZE, render_contact_sheet, render_strip
from src.utils.errors import UserError
from src.utils.io import atomic_write

VIDEO_FORMATS = ("mp4", "gif", "webp")


def to_uint8_frames(frames: torch.Tensor) -> np.ndarray:
    """[T,3,H,W] float in [-1,1] -> [T,H,W,3] uint8."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected frames [T,3,H,W], got {tuple(frames.shape)}")
    x = ((frames.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def mp4_available() -> bool:
    """Whether mp4 can be written here (imageio's ffmpeg plugin and binary are installed)."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
        return True
    except Exception:  # not installed, or no binary for this platform
        return False


def default_video_suffix() -> str:
    """'.mp4' where ffmpeg is available, else '.gif' (training logs must never fail on a codec)."""
    return ".mp4" if mp4_available() else ".gif"


def video_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """The container format: explicit ``fmt`` or the file extension; a clear error otherwise."""
    fmt = (fmt or Path(path).suffix.lstrip(".")).lower()
    if fmt not in VIDEO_FORMATS:
        raise UserError(f"unsupported video format '{fmt}' for {path}: use one of {', '.join(VIDEO_FORMATS)}")
    return fmt


def write_video(frames: torch.Tensor, path: str | os.PathLike, fps: float = 10.0, fmt: str | None = None) -> Path:
    """Write frames [T,3,H,W] in [-1,1] as mp4 (H.264 via imageio-ffmpeg), gif or webp (Pillow)."""
    if fps <= 0:
        raise UserError(f"fps must be positive, got {fps}")
    fmt = video_format(path, fmt)
    data = to_uint8_frames(frames)
    if fmt == "mp4" and not mp4_available():
        raise UserError(f"cannot write {path}: mp4 needs imageio-ffmpeg (pip install imageio-ffmpeg); or use .gif/.webp")
    with atomic_write(path) as tmp:
        if fmt == "mp4":
            import imageio.v2 as imageio

            # yuv420p needs even sizes; macro_block_size=1 keeps the exact frame size.
            writer = imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=8,
                                        macro_block_size=1, ffmpeg_log_level="error",
                                        pixelformat="yuv444p" if data.shape[1] % 2 or data.shape[2] % 2 else "yuv420p")
            try:
                for frame in data:
                    writer.append_data(frame)
            finally:
                writer.close()
        else:
            from PIL import Image

            images = [Image.fromarray(f) for f in data]
            kwargs = dict(save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0)
            if fmt == "webp":
                kwargs.update(lossless=False, quality=90)
            images[0].save(tmp, format=fmt.upper(), **kwargs)
    return Path(path)


def _write_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    from PIL import Image

    with atomic_write(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return Path(path)


def write_strip(frames: torch.Tensor, path: str | os.PathLike, title: str | Sequence[str] | None = None,
                columns: int | None = None, max_frame_size: int | None = MAX_FRAME_SIZE) -> Path:
    """Write every frame of frames [T,3,H,W] in [-1,1] as a PNG grid, each frame under its index
    ("t=0", ...), below an optional title (a list of chained prompts is joined with " » ").

    columns: frames a row; default all in one row up to 16 (and 4096 px), else the fewest even rows.
    Labels sit in light margins, so the frame pixels are the video's own; frames larger than
    ``max_frame_size`` are shown downscaled to it (None: full size; 16 photos of 1024 px: 17 MB)."""
    sheet = render_strip(to_uint8_frames(frames), title=title, columns=columns, max_frame_size=max_frame_size)
    return _write_png(sheet.image, path)


def write_contact_sheet(videos: torch.Tensor, path: str | os.PathLike, row_labels: Sequence[str] | None = None,
                        frame_step: int = 1, title: str | None = None, column_labels: Sequence[str] | None = None,
                        max_frame_size: int | None = MAX_FRAME_SIZE) -> Path:
    """Write videos [N,T,3,H,W] in [-1,1] as a PNG: one row per video under its label (e.g. its
    prompt), every ``frame_step``-th frame and the last, frame indices on top (or ``column_labels``;
    an empty list: none)."""
    if videos.ndim != 5:
        raise ValueError(f"expected videos [N,T,3,H,W], got {tuple(videos.shape)}")
    n, t = videos.shape[:2]
    data = to_uint8_frames(videos.reshape(n * t, *videos.shape[2:]))
    sheet = render_contact_sheet(data.reshape(n, t, *data.shape[1:]), row_labels=row_labels,
                                 frame_step=frame_step, title=title, column_labels=column_labels,
                                 max_frame_size=max_frame_size)
    return _write_png(sheet.image, path)


def write_grid_video(videos: torch.Tensor, path: str | os.PathLike, fps: float = 10.0) -> Path:
    """videos [N,T,3,H,W] -> one video whose frames tile the N videos side by side."""
    n, t, c, h, w = videos.shape
    tiled = videos.permute(1, 2, 3, 0, 4).reshape(t, c, h, n * w)
    return write_video(tiled, path, fps=fps)

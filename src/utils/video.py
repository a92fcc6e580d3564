"""Writing animations: mp4 / gif / webp videos, labelled PNG strips and contact sheets, always atomically
and checked: a file is renamed into place only once it decodes (``src.utils.io.atomic_write``).

The sheets' layout (labels in margins, never over a frame) is ``src.utils.contact_sheet``."""
from __future__ import annotations

import errno
import math
import os
import signal
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from src.utils.contact_sheet import MAX_FRAME_SIZE, render_contact_sheet, render_strip
from src.utils.errors import UserError
from src.utils.io import atomic_write, check_output_path

VIDEO_FORMATS = ("mp4", "gif", "webp")
#: frames per second any video may have: one frame every 100 s up to 1000 a second
FPS_RANGE = (0.01, 1000.0)
#: a GIF stores each frame's delay in 1/100 s: faster than 100 fps it cannot say
GIF_MAX_FPS = 100.0
MP4_CRF = 10  # libx264 quality (imageio's quality=8): near lossless for these small videos


def to_uint8_frames(frames: torch.Tensor) -> np.ndarray:
    """[T,3,H,W] float in [-1,1] -> [T,H,W,3] uint8."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected frames [T,3,H,W], got {tuple(frames.shape)}")
    x = ((frames.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def ffmpeg_exe() -> str | None:
    """The ffmpeg binary imageio-ffmpeg ships, or None where it is not installed."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # not installed, or no binary for this platform
        return None


def mp4_available() -> bool:
    """Whether mp4 can be written here (imageio's ffmpeg plugin and binary are installed)."""
    return ffmpeg_exe() is not None


def default_video_suffix() -> str:
    """'.mp4' where ffmpeg is available, else '.gif' (training logs must never fail on a codec)."""
    return ".mp4" if mp4_available() else ".gif"


def video_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """The container format: explicit ``fmt`` or the file extension; a clear error otherwise."""
    fmt = (fmt or Path(path).suffix.lstrip(".")).lower()
    if fmt not in VIDEO_FORMATS:
        raise UserError(f"unsupported video format '{fmt}' for {path}: use one of {', '.join(VIDEO_FORMATS)}")
    return fmt


def check_fps(fps, fmt: str) -> float:
    """``fps`` as a float, or a UserError when a video of ``fmt`` cannot play at that rate."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise UserError(f"fps must be a number, got {fps!r}") from None
    low, high = FPS_RANGE
    if fmt == "gif":
        high = GIF_MAX_FPS
    if not (math.isfinite(value) and low <= value <= high):
        why = " (a GIF stores frame delays in 1/100 s)" if fmt == "gif" and value > high else ""
        raise UserError(f"fps must be between {low:g} and {high:g} for a .{fmt} video{why}, got {fps}")
    return value


def _ffmpeg_failure(returncode: int, stderr: bytes) -> OSError:
    """The cause of a failed ffmpeg run as an OSError (a full disk, a file-size limit, ...)."""
    if returncode < 0:
        if -returncode == signal.SIGXFSZ:
            return OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        return OSError(errno.EIO, f"ffmpeg was killed by {signal.Signals(-returncode).name}")
    text = stderr.decode("utf-8", "replace")
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EIO):
        if os.strerror(code) in text:
            return OSError(code, os.strerror(code))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return OSError(errno.EIO, f"ffmpeg failed ({lines[-1] if lines else f'exit code {returncode}'})")


def _run_ffmpeg(args: list[str], data: bytes | None = None) -> bytes:
    """Run the bundled ffmpeg quietly; its stdout, or the OSError of its failure. Its own session:
    a terminal's Ctrl-C reaches only Python, which kills it on the way out."""
    stdin = {"input": data} if data is not None else {"stdin": subprocess.DEVNULL}
    proc = subprocess.run([ffmpeg_exe(), "-y", "-v", "error", *args], capture_output=True, start_new_session=True,
                          **stdin)
    if proc.returncode != 0:
        raise _ffmpeg_failure(proc.returncode, proc.stderr)
    return proc.stdout


def encode_mp4(data: np.ndarray, path: Path, fps: float) -> None:
    """Frames [T,H,W,3] uint8 -> H.264 mp4 at ``path`` (exact frame size; yuv444p for odd sizes)."""
    t, h, w, _ = data.shape
    pix_fmt = "yuv444p" if h % 2 or w % 2 else "yuv420p"
    _run_ffmpeg(["-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{w}x{h}", "-pix_fmt", "rgb24",
                 "-r", str(Fraction(fps).limit_denominator()), "-i", "-", "-an", "-vcodec", "libx264",
                 "-pix_fmt", pix_fmt, "-crf", str(MP4_CRF), str(path)], np.ascontiguousarray(data).tobytes())


def check_mp4(path: Path, frame_shape: tuple[int, int, int]) -> None:
    """Raise unless ``path``'s header reads and its first frame decodes to ``frame_shape`` [H,W,3]."""
    first = _run_ffmpeg(["-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
    if len(first) != int(np.prod(frame_shape)):
        raise ValueError(f"its first frame decodes to {len(first)} bytes, expected {int(np.prod(frame_shape))}")


def check_image(path: Path, size: tuple[int, int], frames: int = 1) -> None:
    """Raise unless ``path`` decodes (Pillow: a PNG's chunk checksums; the pixels of the first and the
    last frame) to images of ``size`` (width, height), at most ``frames`` of them (a GIF merges equal
    neighbours)."""
    from PIL import Image

    with Image.open(path) as im:
        if getattr(im, "n_frames", 1) == 1:
            im.verify()
    with Image.open(path) as im:
        im.load()
        n = getattr(im, "n_frames", 1)
        if n > 1:
            im.seek(n - 1)
            im.load()
        if im.size != tuple(size) or n > frames:
            raise ValueError(f"it decodes to {n} frame(s) of {im.size[0]}x{im.size[1]}, expected {frames} of "
                             f"{size[0]}x{size[1]}")


def write_video(frames: torch.Tensor, path: str | os.PathLike, fps: float = 10.0, fmt: str | None = None) -> Path:
    """Write frames [T,3,H,W] in [-1,1] as mp4 (H.264, the ffmpeg of imageio-ffmpeg), gif or webp
    (Pillow); renamed into place only once its first frame decodes (see ``atomic_write``)."""
    fmt = video_format(check_output_path(path, probe=False), fmt)
    fps = check_fps(fps, fmt)
    data = to_uint8_frames(frames)
    if fmt == "mp4" and not mp4_available():
        raise UserError(f"cannot write {path}: mp4 needs imageio-ffmpeg (pip install imageio-ffmpeg); or use .gif/.webp")
    t, h, w, _ = data.shape
    if fmt == "mp4":
        with atomic_write(path, verify=lambda tmp: check_mp4(tmp, (h, w, 3))) as tmp:
            encode_mp4(data, tmp, fps)
        return Path(path)
    from PIL import Image

    with atomic_write(path, verify=lambda tmp: check_image(tmp, (w, h), t)) as tmp:
        images = [Image.fromarray(f) for f in data]
        kwargs = dict(save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0)
        if fmt == "webp":
            kwargs.update(lossless=False, quality=90)
        images[0].save(tmp, format=fmt.upper(), **kwargs)
    return Path(path)


#: quality of a lossy WebP sheet: labels stay crisp, a sheet of 4 x 8 generator faces takes ~60 KB
WEBP_QUALITY = 80


def _write_png(image: np.ndarray, path: str | os.PathLike, colors: int | None = None) -> Path:
    """image [H,W,3] uint8 as an RGB PNG, or with ``colors`` (2..256) as a palette PNG of that many
    colours (median cut refined by k-means; a sheet of generator faces: about a quarter of the bytes).
    A path ending in .webp gets a lossy WebP (WEBP_QUALITY) instead, a third of a palette PNG."""
    from PIL import Image

    picture = Image.fromarray(image)
    if Path(path).suffix.lower() == ".webp":
        if colors is not None:
            raise UserError("a WebP sheet has no palette: give colors only for a PNG")
        with atomic_write(path, verify=lambda tmp: check_image(tmp, (image.shape[1], image.shape[0]))) as tmp:
            picture.save(tmp, format="WEBP", quality=WEBP_QUALITY, method=6)
        return Path(path)
    if colors is not None:
        if not 2 <= int(colors) <= 256:
            raise UserError(f"a palette PNG has 2 to 256 colours, not {colors}")
        picture = picture.quantize(int(colors), method=Image.Quantize.MEDIANCUT, kmeans=3)
    with atomic_write(path, verify=lambda tmp: check_image(tmp, (image.shape[1], image.shape[0]))) as tmp:
        picture.save(tmp, format="PNG", optimize=colors is not None)
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
                        max_frame_size: int | None = MAX_FRAME_SIZE, colors: int | None = None) -> Path:
    """Write videos [N,T,3,H,W] in [-1,1] as a PNG (or a WebP, for a path ending in .webp): one row
    per video under its label (e.g. its prompt), every ``frame_step``-th frame and the last, frame
    indices on top (or ``column_labels``; an empty list: none). ``colors``: a palette PNG of that
    many colours (None: RGB)."""
    if videos.ndim != 5:
        raise ValueError(f"expected videos [N,T,3,H,W], got {tuple(videos.shape)}")
    n, t = videos.shape[:2]
    data = to_uint8_frames(videos.reshape(n * t, *videos.shape[2:]))
    sheet = render_contact_sheet(data.reshape(n, t, *data.shape[1:]), row_labels=row_labels,
                                 frame_step=frame_step, title=title, column_labels=column_labels,
                                 max_frame_size=max_frame_size)
    return _write_png(sheet.image, path, colors=colors)


def write_grid_video(videos: torch.Tensor, path: str | os.PathLike, fps: float = 10.0) -> Path:
    """videos [N,T,3,H,W] -> one video whose frames tile the N videos side by side."""
    n, t, c, h, w = videos.shape
    tiled = videos.permute(1, 2, 3, 0, 4).reshape(t, c, h, n * w)
    return write_video(tiled, path, fps=fps)

"""Labelled sheets of frames (pure layout: uint8 arrays in, one uint8 image out; no torch).

A *strip* is every frame of one video in a grid, each frame with its index; a *contact sheet* is one
row per video under a caption, frame indices on top. Text is drawn only in light margins, never over
a frame, so the frame pixels in the sheet are exactly the input pixels. Text uses Pillow's built-in
font, scaled with the frame size so a 16 px and a 1024 px video read alike once fitted to a screen.
The writers (tensors in, atomic PNG out) are ``write_strip`` / ``write_contact_sheet`` in
``src.utils.video``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

BACKGROUND = (246, 246, 246)  # the margins: light, so frames and dark text stand out
INK = (24, 24, 24)            # title and captions
LABEL_INK = (90, 90, 90)      # frame indices: quieter than the title
MAX_COLUMNS = 16              # frames per row of a strip, at most ...
MAX_ROW_PIXELS = 4096         # ... and at most this many frame pixels per row (512 px frames: 8 a row)
MAX_FRAME_SIZE = 512          # larger frames are shown downscaled to this (16 photos of 1024 px: 17 -> 6 MB)
CHAIN = " \u00bb "            # " » " between chained prompts (the built-in font has no arrow)


@dataclass(frozen=True)
class Metrics:
    """Sizes in pixels for frames of ``frame`` px (the smaller side): all scale with it."""
    pad: int         # gap between frames and around the sheet
    label_size: int  # font size of frame indices and row captions
    title_size: int  # font size of the title
    inset: int       # space above and below a line of text inside its band
    band: int        # height of the band of frame indices above a row of frames


def sheet_metrics(frame_h: int, frame_w: int) -> Metrics:
    """Label text ~11% of the frame (at least the built-in font's 11 px), gaps ~3%, title 1.3x labels."""
    frame = min(frame_h, frame_w)
    label_size = max(11, round(0.11 * frame))
    title_size = max(12, round(1.3 * label_size))
    inset = max(2, label_size // 4)
    return Metrics(pad=max(2, round(0.03 * frame)), label_size=label_size, title_size=title_size,
                   inset=inset, band=_font(label_size).height + 2 * inset)


def strip_columns(num_frames: int, frame_w: int) -> int:
    """The default grid: all frames in one row up to 16 (and 4096 frame pixels) a row; beyond that the
    fewest rows under those limits, filled evenly (40 frames: 3 rows of 14, 14, 12; not 16, 16, 8)."""
    limit = max(1, min(MAX_COLUMNS, MAX_ROW_PIXELS // max(1, frame_w)))
    rows = math.ceil(num_frames / limit)
    return math.ceil(num_frames / rows)


def chain_title(title: str | Sequence[str] | None) -> str | None:
    """A title from one text or a list of chained prompts (joined with " » ")."""
    if title is None or isinstance(title, str):
        return title or None
    return CHAIN.join(str(t) for t in title) or None


class _Font:
    """Pillow's built-in font at ``size`` px: Aileron through FreeType (Pillow >= 10.1), else the fixed
    bitmap font drawn at the nearest whole multiple of its ~11 px (Pillow 10.0, or no FreeType)."""

    def __init__(self, size: int):
        from PIL import ImageFont

        try:
            self.font = ImageFont.load_default(size=size)
        except (TypeError, OSError, ImportError):
            self.font = ImageFont.load_default()
        self.freetype = isinstance(self.font, ImageFont.FreeTypeFont)
        if self.freetype:
            ascent, descent = self.font.getmetrics()
            self.scale, self._height = 1, ascent + descent
        else:
            self._height = self.font.getbbox("Ag|")[3]
            self.scale = max(1, round(size / max(1, self._height)))

    @property
    def height(self) -> int:
        return self._height * self.scale

    def width(self, text: str) -> int:
        return (self.font.getbbox(text)[2] if text else 0) * self.scale

    def draw(self, canvas, x: int, y: int, text: str, fill) -> None:
        from PIL import Image, ImageDraw

        if self.scale == 1:
            ImageDraw.Draw(canvas).text((x, y), text, font=self.font, fill=fill)
            return
        w = max(1, self.font.getbbox(text)[2])
        mask = Image.new("L", (w, self._height), 0)
        ImageDraw.Draw(mask).text((0, 0), text, font=self.font, fill=255)
        mask = mask.resize((w * self.scale, self.height), Image.NEAREST)
        canvas.paste(fill, (x, y, x + mask.width, y + mask.height), mask)


_FONTS: dict[int, _Font] = {}


def _font(size: int) -> _Font:
    if size not in _FONTS:
        _FONTS[size] = _Font(size)
    return _FONTS[size]


def _wrap(text: str, font: _Font, width: int) -> list[str]:
    """Greedy word wrap to ``width`` px (a word wider than that gets a line of its own)."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        words = paragraph.split()
        for i in range(len(words) - 1, 0, -1):  # "»" starts the next prompt: break before it, never after
            if words[i - 1] == CHAIN.strip():
                words[i - 1:i + 1] = [f"{words[i - 1]} {words[i]}"]
        for word in words:
            trial = f"{line} {word}" if line else word
            if line and font.width(trial) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


@dataclass
class Sheet:
    """A composed sheet: ``image`` [H,W,3] uint8; boxes are (top, left, height, width) in it."""
    image: np.ndarray
    frames: list[tuple[int, int, int, int]] = field(default_factory=list)  # one per frame, in order
    text: list[tuple[int, int, int, int]] = field(default_factory=list)    # bands that may hold text


def _frame_labels(indices: Sequence[int], font: _Font, frame_w: int) -> list[str]:
    """'t=3' where the widest such label fits above a frame with room to spare, else '3'."""
    long = [f"t={i}" for i in indices]
    return long if max(map(font.width, long), default=0) <= 0.8 * frame_w else [str(i) for i in indices]


def _compose(rows: list[np.ndarray], columns: int, m: Metrics, title: str | None,
             captions: Sequence[str | None], labels: list[Sequence[str] | None]) -> Sheet:
    """Stack, top to bottom: the title; per row its caption, its band of labels and its frames.

    rows[i] is [k<=columns, H, W, 3] uint8; labels[i] the k labels above row i (None: no band)."""
    from PIL import Image

    h, w = rows[0].shape[1:3]
    label_font, title_font = _font(m.label_size), _font(m.title_size)
    grid_w = columns * w + (columns + 1) * m.pad
    # text wraps to the grid, but to no fewer than ~24 characters (a 1-frame strip keeps a readable title)
    text_w = max(grid_w - 2 * m.pad, 12 * m.title_size)
    blocks: list[tuple[str, object]] = []  # ("text", (lines, font, ink)) | ("labels", list) | ("frames", array)
    if title:
        blocks.append(("text", (_wrap(title, title_font, text_w), title_font, INK)))
    for row, caption, row_labels in zip(rows, captions, labels):
        if caption:
            blocks.append(("text", (_wrap(caption, label_font, text_w), label_font, INK)))
        if row_labels is not None:
            blocks.append(("labels", row_labels))
        blocks.append(("frames", row))
    widest = max([b[1].width(line) for kind, b in blocks if kind == "text" for line in b[0]] or [0])
    canvas_w = max(grid_w, widest + 2 * m.pad)

    def block_h(kind: str, b) -> int:
        if kind == "text":
            return len(b[0]) * b[1].height + 2 * m.inset
        return m.band if kind == "labels" else h + m.pad

    canvas_h = m.pad + sum(block_h(k, b) for k, b in blocks)
    canvas = Image.new("RGB", (canvas_w, canvas_h), BACKGROUND)
    x0 = m.pad  # frames and text are left-aligned; a title wider than the grid widens the sheet to its right
    sheet = Sheet(image=np.empty(0))
    y = m.pad
    for kind, b in blocks:
        bh = block_h(kind, b)
        if kind == "text":
            lines, font, ink = b
            for i, line in enumerate(lines):
                font.draw(canvas, m.pad, y + m.inset + i * font.height, line, ink)
            sheet.text.append((y, 0, bh, canvas_w))
        elif kind == "labels":
            for j, text in enumerate(b):
                cx = x0 + j * (w + m.pad) + w // 2
                label_font.draw(canvas, cx - label_font.width(text) // 2, y + m.inset, text, LABEL_INK)
            sheet.text.append((y, 0, bh, canvas_w))
        else:
            for j, frame in enumerate(b):
                x = x0 + j * (w + m.pad)
                canvas.paste(Image.fromarray(np.ascontiguousarray(frame)), (x, y))
                sheet.frames.append((y, x, h, w))
        y += bh
    sheet.image = np.asarray(canvas)
    return sheet


def _check(frames: np.ndarray, ndim: int) -> None:
    if frames.ndim != ndim or frames.shape[-1] != 3 or frames.dtype != np.uint8 or 0 in frames.shape:
        raise ValueError(f"expected non-empty uint8 frames [..., H, W, 3] with {ndim} dims, got "
                         f"{frames.dtype} {tuple(frames.shape)}")


def fit_frames(frames: np.ndarray, max_size: int | None) -> np.ndarray:
    """Frames [..., H, W, 3] uint8 downscaled (Lanczos) so that neither side exceeds ``max_size``;
    unchanged when they fit or ``max_size`` is None."""
    h, w = frames.shape[-3:-1]
    if max_size is None or max(h, w) <= max_size:
        return frames
    from PIL import Image

    size = (max(1, round(w * max_size / max(h, w))), max(1, round(h * max_size / max(h, w))))
    flat = frames.reshape(-1, h, w, 3)
    out = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.LANCZOS)) for f in flat])
    return out.reshape(*frames.shape[:-3], size[1], size[0], 3)


def render_strip(frames: np.ndarray, title: str | Sequence[str] | None = None, columns: int | None = None,
                 max_frame_size: int | None = MAX_FRAME_SIZE) -> Sheet:
    """Every frame of one video [T,H,W,3] uint8 in a grid of ``columns`` a row (default
    ``strip_columns``), each under its index, below an optional title (a list: chained prompts).
    Frames larger than ``max_frame_size`` px are shown downscaled (None: always at full size)."""
    _check(frames, 4)
    frames = fit_frames(frames, max_frame_size)
    t, h, w = frames.shape[:3]
    columns = strip_columns(t, w) if columns is None else int(columns)
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    columns = min(columns, t)
    m = sheet_metrics(h, w)
    labels = _frame_labels(range(t), _font(m.label_size), w)
    starts = range(0, t, columns)
    return _compose([frames[s:s + columns] for s in starts], columns, m, chain_title(title),
                    [None] * len(starts), [labels[s:s + columns] for s in starts])


def sheet_frame_indices(num_frames: int, frame_step: int = 1) -> list[int]:
    """Every ``frame_step``-th frame from 0, and always the last (the end of the motion)."""
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    idx = list(range(0, num_frames, frame_step))
    return idx + [num_frames - 1] if idx[-1] != num_frames - 1 else idx


def render_contact_sheet(videos: np.ndarray, row_labels: Sequence[str] | None = None, frame_step: int = 1,
                         title: str | Sequence[str] | None = None, column_labels: Sequence[str] | None = None,
                         max_frame_size: int | None = MAX_FRAME_SIZE) -> Sheet:
    """One row per video [N,T,H,W,3] uint8 under its caption ``row_labels[i]``; on top, once, the frame
    indices (every ``frame_step``-th frame and the last), or ``column_labels`` (empty: no labels)."""
    _check(videos, 5)
    n, t = videos.shape[:2]
    if row_labels is not None and len(row_labels) != n:
        raise ValueError(f"{len(row_labels)} row labels for {n} videos")
    idx = sheet_frame_indices(t, frame_step)
    rows = [fit_frames(videos[i, idx], max_frame_size) for i in range(n)]
    h, w = rows[0].shape[1:3]
    m = sheet_metrics(h, w)
    if column_labels is None:
        column_labels = _frame_labels(idx, _font(m.label_size), w)
    elif len(column_labels) not in (0, len(idx)):
        raise ValueError(f"{len(column_labels)} column labels for {len(idx)} columns")
    top = list(column_labels) if any(column_labels) else None
    return _compose(rows, len(idx), m, chain_title(title), list(row_labels) if row_labels is not None else [None] * n,
                    [top] + [None] * (n - 1))

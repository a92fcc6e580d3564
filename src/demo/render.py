"""Inputs of the page -> outputs: the video (mp4), the labelled frame strip (PNG) and the per-frame
readings, through the inference pipeline ``src.pipeline.FaceAnimator`` loaded once.

    renderer = Renderer.load(settings)                 # the pipeline (and the oracle) once
    result = renderer.render(Request(prompt="The person is winking.", seed=3, frames=16))
    result.video, result.strip, result.clip, result.oracle, result.message

Bad input raises a UserError (one line, shown on the page) before any work where it can.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from src.demo.inputs import (PROJECTION_STEPS, SOURCES, Request, load_face_image, motion, named, prompt_text, seed_of,
                             upload, whole)
from src.demo.readings import Curve, clip_similarity, oracle_reach
from src.utils.errors import UserError

Progress = Callable[..., None]
#: the render folders kept (the page's server copies each result into its own cache when it is shown)
KEEP_RENDERS = 16
#: frames a row of the strip (16 frames: two rows, large enough to see on the page)
STRIP_COLUMNS = 8


@dataclass
class Result:
    video: Path
    strip: Path
    clip: Curve                       # CLIP similarity of every frame to every prompt (series: short_label)
    oracle: Optional[Curve]           # the oracle's reach per frame (None without an oracle)
    prompts: list[str]
    frames: int
    seconds: float
    notes: list[str] = field(default_factory=list)   # the pipeline's warnings, and what was not read

    @property
    def message(self) -> str:
        lines = [f"{self.frames} frames of {' » '.join(self.prompts)} in {self.seconds:.1f} s"]
        return "\n".join(lines + [f"Note: {n}" for n in self.notes])


@contextlib.contextmanager
def collect_notes() -> Iterator[list[str]]:
    """The messages of the project's warnings (logger ``lgfa``) raised inside."""
    notes: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            notes.append(record.getMessage())

    logger, handler = logging.getLogger("lgfa"), Collect(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield notes
    finally:
        logger.removeHandler(handler)


def load_demo_oracle(pipeline, setting: Optional[str], assets: str | Path, device: str):
    """The embedded domain's attribute oracle: ``auto`` takes assets/oracle_synthetic.safetensors for
    that domain (None elsewhere or without the file), a path that file, None none."""
    from src.embedded.oracle import load_oracle

    if setting == "auto":
        default = Path(assets) / "oracle_synthetic.safetensors"
        embedded = (pipeline.domain or {}).get("name") == "synthetic"
        setting = str(default) if embedded and default.is_file() else None
    return load_oracle(setting, device=device).eval() if setting else None


class Renderer:
    """The pipeline, the oracle and the page's limits; ``render`` and ``preview`` serve one request."""

    def __init__(self, pipeline, oracle=None, max_upload_bytes: int = 10 * 2**20):
        from src.utils.config import get_dotted

        self.pipeline = pipeline
        self.oracle = oracle
        self.max_upload_bytes = max_upload_bytes
        self.template = str(get_dotted(pipeline.domain, "prompts.template", "{}"))
        self.outputs = Path(tempfile.mkdtemp(prefix="lgfa-demo-"))
        self._count = 0

    @classmethod
    def load(cls, settings, assets: str | Path) -> "Renderer":
        """From the checked ``demo`` settings (``src.demo.settings.Settings``)."""
        from src.pipeline import FaceAnimator
        from src.utils.io import check_input_file

        pipeline = FaceAnimator.from_pretrained(check_input_file(settings.checkpoint, "demo.checkpoint="),
                                                device=settings.device)
        return cls(pipeline, load_demo_oracle(pipeline, "auto", assets, settings.device), settings.max_upload_bytes)

    @property
    def prompts(self) -> list[str]:
        """The prompts the animator was trained on (the domain's template applied to each concept)."""
        return list(self.pipeline.prompt_list)

    @property
    def concepts(self) -> list[str]:
        """The concepts of those prompts (the names the page shows)."""
        from src.utils.config import get_dotted

        return [str(c) for c in get_dotted(self.pipeline.domain, "prompts.concepts", []) or []]

    def close(self) -> None:
        shutil.rmtree(self.outputs, ignore_errors=True)

    # ------------------------------------------------------------------ faces
    def face(self, request: Request) -> torch.Tensor:
        """W+ [1,L,C] of the request's face: the face of a seed, a projected image, or a latent file."""
        if request.source not in SOURCES:
            raise UserError(f"The face comes from a seed, an image or a latent, not {request.source!r}")
        if request.source == "seed":
            return self.pipeline.face_latent(None, seed=seed_of(request.seed))
        path = upload(request.image if request.source == "image" else request.latent, request.source,
                      self.max_upload_bytes)
        if request.source == "latent":
            with named(path):
                return self.pipeline.face_latent(str(path))
        steps = whole(request.projection_steps, "Projection steps", *PROJECTION_STEPS[:2])
        image = load_face_image(path)
        return self.pipeline.face_latent(image, projection_steps=steps, progress=True)

    @torch.no_grad()
    def preview(self, request: Request) -> np.ndarray:
        """The face a request starts from, as an RGB uint8 image [H,W,3]: an uploaded image as it is (it
        is projected into the generator when the video is rendered), else the generator's face."""
        from src.utils.video import to_uint8_frames

        if request.source == "image":  # at the generator's size, as its projection sees it
            size = int(self.pipeline.generator.img_resolution)
            image = load_face_image(upload(request.image, "image", self.max_upload_bytes))
            image = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", align_corners=False,
                                  antialias=True)[0]
        else:
            with collect_notes():  # the render shows the latent's warning
                image = self.pipeline.render_image(self.face(request))[0]
        return to_uint8_frames(image[None].clamp(-1, 1))[0]

    # ------------------------------------------------------------------ render
    def render(self, request: Request, progress: Optional[Progress] = None) -> Result:
        """The video, strip and readings of a request; ``progress(fraction, desc=...)`` is told each stage."""
        from src.pipeline.text import prompt_segments

        progress = progress or (lambda *args, **kwargs: None)
        start = time.perf_counter()
        text = prompt_text(request.prompt, request.sequence)
        prompts = prompt_segments(text, self.template)
        self.pipeline.clip.encode_text(prompts)  # CLIP's own length check, before any work on the face
        move = motion(request)
        try:
            with collect_notes() as notes:
                progress(0.05, desc="reading the face")
                ws = self.face(request)
                progress(0.35, desc=f"animating {len(prompts)} motion{'s' * (len(prompts) > 1)}")
                with torch.no_grad():
                    video = self.pipeline(ws, text, frames=move["frames"], strength=move["strength"],
                                          decay=move["decay"], check_latent=False)
                progress(0.7, desc="writing the video and its strip")
                folder = self._folder()
                video_path, strip_path = self._write(video, folder, move["fps"], prompts)
                progress(0.85, desc="reading the frames")
                clip = clip_similarity(self.pipeline.clip, video, prompts, self.template)
                oracle = None
                if self.oracle is not None:
                    oracle, unread = oracle_reach(self.oracle, video, prompts)
                    notes.extend(f"the oracle reads the concepts' own prompts only, not '{p}'" for p in unread)
        except MemoryError:
            raise UserError("Out of memory: ask for fewer frames") from None
        except RuntimeError as e:
            if "out of memory" not in str(e):
                raise
            raise UserError("Out of GPU memory: ask for fewer frames") from None
        progress(1.0, desc="done")
        return Result(video_path, strip_path, clip, oracle, prompts, int(video.shape[0]),
                      time.perf_counter() - start, notes)

    def _folder(self) -> Path:
        self._count += 1
        folder = self.outputs / f"{self._count:06d}"
        folder.mkdir(parents=True)
        old = self.outputs / f"{self._count - KEEP_RENDERS:06d}"
        shutil.rmtree(old, ignore_errors=True)
        return folder

    @staticmethod
    def _write(video: torch.Tensor, folder: Path, fps: float, prompts: list[str]) -> tuple[Path, Path]:
        from src.utils.io import together
        from src.utils.video import write_strip, write_video

        with together():
            video_path = write_video(video, folder / "animation.mp4", fps=fps)
            strip_path = write_strip(video, folder / "animation.png", title=prompts if len(prompts) > 1 else prompts[0],
                                     columns=min(len(video), STRIP_COLUMNS))
        return video_path, strip_path

"""What a visitor of the page sends, checked before any work: the prompt, the face (a seed, an
uploaded image or an uploaded latent) and the motion values. Every problem is a UserError whose one
line reads well on the page (an upload is named by its file name, not by the server's temp path).
The pipeline's own checks (image decoding, latent shapes, CLIP's context) do the rest."""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from src.utils.errors import UserError

#: a prompt longer than this is refused before the tokenizer sees it (CLIP's own limit is tokens)
MAX_PROMPT_CHARS = 1000
#: an uploaded image larger than this (width x height) is refused before its pixels are decoded
MAX_IMAGE_PIXELS = 4096 * 4096
#: the latent files the pipeline reads (``FaceAnimator.face_latent``)
LATENT_SUFFIXES = (".npy", ".npz", ".pt", ".pth", ".safetensors")
#: where the face comes from: the page's choices
SOURCES = ("seed", "image", "latent")
SEED_RANGE = (0, 2**32 - 1)
STRENGTH_RANGE = (0.0, 10.0)
#: the most frames per motion a visitor may ask for (each costs a generator pass)
MAX_FRAMES = 48
#: optimisation steps of an uploaded image's projection: (fewest, most, default); about 1 s each on a CPU
PROJECTION_STEPS = (5, 300, 30)


@dataclass
class Request:
    """One press of the page's button: everything the render needs."""
    prompt: str = "The person is smiling."
    sequence: str = ""             # motions played after the prompt ("winking, then closing eyes")
    source: str = "seed"           # seed | image | latent
    seed: Any = 0
    image: Optional[str] = None    # the uploaded file's path
    latent: Optional[str] = None
    projection_steps: Any = PROJECTION_STEPS[2]
    frames: Any = 16               # frames per motion
    strength: Any = 1.0
    decay: str = "linear"
    fps: Any = 10


def prompt_text(prompt: Any, sequence: Any = "") -> str:
    """The sentence the pipeline plays: the prompt, followed by the motions of ``sequence`` when given
    ("The person is smiling." + "winking" -> "The person is smiling., then winking", which the
    pipeline's ``prompt_segments`` splits into two prompts of the domain's template)."""
    text = "" if prompt is None else str(prompt).strip()
    after = "" if sequence is None else str(sequence).strip(" ,;\n\t")
    if not text:
        raise UserError("Type a prompt, e.g. \"The person is smiling.\", or click one of the concepts")
    if after.lower().startswith("then "):
        after = after[5:].strip()
    full = f"{text}, then {after}" if after else text
    if len(full) > MAX_PROMPT_CHARS:
        raise UserError(f"The prompt is {len(full)} characters long; at most {MAX_PROMPT_CHARS} go "
                        "(a sentence or two)")
    return full


def number(value: Any, what: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise UserError(f"{what} must be a finite number, got {value!r}")
    return x


def whole(value: Any, what: str, low: int, high: int) -> int:
    x = number(value, what)
    if x != int(x) or not low <= x <= high:
        raise UserError(f"{what} must be a whole number in {low}..{high}, got {value!r}")
    return int(x)


def motion(request: Request) -> dict[str, Any]:
    """frames, strength, decay, fps of a request, each within what the pipeline and an mp4 take."""
    from src.networks.animator import DECAYS
    from src.utils.video import check_fps

    strength = number(request.strength, "Strength")
    if not STRENGTH_RANGE[0] < strength <= STRENGTH_RANGE[1]:
        raise UserError(f"Strength must be in (0, {STRENGTH_RANGE[1]:g}], got {request.strength!r}")
    if request.decay not in DECAYS:
        raise UserError(f"Decay must be one of {', '.join(DECAYS)}, got {request.decay!r}")
    return dict(frames=whole(request.frames, "Frames", 2, MAX_FRAMES), strength=strength,
                decay=request.decay, fps=check_fps(number(request.fps, "fps"), "mp4"))


def seed_of(value: Any) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError("Choose a seed: any whole number from 0 to 4294967295 draws a face")
    return whole(value, "The seed", *SEED_RANGE)


def upload(path: Any, kind: str, max_bytes: int) -> Path:
    """The uploaded file of ``kind`` (image | latent): a regular file of an accepted type and size."""
    from src.data.images import IMAGE_EXTENSIONS
    from src.utils.io import check_input_file

    if not path:
        raise UserError(f"Upload a face {kind} first, or choose another face source")
    p = Path(str(path))
    allowed = IMAGE_EXTENSIONS if kind == "image" else LATENT_SUFFIXES
    if p.suffix.lower() not in allowed:
        what = "an image" if kind == "image" else "a latent file"
        raise UserError(f"{p.name} is not {what}: upload one of {' '.join(allowed)}")
    with named(p):
        check_input_file(p, f"the {kind}")
        if not p.is_file():
            raise UserError(f"{p.name}: the upload is gone; upload it again")
        size = os.path.getsize(p)
    if size > max_bytes:
        raise UserError(f"{p.name} is {size / 2**20:.1f} MB; uploads are limited to {max_bytes / 2**20:g} MB")
    return p


def load_face_image(path: Path):
    """The uploaded image as a tensor [3,H,W] in [-1,1] (``src.data.images.load_image``: the header is
    read first, so a huge image is refused before its pixels are decoded)."""
    from src.data.images import load_image

    with named(path):
        return load_image(path, max_pixels=MAX_IMAGE_PIXELS)


@contextlib.contextmanager
def named(path: Path) -> Iterator[None]:
    """A UserError raised inside names ``path`` by its file name alone."""
    try:
        yield
    except UserError as e:
        raise UserError(str(e).replace(str(path), path.name)) from None

"""From what a user types to the prompts an animator plays: "The person is smiling, then winking"
is two motions, one after the other, each phrased as the domain's prompts are."""
from __future__ import annotations

import re
from typing import Sequence

from src.utils.errors import UserError

# ", then" / "then" / "and then" / "; then" between two motions
_THEN = re.compile(r"\s*[,;]?\s*\b(?:and\s+)?then\b[,\s]*", re.IGNORECASE)
# a motion that starts with one of these already has its subject ("then she winks")
_SUBJECTS = ("he ", "she ", "they ", "it ", "the ", "a ", "an ", "his ", "her ", "their ", "its ")


def prompt_segments(text: str | Sequence[str], template: str = "{}") -> list[str]:
    """The prompts of ``text``: a list is taken as given; a sentence is split at 'then' into motions.
    In a sequence, a motion typed without a subject ("winking") is phrased with the domain's
    ``template`` ("The person is {}." -> "The person is winking."); a single sentence stays as typed."""
    if isinstance(text, str):
        parts = [p.strip(" ,;") for p in _THEN.split(text.strip())]
        parts = [p for p in parts if p]
        prefix = template.split("{}")[0].strip().lower()
        if len(parts) > 1 and prefix:
            parts = [p if p.lower().startswith(prefix) or p.lower().startswith(_SUBJECTS)
                     else template.format(p.rstrip(".")) for p in parts]
    else:
        parts = [str(p).strip() for p in text]
    if not parts or any(not p for p in parts):
        raise UserError("text must be a non-empty prompt or a list of non-empty prompts")
    return parts

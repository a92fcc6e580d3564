"""The embedded vocabulary's training phrasings as the animator's training data reads them
(``data.phrasings=vocabulary``, resolved by the run before the data module is built)."""
from __future__ import annotations

from typing import Sequence

from src.embedded import vocabulary
from src.utils.errors import UserError

__all__ = ["PHRASING_SOURCES", "vocabulary_phrasings"]

PHRASING_SOURCES = ("vocabulary",)


def vocabulary_phrasings(source: str, concepts: Sequence[str]) -> dict[str, list[str]]:
    """{concept: its training phrasings} for ``data.phrasings=<source>`` (held-out paraphrases excluded)."""
    if source not in PHRASING_SOURCES:
        raise UserError(f"data.phrasings must be null or one of {', '.join(PHRASING_SOURCES)}, got '{source}'")
    missing = [c for c in concepts if c not in vocabulary.CONCEPT_NAMES]
    if missing:
        raise UserError(f"data.phrasings=vocabulary: the embedded vocabulary has no phrasings for "
                        f"{', '.join(missing)} (it covers the embedded domain's concepts)")
    return {c: list(vocabulary.get(c).phrasings) for c in concepts}

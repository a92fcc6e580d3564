"""The embedded vocabulary's sentences, built from src.embedded.wordings: every concept's training
phrasings and held-out paraphrases, and the training phrasings as the animator's training data reads
them (``data.phrasings=vocabulary``, resolved by the run before the data module is built)."""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence

from src.embedded.wordings import (
    FEATURE_TEMPLATES,
    HELDOUT_TEMPLATES,
    LOOK_TEMPLATES,
    STATE_TEMPLATES,
    TEMPLATE,
    WORDINGS,
)
from src.utils.errors import UserError

__all__ = ["PHRASING_SOURCES", "vocabulary_phrasings", "training_phrasings", "heldout_phrasings", "normalise"]

PHRASING_SOURCES = ("vocabulary",)


def normalise(text: str) -> str:
    """Lower case, punctuation and spacing as single spaces: two sentences with the same normal form
    differ only in case and punctuation."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def _article(text: str) -> str:
    return re.sub(r"\ba (?=[aeiouAEIOU])", "an ", text)


def heldout_phrasings(name: str) -> list[str]:
    """The held-out paraphrases of concept ``name`` (no training sees them), in a fixed order."""
    w = WORDINGS[name]
    return [t.format(term) for term in w.heldout_terms for t in HELDOUT_TEMPLATES] + list(w.heldout_extras)


@lru_cache(maxsize=1)
def _heldout_keys() -> frozenset[str]:
    return frozenset(normalise(s) for name in WORDINGS for s in heldout_phrasings(name))


def training_phrasings(name: str) -> list[str]:
    """The training phrasings of concept ``name``: "The person is {name}." first, then every term
    crossed with its templates, then the extras. Exact repeats are left out, and so is any sentence
    equal up to case and punctuation to a held-out paraphrase of any concept."""
    w = WORDINGS[name]
    items = [TEMPLATE.format(name)]
    items += [t.format(s) for s in w.states for t in STATE_TEMPLATES]
    items += [_article(t.format(s)) for s in w.looks for t in LOOK_TEMPLATES]
    items += [t.format(s) for s in w.features for t in FEATURE_TEMPLATES]
    items += w.extras
    held = _heldout_keys()
    return [s for s in dict.fromkeys(items) if normalise(s) not in held]


def vocabulary_phrasings(source: str, concepts: Sequence[str]) -> dict[str, list[str]]:
    """{concept: its training phrasings} for ``data.phrasings=<source>`` (held-out paraphrases excluded)."""
    if source not in PHRASING_SOURCES:
        raise UserError(f"data.phrasings must be null or one of {', '.join(PHRASING_SOURCES)}, got '{source}'")
    missing = [c for c in concepts if c not in WORDINGS]
    if missing:
        raise UserError(f"data.phrasings=vocabulary: the embedded vocabulary has no phrasings for "
                        f"{', '.join(missing)} (it covers the embedded domain's concepts)")
    return {c: training_phrasings(c) for c in concepts}

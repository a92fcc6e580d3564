"""Which sentences an evaluation animates each concept with (``evaluate.py phrasings=``).

* ``template``: the domain's own prompt, ``prompts.template`` filled with the concept (what the
  animator was trained on first);
* ``training`` / ``heldout``: the embedded vocabulary's training phrasings or its paraphrases that
  no training ever sees (``src.embedded.vocabulary``; the embedded domain only);
* a path to a JSON file ``{"concept": ["a sentence", ...], ...}``: your own phrasings, e.g. a
  held-out set of your own. Every evaluated concept must have at least one.

Faces take a concept's phrasings in turn (face i gets phrasing i mod n), so every phrasing is
animated on about faces / n faces.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

from src.utils.errors import UserError

__all__ = ["PHRASING_SETS", "resolve_phrasings"]

PHRASING_SETS = ("template", "training", "heldout")
MAX_PHRASINGS = 10_000
MAX_FILE_BYTES = 8 * 2**20


def resolve_phrasings(spec: str | None, domain: Mapping, concepts: Sequence[str]) -> dict[str, list[str]]:
    """{concept: [sentence, ...]} for every concept in ``concepts`` (see the module docstring)."""
    spec = "template" if spec in (None, "") else str(spec)
    if spec == "template":
        template = str(domain["prompts"]["template"])
        return {c: [template.format(c)] for c in concepts}
    if spec in ("training", "heldout"):
        if domain.get("name") != "synthetic":
            raise UserError(f"phrasings={spec} is the embedded vocabulary's; this animator's domain is "
                            f"'{domain.get('name')}': give a JSON file of phrasings instead")
        from src.embedded import vocabulary

        known = set(vocabulary.CONCEPT_NAMES)
        missing = [c for c in concepts if c not in known]
        if missing:
            raise UserError(f"no {spec} phrasings for {', '.join(missing)} in the embedded vocabulary")
        return {c: list(vocabulary.get(c).heldout if spec == "heldout" else vocabulary.get(c).phrasings)
                for c in concepts}
    return _from_file(Path(spec).expanduser(), concepts)


def _from_file(path: Path, concepts: Sequence[str]) -> dict[str, list[str]]:
    if not path.suffix.lower() == ".json":
        raise UserError(f"phrasings must be one of {', '.join(PHRASING_SETS)} or a .json file, got '{path}'")
    if not path.is_file():
        raise UserError(f"{path}: no such phrasings file" if not path.exists() else f"{path}: not a regular file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise UserError(f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB; a phrasings file is a few KB")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a JSON file of phrasings ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f'{path}: expected {{"concept": ["a sentence", ...]}}, got a JSON {type(data).__name__}')
    out: dict[str, list[str]] = {}
    total = 0
    for c in concepts:
        items = data.get(c)
        if items is None:
            raise UserError(f"{path}: no phrasings for concept '{c}' (the file has: {', '.join(map(str, data))})")
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, list) or not items or not all(isinstance(s, str) and s.strip() for s in items):
            raise UserError(f"{path}: '{c}' must map to a non-empty list of non-empty sentences")
        out[c] = [s.strip() for s in items]
        total += len(items)
    if total > MAX_PHRASINGS:
        raise UserError(f"{path}: {total} phrasings; at most {MAX_PHRASINGS}")
    return out

"""The embedded vocabulary's wordings: many training phrasings per concept, and held-out paraphrases
that no training phrasing repeats, even up to case and punctuation."""
from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

from src.embedded import vocabulary as V
from src.embedded.phrasings import heldout_phrasings, normalise, training_phrasings, vocabulary_phrasings
from src.embedded.wordings import WORDINGS

TRAIN = {c.name: c.phrasings for c in V.CONCEPTS}
HELD = {c.name: c.heldout for c in V.CONCEPTS}


def test_every_concept_is_worded_and_starts_with_the_paper_sentence():
    assert list(WORDINGS) == V.CONCEPT_NAMES
    for name, phrasings in TRAIN.items():
        assert phrasings[0] == f"The person is {name}." == V.prompt(name)
        assert phrasings == training_phrasings(name) and HELD[name] == heldout_phrasings(name)
    assert vocabulary_phrasings("vocabulary", ["smiling", "winking"]) == {c: TRAIN[c] for c in ("smiling", "winking")}


def test_at_least_forty_distinct_training_phrasings_per_concept():
    owner: dict[str, set[str]] = defaultdict(set)
    for name, phrasings in TRAIN.items():
        assert len(phrasings) >= 40, (name, len(phrasings))
        assert len(set(phrasings)) == len(phrasings), name
        assert all(s == s.strip() and s for s in phrasings), name
        for s in phrasings:
            if normalise(s):  # emoticons such as ";)" are punctuation only
                owner[normalise(s)].add(name)
    assert not {k: v for k, v in owner.items() if len(v) > 1}, "a wording shared by two concepts"


def test_heldout_paraphrases_are_never_training_phrasings():
    trained = {normalise(s) for phrasings in TRAIN.values() for s in phrasings}
    held = [s for sentences in HELD.values() for s in sentences]
    assert all(s == s.strip() and normalise(s) for s in held)
    assert len({normalise(s) for s in held}) == len(held), "held-out paraphrases repeat up to case/punctuation"
    assert not [s for s in held if normalise(s) in trained]
    assert all(len(sentences) >= 5 for sentences in HELD.values())


def test_heldout_terms_occur_in_no_training_phrasing():
    padded = [f" {normalise(s)} " for phrasings in TRAIN.values() for s in phrasings]
    for name, w in WORDINGS.items():
        for term in w.heldout_terms:
            assert not [p for p in padded if f" {normalise(term)} " in p], (name, term)


def test_a_wording_equal_to_a_heldout_one_up_to_case_and_punctuation_is_not_trained(monkeypatch):
    assert normalise("  The Person's  SMILING!! ") == "the person s smiling"
    w = WORDINGS["smiling"]
    clash = HELD["smiling"][-1].upper() + "!"
    monkeypatch.setitem(WORDINGS, "smiling", dataclasses.replace(w, extras=w.extras + (clash, "beams at us")))
    built = training_phrasings("smiling")
    assert "beams at us" in built and clash not in built


def test_adjectives_take_the_right_article():
    assert "an angry face" in TRAIN["angry"] and "an annoyed expression" in TRAIN["annoyed"]
    everything = [s for phrasings in TRAIN.values() for s in phrasings]
    assert not [s for s in everything if re.search(r"\ba an?\b", s, re.IGNORECASE)]

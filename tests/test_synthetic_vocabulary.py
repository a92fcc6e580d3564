"""Vocabulary: presets refer to real parameters, phrasings are distinct, held-out paraphrases unseen."""
from __future__ import annotations

import pytest
import torch

from src.embedded import PARAM_SPACE, neutral_params, sample_params, vocabulary as V
from src.utils.errors import UserError


def test_paper_concepts_are_covered_or_explained():
    assert len(V.PAPER_CONCEPTS) == 28
    for name in V.PAPER_CONCEPTS:
        assert (name in V.CONCEPT_NAMES) != (name in V.UNSUPPORTED), name
    for name, reason in V.UNSUPPORTED.items():
        assert len(reason) > 20
        with pytest.raises(UserError, match="cannot be rendered"):
            V.get(name)
    assert {c.name for c in V.CONCEPTS if c.paper} == set(V.PAPER_CONCEPTS) - set(V.UNSUPPORTED)


def test_presets_refer_to_real_params_within_range():
    for c in V.CONCEPTS:
        assert c.preset, c.name
        for name, value in c.preset.items():
            s = PARAM_SPACE.specs[PARAM_SPACE.idx(name)]
            assert s.kind == "expression" and s.low <= value <= s.high, (c.name, name)


def test_phrasings_distinct_and_heldout_disjoint():
    train = V.all_training_phrasings()
    held = V.all_heldout_phrasings()
    assert len(train) == len(set(train)) and len(held) == len(set(held))
    assert not set(train) & set(held)
    for c in V.CONCEPTS:
        assert len(c.phrasings) >= 4 and len(c.heldout) >= 2, c.name
        assert c.phrasings[0] == f"The person is {c.name}."
        assert V.prompt(c.name) == c.phrasings[0] == V.prompt(V.index(c.name))
    # presets are pairwise different, so every concept asks for a different motion
    keys = [tuple(sorted(c.preset.items())) for c in V.CONCEPTS]
    assert len(keys) == len(set(keys))


def test_get_accepts_names_sentences_and_indices():
    assert V.get("The person is smiling.").name == "smiling"
    assert V.get(" Winking ").name == "winking"
    assert V.get(0) is V.CONCEPTS[0]
    for bad in ("juggling", 999, -1, 1.5):
        with pytest.raises(UserError):
            V.get(bad)
    with pytest.raises(UserError):
        V.prompt("smiling", len(V.get("smiling").phrasings))


def test_apply_preset_interpolates_only_preset_params():
    base = neutral_params(sample_params(3, torch.Generator().manual_seed(0)))
    wink = V.apply_preset(base, "winking", 1.0)
    assert torch.all(wink[:, PARAM_SPACE.idx("eye_open_l")] == 0.0)
    assert torch.allclose(wink[:, PARAM_SPACE.idx("eye_open_r")], torch.tensor(0.75))
    untouched = [i for i, n in enumerate(PARAM_SPACE.names) if n not in V.get("winking").preset]
    assert torch.equal(wink[:, untouched], base[:, untouched])
    assert torch.equal(V.apply_preset(base, "smiling", 0.0), base)
    half = V.apply_preset(base, "smiling", 0.5)[:, PARAM_SPACE.idx("smile")]
    assert torch.allclose(half, 0.5 * base[:, PARAM_SPACE.idx("smile")] + 0.5 * 0.85)
    per_row = V.apply_preset(base, torch.tensor([0, 1, 2]), torch.tensor([1.0, 1.0, 0.0]))
    assert torch.equal(per_row[0], V.apply_preset(base[0], 0, 1.0))
    assert torch.equal(per_row[2], base[2])
    with pytest.raises(UserError):
        V.apply_preset(base, [0, 1], 1.0)


def test_captions():
    p = sample_params(6, torch.Generator().manual_seed(1))
    p[:, PARAM_SPACE.idx("glasses")] = torch.tensor([1.0, 0, 1, 0, 1, 0])
    assert V.caption(p, [0, 1, 2, 3, 4, -1])[:5] == [V.prompt(i) for i in range(5)]
    assert V.caption(p, [0] * 6, heldout=True)[0] == V.CONCEPTS[0].heldout[0]
    full = [V.identity_caption(r) for r in p]
    assert all(t.startswith("a person with ") for t in full)
    assert ["glasses" in t for t in full] == [True, False, True, False, True, False]
    a = V.caption(p, [5] * 6, torch.Generator().manual_seed(3), identity_prob=1.0)
    b = V.caption(p, [5] * 6, torch.Generator().manual_seed(3), identity_prob=1.0)
    assert a == b and all("A person" in t for t in a)
    assert all(any(ph.lower() in t.lower() for ph in V.CONCEPTS[5].phrasings) for t in a)

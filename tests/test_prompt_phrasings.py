"""data.phrasings: in training the animator reads other wordings of each concept; nothing else changes."""
from __future__ import annotations

import pytest
import torch

from src.data.prompts import PromptBatches, PromptDataModule, training_phrasings
from src.embedded import vocabulary
from src.embedded.phrasings import vocabulary_phrasings
from src.utils.errors import UserError
from tests.test_train import tiny_overrides  # noqa: F401  (the tiny-model fixture)

PROMPTS = {"template": "The person is {}.", "concepts": ["smiling", "angry", "winking"]}
WORDS = vocabulary_phrasings("vocabulary", PROMPTS["concepts"])


def test_phrasings_leave_every_other_draw_as_it_was():
    plain = PromptDataModule(PROMPTS, batch_size=2, seed=3, train_batches=5).dataset("train")
    worded = PromptDataModule(PROMPTS, batch_size=2, seed=3, train_batches=5, phrasings=WORDS).dataset("train")
    for i in range(5):
        a, b = plain[i], worded[i]
        assert "input_caption" not in a
        assert a["caption"] == b["caption"] and a["candidates"] == b["candidates"]
        assert torch.equal(a["concept"], b["concept"]) and torch.equal(a["seed"], b["seed"])


def test_input_captions_are_phrasings_of_the_samples_concept_never_heldout_ones():
    dm = PromptDataModule(PROMPTS, batch_size=3, seed=1, train_batches=40, phrasings=WORDS)
    data = dm.dataset("train")
    heldout = set(vocabulary.all_heldout_phrasings())
    seen: dict[str, set] = {c: set() for c in PROMPTS["concepts"]}
    for i in range(len(data)):
        item = data[i]
        for concept, text in zip(item["concept"].tolist(), item["input_caption"]):
            name = PROMPTS["concepts"][concept]
            assert text in vocabulary.get(name).phrasings and text not in heldout
            seen[name].add(text)
    assert all(len(v) >= 4 for v in seen.values())  # the wordings vary
    assert data[7]["input_caption"] == dm.dataset("train")[7]["input_caption"]  # a function of (seed, index)
    assert "input_caption" not in dm.dataset("val")[0]  # validation reads the prompts


def test_ranks_split_the_input_captions_of_the_global_batch():
    whole = PromptBatches(["a {}", "b {}", "c {}"], 4, 3, 0, "train", phrasings=[["x"], ["y", "z"], ["w"]])
    parts = [PromptBatches(["a {}", "b {}", "c {}"], 2, 3, 0, "train", rank=r, world_size=2,
                           phrasings=[["x"], ["y", "z"], ["w"]])[1] for r in range(2)]
    assert parts[0]["input_caption"] + parts[1]["input_caption"] == whole.global_item(1)["input_caption"]


def test_bad_phrasing_settings_are_one_line():
    with pytest.raises(UserError, match="data.phrasings must be"):
        vocabulary_phrasings("synonyms", ["smiling"])
    with pytest.raises(UserError, match="no phrasings for dancing"):
        vocabulary_phrasings("vocabulary", ["smiling", "dancing"])
    with pytest.raises(UserError, match="no sentences for angry"):
        training_phrasings({"smiling": ["beaming"]}, ["smiling", "angry"], ["p1", "p2"])
    with pytest.raises(UserError, match="resolves"):
        training_phrasings("vocabulary", ["smiling"], ["p"])
    assert training_phrasings(None, ["smiling"], ["p"]) is None
    assert training_phrasings(WORDS, ["smiling"], ["The person is smiling."])[0][0] == "The person is smiling."


def test_a_run_with_phrasings_feeds_the_animator_the_wordings(tiny_overrides, tmp_path, monkeypatch):  # noqa: F811
    from src.systems.animator_objective import AnimatorObjective
    from tests.conftest import compose_train
    from train import train

    read = []
    real = AnimatorObjective._text_embedding
    monkeypatch.setattr(AnimatorObjective, "_text_embedding", lambda self, p: read.extend(p) or real(self, p))
    train(compose_train(tiny_overrides + ["data.phrasings=vocabulary", "test=false"], tmp_path))
    concepts = ["smiling", "angry", "winking"]
    allowed = {s for c in concepts for s in [f"The person is {c}.", *vocabulary.get(c).phrasings]}
    assert read and set(read) <= allowed
    assert set(read) - {f"The person is {c}." for c in concepts}  # not only the prompts

"""SyntheticDataModule: seed determinism, independent ranks/workers, distinct concepts, fixed val/test."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from src.embedded import NUM_PARAMS, render, vocabulary as V
from src.embedded.datamodule import (
    RenderIndexDataModule,
    SyntheticDataModule,
    SyntheticStream,
    derive_seed,
)
from src.utils.errors import UserError

KW = dict(resolution=24, batch_size=6, val_size=8, test_size=8)


def _first(dm: SyntheticDataModule) -> dict:
    return next(iter(dm.train_dataloader()))


def test_batch_layout_and_seed_determinism():
    b = _first(SyntheticDataModule(seed=1, **KW))
    assert b["image"].shape == (6, 3, 24, 24) and b["params"].shape == (6, NUM_PARAMS)
    assert b["concept"].dtype == torch.long and len(b["caption"]) == 6
    assert torch.equal(b["image"], render(b["params"], 24))
    again = _first(SyntheticDataModule(seed=1, **KW))
    assert torch.equal(b["params"], again["params"]) and b["caption"] == again["caption"]
    other = _first(SyntheticDataModule(seed=2, **KW))
    assert not torch.equal(b["params"], other["params"])


def test_ranks_get_different_streams():
    r0 = _first(SyntheticDataModule(seed=1, rank=0, world_size=2, **KW))
    r1 = _first(SyntheticDataModule(seed=1, rank=1, world_size=2, **KW))
    assert not torch.equal(r0["params"], r1["params"])


def test_workers_get_different_streams():
    dm = SyntheticDataModule(seed=3, **{**KW, "num_workers": 2})
    it = iter(dm.train_dataloader())
    b0, b1 = next(it), next(it)  # round robin: worker 0 then worker 1
    assert not torch.equal(b0["params"], b1["params"])
    g = torch.Generator().manual_seed(derive_seed(3, "train", 0, 1, 1, 2, 0))
    assert torch.equal(b1["params"], dm.maker(g)["params"])
    stream = SyntheticStream(dm.maker, 3)
    s = iter(stream)
    first, second = next(s), next(s)
    assert not torch.equal(first["params"], second["params"])


def test_animator_mode_distinct_concepts_and_neutral_inputs():
    dm = SyntheticDataModule(seed=0, mode="animator", **{**KW, "batch_size": 12})
    it = iter(dm.train_dataloader())
    for _ in range(3):
        b = next(it)
        assert len(set(b["concept"].tolist())) == 12 and (b["concept"] >= 0).all()
        for cap, c in zip(b["caption"], b["concept"].tolist()):
            assert cap in V.CONCEPTS[c].phrasings
        # inputs are neutral-ish; targets carry the preset
        i = V.PARAM_SPACE.idx("mouth_open")
        assert (b["params"][:, i] < 0.2).all()
        assert torch.equal(b["target_params"], V.apply_preset(b["params"], b["concept"], 1.0))
    with pytest.raises(UserError, match="distinct"):
        SyntheticDataModule(mode="animator", batch_size=len(V.CONCEPTS) + 1)
    small = SyntheticDataModule(mode="animator", concepts=["smiling", "winking"], **{**KW, "batch_size": 2})
    assert set(_first(small)["concept"].tolist()) == {V.index("smiling"), V.index("winking")}


def test_clip_mode_images_show_their_concept():
    dm = SyntheticDataModule(seed=5, mode="clip", neutral_prob=0.0, strength_range=(1.0, 1.0), **KW)
    b = _first(dm)
    for row, c in zip(b["params"], b["concept"].tolist()):
        for name, value in V.CONCEPTS[c].preset.items():
            assert abs(float(row[V.PARAM_SPACE.idx(name)]) - value) < 1e-5


def test_val_test_fixed_and_distinct():
    dm = SyntheticDataModule(seed=4, test_heldout=True, **KW)
    dm.setup("fit")
    v1 = list(dm.val_dataloader())
    v2 = list(SyntheticDataModule(seed=4, **KW).val_dataloader())
    assert [b["image"].shape[0] for b in v1] == [6, 2]
    assert all(torch.equal(a["params"], b["params"]) for a, b in zip(v1, v2))
    t = list(dm.test_dataloader())
    assert not torch.equal(t[0]["params"], v1[0]["params"])
    for cap, c in zip(t[0]["caption"] + t[1]["caption"], t[0]["concept"].tolist() + t[1]["concept"].tolist()):
        if c >= 0:  # held-out paraphrase of its own concept, never a training phrasing
            assert any(h.lower() in cap.lower() for h in V.CONCEPTS[c].heldout), cap
            assert not any(cap.endswith(ph) for ph in V.CONCEPTS[c].phrasings[:1]), cap


def test_bad_configuration():
    with pytest.raises(UserError):
        SyntheticDataModule(mode="video")
    with pytest.raises(UserError):
        SyntheticDataModule(device="cuda", num_workers=2)
    with pytest.raises(UserError):
        SyntheticDataModule(concepts=["smiling", "smiling"])
    with pytest.raises(UserError):
        SyntheticDataModule(strength_range=(0.8, 0.2))


def test_render_index_datamodule():
    dm = RenderIndexDataModule(val_batches=3, test_batches=2)
    it = iter(dm.train_dataloader())
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    assert list(dm.val_dataloader()) == [0, 1, 2] and list(dm.test_dataloader()) == [0, 1]
    assert isinstance(dm.val_dataloader(), DataLoader)

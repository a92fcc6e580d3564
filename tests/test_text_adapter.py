"""The text adapter: other wordings of a concept read as its prompt, the prompts themselves untouched."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from src.pipeline.text_adapter import TextAdapter, fit_text_adapter
from src.utils.errors import UserError
from tests.conftest import ROOT

ASSET = ROOT / "assets" / "animator_synthetic.safetensors"


def _toy(dim=16, concepts=4, per=30, seed=0):
    """Anchors [K, D]; phrasings scattered around a common distortion of each anchor."""
    g = torch.Generator().manual_seed(seed)
    anchors = F.normalize(torch.randn(concepts, dim, generator=g), dim=1)
    warp = torch.eye(dim) + 0.8 * torch.randn(dim, dim, generator=g) / dim ** 0.5
    labels = torch.arange(concepts).repeat_interleave(per)
    phrasings = F.normalize(anchors[labels] @ warp.t() + 0.3 * torch.randn(len(labels), dim, generator=g), dim=1)
    return anchors, phrasings, labels


def test_the_fit_keeps_the_prompts_and_pulls_each_phrasing_to_its_own():
    anchors, phrasings, labels = _toy()
    a = fit_text_adapter(phrasings, anchors[labels], anchors, ridge=0.01)
    assert a.dtype == torch.float32 and a.shape == (16, 16)
    assert (anchors @ a.t() - anchors).abs().max() < 1e-5  # the prompts keep their embeddings
    adapted = TextAdapter(16)
    adapted.weight.copy_(a)
    before = (phrasings * anchors[labels]).sum(1).mean()
    after = (adapted(phrasings) * anchors[labels]).sum(1).mean()
    assert after > before + 0.1
    right = lambda z: ((F.normalize(z, dim=1) @ anchors.t()).argmax(1) == labels).float().mean()  # noqa: E731
    assert right(adapted(phrasings)) >= right(phrasings)
    assert torch.equal(a, fit_text_adapter(phrasings, anchors[labels], anchors, ridge=0.01))  # deterministic
    # a stronger ridge stays closer to the identity
    strong = fit_text_adapter(phrasings, anchors[labels], anchors, ridge=100.0)
    assert (strong - torch.eye(16)).norm() < (a - torch.eye(16)).norm()


def test_the_identity_adapter_only_normalises():
    e = torch.randn(3, 8)
    assert torch.allclose(TextAdapter(8)(e), F.normalize(e, dim=1))


@pytest.mark.parametrize("bad", ["shape", "anchors", "empty", "ridge"])
def test_the_fit_refuses_what_it_cannot_fit(bad):
    anchors, phrasings, labels = _toy()
    args = dict(phrasings=phrasings, targets=anchors[labels], anchors=anchors, ridge=0.01)
    if bad == "shape":
        args["targets"] = anchors[labels][:, :8]
    elif bad == "anchors":
        args["anchors"] = anchors[:, :8]
    elif bad == "empty":
        args["phrasings"], args["targets"] = phrasings[:0], anchors[labels][:0]
    else:
        args["ridge"] = 0.0
    with pytest.raises(UserError):
        fit_text_adapter(**args)


@pytest.fixture(scope="module")
def pipe():
    from src.pipeline import FaceAnimator

    return FaceAnimator.from_pretrained(ASSET)


@pytest.fixture(scope="module")
def fitted(pipe):
    """An adapter fitted on a few training phrasings of each of the animator's concepts."""
    from src.embedded import vocabulary

    concepts = list(pipe.config["domain"]["prompts"]["concepts"])
    template = pipe.config["domain"]["prompts"]["template"]
    with torch.no_grad():
        anchors = pipe.clip.encode_text([template.format(c) for c in concepts]).float()
        texts, labels = [], []
        for k, c in enumerate(concepts):
            texts += vocabulary.get(c).phrasings[1:6]
            labels += [k] * 5
        emb = pipe.clip.encode_text(texts).float()
    return fit_text_adapter(emb, anchors[torch.tensor(labels)], anchors)


@pytest.mark.slow
def test_an_adapter_saved_in_the_file_moves_other_wordings_but_not_the_prompts(pipe, fitted, tmp_path):
    from src.pipeline import FaceAnimator

    pipe.set_text_adapter(fitted)
    try:
        out = pipe.save_pretrained(tmp_path / "animator.safetensors", relative_to=tmp_path)
    finally:
        pipe.set_text_adapter(None)
    loaded = FaceAnimator.from_pretrained(out)
    assert loaded.inference_cfg.text_adapter and torch.equal(loaded.text_adapter.weight, fitted)
    w = loaded.sample_latents(1, seed=4)
    kw = dict(num_frames=3, identity_projection=0.0)
    prompt = "The person is smiling."
    with_, without = (loaded.animate(w, [prompt], text_adapter=use, **kw)["ws"] for use in (None, False))
    assert (with_ - without).abs().max() < 1e-4  # a prompt of the animator: as before, to rounding
    wording = "a face lit up with joy"
    with_, without = (loaded.animate(w, [wording], text_adapter=use, **kw)["ws"] for use in (True, False))
    assert (with_ - without).abs().max() > 1e-2
    with pytest.raises(UserError, match="no text adapter"):
        pipe.animate(w, [prompt], text_adapter=True, **kw)
    with pytest.raises(UserError, match="text adapter of shape"):
        pipe.set_text_adapter(torch.eye(3))


@pytest.mark.slow
def test_a_file_with_a_misfit_adapter_is_one_line(pipe, tmp_path):
    from src.pipeline import FaceAnimator
    from src.pipeline.animator_file import write_animator_file

    config = dict(pipe.config)
    config["inference"] = {**config.get("inference", {}), "text_adapter": True}
    state = {**pipe.trainable_state_dict(), "text_adapter.weight": torch.eye(5)}
    bad = write_animator_file(tmp_path / "bad.safetensors", config, state, pipe.frozen_hashes)
    with pytest.raises(UserError, match="text_adapter.weight has shape"):
        FaceAnimator.from_pretrained(bad)
    config["inference"]["text_adapter"] = True
    lacking = write_animator_file(tmp_path / "lacking.safetensors", config, pipe.trainable_state_dict(), pipe.frozen_hashes)
    with pytest.raises(UserError, match="missing text_adapter.weight"):
        FaceAnimator.from_pretrained(lacking)


def _script(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "fit_text_adapter.py"), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_script_fits_from_a_file_of_phrasings_and_refuses_the_held_out_ones(pipe, tmp_path):
    concepts = list(pipe.config["domain"]["prompts"]["concepts"])
    phrasings = tmp_path / "mine.json"
    phrasings.write_text(json.dumps({c: [f"someone {c}", f"a face that is {c}!"] for c in concepts}))
    out = tmp_path / "adapted.safetensors"
    r = _script("--animator", ASSET, "--phrasings", phrasings, "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "with its text adapter" in r.stdout and "the prompts move by at most" in r.stdout
    from src.pipeline import FaceAnimator

    assert FaceAnimator.from_pretrained(out).text_adapter is not None
    r = _script("--animator", out, "--remove", cwd=tmp_path)
    assert r.returncode == 0 and FaceAnimator.from_pretrained(out).text_adapter is None
    for args in (["--phrasings", "heldout"], ["--phrasings", tmp_path / "none.json"], ["--ridge", "0"]):
        r = _script("--animator", ASSET, "--out", tmp_path / "x.safetensors", *args, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "x.safetensors").exists()

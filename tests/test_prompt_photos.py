"""data.clip_image=photo: prompt batches carry the real photo of each latent code, preprocessed as the
authors' training step sees it; data.clip_image=reconstruction keeps the batches as they are."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from src.data.photos import clip_photo
from src.data.prompts import PromptDataModule, split_latents
from src.utils.errors import UserError

SHARED_FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"  # read there, never copied
PROMPTS = {"template": "The person is {}.", "concepts": ["smiling", "angry", "winking", "crying", "pouting"]}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# (relative path, size w x h, mode): non-square both ways, odd crop offsets, up- and down-scaling
FACES = [("a.jpg", (300, 261), "RGB"), ("b.png", (181, 333), "RGB"), ("c.png", (100, 90), "L"),
         ("d.jpeg", (224, 224), "RGB"), ("sub/e.png", (225, 400), "RGB"), ("f.jpg", (257, 256), "RGB"),
         ("g.png", (64, 80), "RGB"), ("h.jpg", (330, 247), "RGB")]


def authors_photo(path, size: int = 224) -> torch.Tensor:
    """The authors' pipeline itself: CLIP's torchvision transform, then un-normalise and x * 2 - 1."""
    tf = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                    lambda im: im.convert("RGB"), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
    x = tf(Image.open(path))[None]
    for i in range(3):
        x[:, i] *= CLIP_STD[i]
        x[:, i] += CLIP_MEAN[i]
    return (2.0 * x - 1.0)[0]


def _face(path, size, mode, k):
    rng = np.random.default_rng(k)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 / w), (yy * 255 / h), np.full((h, w), 40 * k)], -1) + rng.normal(0, 25, (h, w, 3))
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    (im.convert(mode) if mode != "RGB" else im).save(path, quality=90)


@pytest.fixture
def folder(tmp_path):
    """Eight small faces and a dict latents file: code of face k is filled with k; one code has no image."""
    root = tmp_path / "faces"
    for k, (rel, size, mode) in enumerate(FACES):
        _face(root / rel, size, mode, k)
    (root / "notes.txt").write_text("not an image")
    names = ["a", "b.png", "c", "d", "sub/e.png", "f", "g", "h"]  # stem, file name or relative path
    codes = {n: torch.full((3, 4), float(k)) for k, n in enumerate(names)}
    codes["zz_no_image"] = torch.full((3, 4), -1.0)
    torch.save(codes, tmp_path / "codes.pt")
    return root, tmp_path / "codes.pt"


def _module(folder, **kw):
    root, codes = folder
    kw = dict(batch_size=2, seed=3, train_batches=6, latents=str(codes), clip_image="photo", photos=str(root)) | kw
    return PromptDataModule(PROMPTS, **kw)


def _face_of(ws: torch.Tensor) -> list[int]:
    return [int(w[0, 0]) for w in ws]


def test_pairing_and_the_authors_pixels(folder):
    root, _ = folder
    dm = _module(folder)
    rel = sorted(r for r, _, _ in FACES)
    assert dm.photo_paths == [str(root / r) for r in rel]  # sorted image order; the unmatched code is dropped
    assert _face_of(dm.latents) == [[r for r, _, _ in FACES].index(r) for r in rel]
    seen = set()
    for i in range(6):
        b = dm.dataset("train")[i]
        assert set(b) == {"caption", "concept", "seed", "candidates", "ws", "photo"}
        assert b["ws"].shape == (2, 3, 4) and b["photo"].shape == (2, 3, 224, 224) and b["photo"].dtype == torch.float32
        for k, photo in zip(_face_of(b["ws"]), b["photo"]):  # each photo is its own code's image
            torch.testing.assert_close(photo, authors_photo(root / FACES[k][0]), rtol=0, atol=1e-6)
            seen.add(k)
    assert seen <= {[r for r, _, _ in FACES].index(r) for r in split_latents(rel, "train")}


@pytest.mark.parametrize("size", [224, 96])
def test_preprocessing_matches_torchvision(folder, size):
    root, _ = folder
    files = [root / r for r, _, _ in FACES] + sorted((SHARED_FACES / "human").glob("*.jpg"))[:2]  # if present
    for f in files:
        ours = clip_photo(Image.open(f), size)
        assert ours.shape == (3, size, size) and ours.dtype == torch.float32
        torch.testing.assert_close(ours, authors_photo(f, size), rtol=0, atol=1e-6)
        assert ours.min() >= -1 and ours.max() <= 1


def test_photo_size_parameter(folder):
    b = _module(folder, photo_size=64).dataset("val")[0]
    assert b["photo"].shape == (2, 3, 64, 64)


def test_ranks_split_the_same_global_batch(folder):
    whole = _module(folder, batch_size=4)
    halves = _module(folder, batch_size=2)
    one = whole.dataset("train")
    ranks = [halves.dataset("train", r, 2) for r in range(2)]
    for i in range(4):
        a, parts = one[i], [ds[i] for ds in ranks]
        assert parts[0]["candidates"] == parts[1]["candidates"] == a["candidates"]
        for key in ("caption", "concept", "seed", "ws", "photo"):
            joined = parts[0][key] + parts[1][key] if key == "caption" else torch.cat([p[key] for p in parts])
            assert joined == a[key] if key == "caption" else torch.equal(joined, a[key]), key


def test_draws_are_those_of_the_reconstruction_batches(folder):
    """Same (seed, split, index) -> same captions, seeds and codes as clip_image=reconstruction on the
    paired bank; only the photo is added."""
    root, _ = folder
    photo = _module(folder, batch_size=3)
    torch.save(photo.latents.clone(), root.parent / "paired.pt")
    recon = PromptDataModule(PROMPTS, batch_size=3, seed=3, train_batches=6, latents=str(root.parent / "paired.pt"))
    for split in ("train", "val"):
        for i in range(4):
            a, b = photo.dataset(split)[i], recon.dataset(split)[i]
            assert a.pop("photo").shape[0] == 3
            assert a.keys() == b.keys() and all(a[k] == b[k] if isinstance(a[k], list) else torch.equal(a[k], b[k])
                                                for k in a)


def test_a_photo_that_breaks_mid_run_hands_its_sample_to_the_next_code(folder, caplog):
    root, _ = folder
    whole, halves = _module(folder, batch_size=4), _module(folder, batch_size=2)
    broken = whole.photo_paths[0]
    with open(broken, "wb") as f:
        f.write(b"\xff\xd8 not a jpeg any more")
    one, ranks = whole.dataset("train"), [halves.dataset("train", r, 2) for r in range(2)]
    moved = 0
    with caplog.at_level(logging.WARNING, logger="lgfa"):
        batches = [one[i] for i in range(4)]
    warned = [r.getMessage() for r in caplog.records if broken in r.getMessage()]
    assert len(warned) == 1 and "skipping an unreadable photo" in warned[0]  # once per process, not retried
    for i, a in enumerate(batches):
        _, picks = one._draw(i)
        expected = [1 if int(p) == 0 else int(p) for p in picks]  # bank code 0 -> the next one, code 1
        assert _face_of(a["ws"]) == [_face_of(whole.latents)[j] for j in expected]
        for j, photo in zip(expected, a["photo"]):
            torch.testing.assert_close(photo, authors_photo(whole.photo_paths[j]), rtol=0, atol=1e-6)
        moved += sum(int(p) == 0 for p in picks)
        parts = [ds[i] for ds in ranks]  # every rank skips the same file the same way
        assert torch.equal(torch.cat([p["ws"] for p in parts]), a["ws"])
        assert torch.equal(torch.cat([p["photo"] for p in parts]), a["photo"])
    assert moved > 0


def test_workers_load_the_photos(folder):
    dm = _module(folder, num_workers=2)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    got = list(loader)
    single = dm.dataset("train")
    order = list(iter(loader.sampler))
    for b, i in zip(got, order):
        assert torch.equal(b["photo"], single[i]["photo"]) and torch.equal(b["ws"], single[i]["ws"])


def test_reconstruction_ignores_the_photos_setting(folder, tmp_path):
    dm = PromptDataModule(PROMPTS, batch_size=2, latents=str(folder[1]), photos=str(tmp_path / "nowhere"))
    assert "photo" not in dm.dataset("train")[0] and dm.photo_paths is None


def _error(folder, tmp_path, case):
    root, codes = folder
    if case == "value":
        return dict(clip_image="crop")
    if case == "no latents":
        return dict(latents=None)
    if case == "no photos":
        return dict(photos=None)
    if case == "missing folder":
        return dict(photos=str(tmp_path / "missing"))
    if case == "plain tensor":
        torch.save(torch.zeros(8, 3, 4), tmp_path / "array.pt")
        return dict(latents=str(tmp_path / "array.pt"))
    if case == "no match":
        torch.save({"x1": torch.zeros(3, 4), "x2": torch.zeros(3, 4)}, tmp_path / "other.pt")
        return dict(latents=str(tmp_path / "other.pt"))
    if case == "no images":
        (tmp_path / "empty").mkdir()
        return dict(photos=str(tmp_path / "empty"))
    if case == "unreadable":
        for r, _, _ in FACES:
            (root / r).write_bytes(b"broken")
        return {}
    if case == "size":
        return dict(photo_size=0)
    raise AssertionError(case)


ERRORS = {
    "value": r"^data\.clip_image must be one of reconstruction, photo, got 'crop'$",
    "no latents": r"^data\.clip_image=photo needs data\.latents: ",
    "no photos": r"^data\.clip_image=photo needs data\.photos: ",
    "missing folder": r"^data\.photos: folder '.*missing' not found$",
    "plain tensor": r"array\.pt: data\.clip_image=photo needs latents keyed by image name .*one array of 8 codes",
    "no match": r"other\.pt: none of its 2 codes matches any of the 8 images under '.*faces' by file name or stem "
                r"\(e\.g\. code 'x1', image 'a\.jpg'\)$",
    "no images": r"^data\.photos: no image files \(.*\) under '.*empty'$",
    "unreadable": r"^none of the 8 photos paired with codes is readable \(first: .*a\.jpg: ",
    "size": r"^data\.photo_size must be >= 1, got 0$",
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line(folder, tmp_path, case):
    with pytest.raises(UserError, match=ERRORS[case]) as e:
        _module(folder, **_error(folder, tmp_path, case))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- reconstruction stays as it was
def _reference_global(prompts, size, seed, split, index, bank):
    """The reconstruction draws as the module docstring specifies them (prompt permutations, seeds, codes)."""
    g = torch.Generator().manual_seed((seed + {"train": 0, "val": 1_000_003, "test": 2_000_003}[split]) * 7919 + index)
    perms = [torch.randperm(len(prompts), generator=g)]
    while len(perms) * len(prompts) < size:
        perms.append(torch.randperm(len(prompts), generator=g))
    concept = torch.cat(perms)[:size]
    seeds = torch.randint(0, 2**31 - 1, (size,), generator=g)
    ws = bank[torch.randint(0, len(bank), (size,), generator=g)]
    return concept, seeds, ws


@pytest.mark.parametrize("world", [1, 2])
def test_reconstruction_batches_are_bit_identical(tmp_path, world):
    names = [f"face{k:02d}" for k in range(40)]
    codes = {n: torch.randn(3, 4, generator=torch.Generator().manual_seed(k)) for k, n in enumerate(names)}
    torch.save(codes, tmp_path / "codes.pt")
    prompts = [PROMPTS["template"].format(c) for c in PROMPTS["concepts"]]
    dm = PromptDataModule(PROMPTS, batch_size=4, seed=11, train_batches=5, latents=str(tmp_path / "codes.pt"))
    bank = torch.stack(list(codes.values()))
    for split in ("train", "test"):
        ranks = [dm.dataset(split, r, world) for r in range(world)]
        for i in range(5):
            concept, seeds, ws = _reference_global(prompts, 4 * world, 11, split, i, split_latents(bank, split))
            for r, ds in enumerate(ranks):
                b, sl = ds[i], slice(4 * r, 4 * r + 4)
                assert set(b) == {"caption", "concept", "seed", "candidates", "ws"}
                assert torch.equal(b["concept"], concept[sl]) and torch.equal(b["seed"], seeds[sl])
                assert torch.equal(b["ws"], ws[sl]) and b["caption"] == [prompts[int(c)] for c in concept[sl]]

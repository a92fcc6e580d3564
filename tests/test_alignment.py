"""FFHQ-style face alignment (src.data.alignment) on the shared CelebA-HQ / AFHQ samples."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from src.utils.errors import UserError

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"
needs_faces = pytest.mark.skipif(not (FACES / "human").is_dir(),
                                 reason=f"sample faces not found at {FACES} (clone the repo next to shared/)")
pytest.importorskip("dlib", reason="dlib not installed: pip install dlib-bin face_recognition_models")

from src.data import alignment as A  # noqa: E402
from src.data.images import load_pil, save_image  # noqa: E402


def _humans() -> list[Path]:
    return sorted((FACES / "human").glob("*.jpg"))


def _eyes(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return lm[36:42].mean(0), lm[42:48].mean(0)


@needs_faces
def test_every_human_sample_has_a_face():
    files = _humans()
    assert len(files) == 56
    found = 0
    for f in files:
        # detection at a reduced size is what alignment does for a 1024 photo anyway
        lm = A.detect_landmarks(load_pil(f), name=str(f))
        assert lm.shape == (68, 2)
        found += 1
    assert found == 56  # all 56 CelebA-HQ samples


def test_ffhq_quad_geometry():
    # a synthetic upright face: eyes at y=100 (x 80..120), mouth corners at y=140
    lm = np.zeros((68, 2))
    lm[36:42] = (80, 100)
    lm[42:48] = (120, 100)
    lm[48] = (90, 140)
    lm[54] = (110, 140)
    quad, qsize = A.ffhq_quad(lm)
    # x = eye_to_eye + turned eye_to_mouth = (40 + 40, 0); scaled to max(2*40, 1.8*40) = 80
    assert qsize == pytest.approx(160.0)
    c = np.array([100.0, 100.0 + 0.1 * 40])
    np.testing.assert_allclose(quad, [c + (-80, -80), c + (-80, 80), c + (80, 80), c + (80, -80)], atol=1e-9)
    # rotating the landmarks rotates the square the same way
    th = math.radians(25)
    R = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    quad_r, qsize_r = A.ffhq_quad(lm @ R.T)
    np.testing.assert_allclose(quad_r, quad @ R.T, atol=1e-9)
    assert qsize_r == pytest.approx(qsize)
    with pytest.raises(UserError):
        A.ffhq_quad(np.zeros((5, 2)))


@needs_faces
@pytest.mark.parametrize("size", [256, 64])
def test_align_output_size_and_canonical_eyes(size):
    f = _humans()[0]
    out = A.align_face(f, size=size)
    assert out.shape == (3, size, size) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1 and out.std() > 0.1
    if size >= 256:
        lm = A.detect_landmarks(out)
        el, er = _eyes(lm)
        # FFHQ geometry: eyes level, centred horizontally, a bit above the middle
        assert abs(el[1] - er[1]) < 0.02 * size
        assert abs((el[0] + er[0]) / 2 - size / 2) < 0.03 * size
        assert 0.35 * size < (el[1] + er[1]) / 2 < 0.55 * size


@needs_faces
def test_rotated_photo_is_levelled():
    # a tilted, off-centre photo on a larger canvas: the aligned face comes out upright
    face = load_pil(_humans()[3]).resize((384, 384), Image.LANCZOS)
    canvas = Image.new("RGB", (700, 560), (40, 90, 160))
    canvas.paste(face.rotate(20, resample=Image.BICUBIC, expand=False, fillcolor=(40, 90, 160)), (250, 120))
    out = A.align_face(canvas, size=256)
    el, er = _eyes(A.detect_landmarks(out))
    angle = math.degrees(math.atan2(er[1] - el[1], er[0] - el[0]))
    assert abs(angle) < 3.0, angle


@needs_faces
def test_largest_face_is_chosen():
    big = load_pil(_humans()[1]).resize((420, 420), Image.LANCZOS)
    small = load_pil(_humans()[2]).resize((210, 210), Image.LANCZOS)
    canvas = Image.new("RGB", (760, 460), (128, 128, 128))
    canvas.paste(small, (20, 120))
    canvas.paste(big, (320, 20))
    lm = A.detect_landmarks(canvas)
    assert lm[:, 0].min() > 320 and lm[:, 0].max() < 740  # the landmarks lie on the big face


def test_flat_gray_has_no_face():
    gray = torch.zeros(3, 256, 256)
    with pytest.raises(UserError, match="no face found"):
        A.align_face(gray, size=64, name="gray.png")


@needs_faces
def test_dog_has_no_human_face():
    dog = sorted((FACES / "dog").glob("*.jpg"))[0]
    with pytest.raises(UserError) as e:
        A.align_face(dog, size=64)
    assert str(e.value).startswith(f"{dog}: no face found")


def test_bad_size_and_input():
    with pytest.raises(UserError):
        A.align_face(torch.zeros(3, 32, 32), size=4)
    with pytest.raises(UserError):
        A.to_pil_rgb(np.zeros((8, 8), np.float32))


def test_missing_dlib_gives_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` raise ImportError
    with pytest.raises(UserError, match="pip install dlib-bin face_recognition_models"):
        A.import_dlib()
    monkeypatch.setattr(A.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="face_recognition_models is not installed"):
        A.dlib_model_path(A.LANDMARKS_68)


@needs_faces
def test_cli_file_folder_and_errors(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    load_pil(_humans()[5]).resize((512, 512)).save(src / "person.jpg")
    save_image(torch.zeros(3, 64, 64), src / "sub" / "gray.png")

    out = tmp_path / "one.png"
    assert A.main([str(src / "person.jpg"), str(out), "--size", "128"]) == 0
    assert Image.open(out).size == (128, 128)

    code = A.main([str(src / "sub" / "gray.png"), str(tmp_path / "g.png"), "--size", "64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "no face found" in err[-1]
    assert not (tmp_path / "g.png").exists()

    assert A.main([str(tmp_path / "missing.jpg"), str(tmp_path / "x.png")]) == 2
    assert "no such file" in capsys.readouterr().err

    # a folder: the good image is written, the failure is reported and the exit status is 2
    code = A.main([str(src), str(tmp_path / "out"), "--size", "64"])
    err = capsys.readouterr().err
    assert code == 2 and "gray.png: no face found" in err and "aligned 1 of 2" in err
    assert Image.open(tmp_path / "out" / "person.png").size == (64, 64)
    assert not (tmp_path / "out" / "sub" / "gray.png").exists()
    assert [p.name for p in tmp_path.rglob(".*")] == []  # no temp files left behind

"""scripts/concept_sheets.py: one labelled sheet per concept (faces x frames), its page, its errors."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from src.utils import contact_sheet as cs
from src.utils.video import to_uint8_frames
from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("concept_sheets", ROOT / "scripts" / "concept_sheets.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

PROMPT = "The person is smiling."


def videos(n: int, t: int, size: int) -> torch.Tensor:
    return torch.rand(n, t, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def expected_size(rows: int, columns: int, size: int) -> tuple[int, int]:
    """(height, width) of a sheet: the title, then per row its caption (and, over the first row only,
    the band of frame indices) and its frames, pad px between frames and around the grid."""
    m = cs.sheet_metrics(size, size)
    line = lambda px: cs._font(px).height + 2 * m.inset  # noqa: E731  a band of one line of text
    height = m.pad + line(m.title_size) + rows * (line(m.label_size) + size + m.pad) + m.band
    return height, columns * size + (columns + 1) * m.pad


def test_a_sheet_of_4_faces_by_8_frames_has_its_size_aligned_columns_and_labels(tmp_path):
    v = videos(4, 8, 64)
    seeds = [10000, 10001, 10002, 10003]
    path = tool.write_concept_sheet(v, tmp_path / "smiling.png", PROMPT, seeds, colors=None)
    with Image.open(path) as im:
        img = np.asarray(im.convert("RGB"))
    assert img.shape[:2] == expected_size(4, 8, 64)
    frames = to_uint8_frames(v.reshape(32, 3, 64, 64)).reshape(4, 8, 64, 64, 3)
    sheet = cs.render_contact_sheet(frames, row_labels=[f"face seed {s}" for s in seeds], title=PROMPT)
    np.testing.assert_array_equal(img, sheet.image)
    boxes = np.array(sheet.frames).reshape(4, 8, 4)  # (top, left, height, width) per row and column
    assert (boxes[:, :, 1] == boxes[0, :, 1]).all()     # every row's columns line up
    assert (boxes[:, :, 0] == boxes[:, :1, 0]).all() and (np.diff(boxes[:, 0, 0]) > 64).all()
    for r in range(4):
        for c in range(8):
            y, x, h, w = boxes[r, c]
            np.testing.assert_array_equal(img[y:y + h, x:x + w], frames[r, c])
    # text bands: the prompt, a caption per face, one band of indices, each with ink in it
    assert len(sheet.text) == 1 + 4 + 1
    for y, x, h, w in sheet.text:
        assert (img[y:y + h, x:x + w] != cs.BACKGROUND).any(axis=-1).sum() > 20
    band_y, _, band_h, _ = sheet.text[2]  # title, first caption, then the indices over the first row
    assert band_y + band_h == boxes[0, 0, 0]
    for c in range(8):  # a label over every column, inside the column
        x = boxes[0, c, 1]
        assert (img[band_y:band_y + band_h, x:x + 64] != cs.BACKGROUND).any(axis=-1).sum() > 5, f"column {c}"


def test_the_palette_png_keeps_the_layout_and_is_smaller(tmp_path):
    v = videos(2, 3, 48)
    rgb = tool.write_concept_sheet(v, tmp_path / "rgb.png", PROMPT, [1, 2], colors=None)
    palette = tool.write_concept_sheet(v, tmp_path / "p.png", PROMPT, [1, 2], colors=64)
    with Image.open(rgb) as a, Image.open(palette) as b:
        assert a.mode == "RGB" and b.mode == "P" and a.size == b.size
        assert len(b.getcolors()) <= 64
    assert palette.stat().st_size < rgb.stat().st_size
    with pytest.raises(ValueError, match="seeds"):
        tool.write_concept_sheet(v, tmp_path / "bad.png", PROMPT, [1], colors=None)
    assert not (tmp_path / "bad.png").exists()


def test_concept_names_take_underscores_and_unknown_ones_list_the_known():
    known = ["smiling", "closing eyes", "winking"]
    assert tool.pick_concepts(None, known) == known
    assert tool.pick_concepts(["closing_eyes", "Smiling", "closing eyes"], known) == ["closing eyes", "smiling"]
    assert tool.file_name("turning head left") == "turning_head_left.webp"
    assert tool.file_name("turning head left", "png") == "turning_head_left.png"
    with pytest.raises(tool.UserError, match="unknown concept 'frowning'.*closing_eyes"):
        tool.pick_concepts(["frowning"], known)


@pytest.mark.parametrize("args, message", [
    (["--concepts", "smilng"], "unknown concept 'smilng'"),
    (["--out", "README.md"], "README.md is not a folder"),
    (["--frames", "1"], "--frames must be >= 2"),
    (["--faces", "0"], "--faces must be >= 1"),
    (["--colors", "300"], "--colors must be"),
    (["--checkpoint", "no_such_animator.safetensors"], "not found"),
])
def test_bad_input_is_one_error_line_and_exit_2_before_any_work(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = [] if "--out" in args else ["--out", str(tmp_path / "sheets")]
    assert tool.main(args + out) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1 and captured.err.startswith("error: ") and message in captured.err
    assert not (tmp_path / "sheets").exists()


@pytest.mark.slow
def test_one_concept_one_face_two_frames_end_to_end(tmp_path, capsys):
    page = tmp_path / "concepts.md"
    out = tmp_path / "images"
    assert tool.main(["--concepts", "closing_eyes", "--faces", "1", "--frames", "2", "--identity-projection", "0",
                      "--out", str(out), "--page", str(page)]) == 0
    with Image.open(out / "closing_eyes.webp") as im:
        assert im.format == "WEBP" and (im.height, im.width) == expected_size(1, 2, 128)
    text = page.read_text()
    assert "## The person is closing eyes.\n" in text and "](images/closing_eyes.webp)" in text
    assert "[1/1] closing eyes" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["closing_eyes.webp"]  # no temporary left behind
    assert tool.main(["--concepts", "closing_eyes", "--faces", "1", "--frames", "2", "--identity-projection", "0",
                      "--out", str(out), "--format", "png", "--colors", "64"]) == 0
    with Image.open(out / "closing_eyes.png") as im:
        assert im.mode == "P" and (im.height, im.width) == expected_size(1, 2, 128)

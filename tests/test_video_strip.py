"""The labelled PNG strip of a video and the contact sheet: every frame, exact pixels, text only in margins."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from src.utils import contact_sheet as cs
from src.utils.errors import UserError
from src.utils.video import to_uint8_frames, write_contact_sheet, write_strip


def video(t: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(t, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def read(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im)


def assert_frames_exact(image: np.ndarray, frames: np.ndarray, boxes) -> None:
    assert len(boxes) == len(frames)
    for i, ((y, x, h, w), frame) in enumerate(zip(boxes, frames)):
        np.testing.assert_array_equal(image[y:y + h, x:x + w], frame, err_msg=f"frame {i}")


def test_strip_of_16_frames_is_one_row_of_16_exact_cells(tmp_path):
    v = video(16)
    path = write_strip(v, tmp_path / "s.png")
    img = read(path)
    m = cs.sheet_metrics(32, 32)
    assert img.shape == (m.pad + m.band + 32 + m.pad, 16 * 32 + 17 * m.pad, 3)
    y = m.pad + m.band  # frames sit under their band of indices, pad px apart
    boxes = [(y, m.pad + i * (32 + m.pad), 32, 32) for i in range(16)]
    assert_frames_exact(img, to_uint8_frames(v), boxes)


def test_labels_change_pixels_in_the_margin_bands_only():
    frames = to_uint8_frames(video(16))
    sheet = cs.render_strip(frames)
    img = sheet.image
    assert_frames_exact(img, frames, sheet.frames)
    outside = np.ones(img.shape[:2], bool)
    for y, x, h, w in sheet.frames + sheet.text:
        outside[y:y + h, x:x + w] = False
    assert (img[outside] == cs.BACKGROUND).all()  # gaps and borders: plain background
    (band_y, _, band_h, _), = sheet.text
    for i, (y, x, h, w) in enumerate(sheet.frames):  # each frame's own label, right above it
        assert band_y + band_h == y
        label = img[band_y:band_y + band_h, x:x + w]
        assert (label != cs.BACKGROUND).any(axis=-1).sum() > 5, f"no label above frame {i}"
    left = img[band_y:band_y + band_h, :sheet.frames[0][1]]
    assert (left == cs.BACKGROUND).all()


def test_a_title_adds_height_and_keeps_frames_exact(tmp_path):
    v = video(16)
    plain = read(write_strip(v, tmp_path / "a.png"))
    titled = read(write_strip(v, tmp_path / "b.png", title="The person is smiling."))
    assert titled.shape[1] == plain.shape[1] and titled.shape[0] > plain.shape[0]
    extra = titled.shape[0] - plain.shape[0]
    np.testing.assert_array_equal(titled[extra:], plain)  # the title is a band on top; the rest is unchanged
    assert (titled[:extra] != cs.BACKGROUND).any()


def test_chained_prompts_make_one_title_that_breaks_before_each_prompt():
    assert cs.chain_title(["The person is smiling.", "The person is angry."]) == \
        "The person is smiling. \u00bb The person is angry."
    assert cs.chain_title("smiling, then angry") == "smiling, then angry" and cs.chain_title(None) is None
    font = cs._font(14)
    lines = cs._wrap(cs.chain_title(["The person is smiling.", "The person is angry."]), font,
                     font.width("The person is smiling. \u00bb"))
    assert lines == ["The person is smiling.", "\u00bb The person is angry."]


def test_one_frame_and_forty_frames(tmp_path):
    m = cs.sheet_metrics(32, 32)
    one = video(1)
    img = read(write_strip(one, tmp_path / "one.png"))
    assert img.shape[:2] == (m.pad + m.band + 32 + m.pad, 32 + 2 * m.pad)
    assert_frames_exact(img, to_uint8_frames(one), [(m.pad + m.band, m.pad, 32, 32)])
    assert read(write_strip(one, tmp_path / "t.png", title="The person is smiling.")).shape[0] > img.shape[0]

    forty = video(40, seed=1)
    assert cs.strip_columns(40, 32) == 14  # 3 even rows (14, 14, 12), not 16, 16, 8
    img = read(write_strip(forty, tmp_path / "forty.png"))
    assert img.shape[:2] == (m.pad + 3 * (m.band + 32 + m.pad), 14 * 32 + 15 * m.pad)
    boxes = [(m.pad + (i // 14) * (m.band + 32 + m.pad) + m.band, m.pad + (i % 14) * (32 + m.pad), 32, 32)
             for i in range(40)]
    assert_frames_exact(img, to_uint8_frames(forty), boxes)
    img = read(write_strip(forty, tmp_path / "cols.png", columns=8))
    assert img.shape[:2] == (m.pad + 5 * (m.band + 32 + m.pad), 8 * 32 + 9 * m.pad)


def test_default_columns():
    assert [cs.strip_columns(t, 128) for t in (1, 8, 16, 17, 32, 33)] == [1, 8, 16, 9, 16, 11]
    assert cs.strip_columns(16, 512) == 8  # at most 4096 frame pixels a row


def test_labels_scale_with_the_frame_and_large_frames_are_shown_at_512(tmp_path):
    small, large = cs.sheet_metrics(128, 128), cs.sheet_metrics(512, 512)
    assert large.label_size >= 3.5 * small.label_size and large.band > 3 * small.band
    assert cs.sheet_metrics(16, 16).label_size >= 11  # never below the built-in font's own size
    v = torch.zeros(2, 3, 1024, 1024)
    v[:, 0] = 1  # red frames
    img = read(write_strip(v, tmp_path / "big.png"))
    assert img.shape[:2] == (large.pad + large.band + 512 + large.pad, 2 * 512 + 3 * large.pad)
    y = large.pad + large.band
    assert (img[y:y + 512, large.pad:large.pad + 512] == (255, 128, 128)).all()
    full = cs.render_strip(to_uint8_frames(v[:1]), max_frame_size=None).image
    assert full.shape[1] == 1024 + 2 * cs.sheet_metrics(1024, 1024).pad


def test_the_write_is_atomic(tmp_path, monkeypatch):
    path = write_strip(video(4), tmp_path / "out" / "s.png")
    assert sorted(p.name for p in path.parent.iterdir()) == ["s.png"]  # no temp file left behind
    before = path.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_strip(video(4), tmp_path / "out" / "new.png")
    with pytest.raises(OSError, match="disk full"):
        write_strip(video(5), path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["s.png"]  # no new file, no temp file
    assert path.read_bytes() == before  # the old strip is untouched


def test_deterministic(tmp_path):
    v = video(9)
    a = write_strip(v, tmp_path / "a.png", title=["x", "y"]).read_bytes()
    assert a == write_strip(v, tmp_path / "b.png", title=["x", "y"]).read_bytes()


def test_bitmap_font_fallback(monkeypatch):
    """Pillow 10.0 (no load_default(size=)) or no FreeType: the bitmap font, scaled by whole pixels."""
    from PIL import ImageFont

    original = ImageFont.load_default

    def old_load_default(*args, **kwargs):
        if args or kwargs:
            raise TypeError("load_default() takes 0 positional arguments")
        return ImageFont.load_default_imagefont() if hasattr(ImageFont, "load_default_imagefont") else original()

    monkeypatch.setattr(ImageFont, "load_default", old_load_default)
    monkeypatch.setattr(cs, "_FONTS", {})
    frames = to_uint8_frames(video(3, size=256))
    sheet = cs.render_strip(frames, title="The person is smiling.")
    if hasattr(ImageFont, "load_default_imagefont"):  # Pillow >= 10.1: the bitmap font really was used
        assert not cs._font(cs.sheet_metrics(256, 256).label_size).freetype
    assert_frames_exact(sheet.image, frames, sheet.frames)
    for y, x, h, w in sheet.text:
        assert (sheet.image[y:y + h, x:x + w] != cs.BACKGROUND).any()


def test_contact_sheet_rows_captions_and_indices(tmp_path):
    videos = torch.stack([video(16, seed=s) for s in range(3)])
    labels = ["The person is smiling.", "The person is angry.", "The person is winking."]
    img = read(write_contact_sheet(videos, tmp_path / "c.png", labels, frame_step=4))
    assert cs.sheet_frame_indices(16, 4) == [0, 4, 8, 12, 15]  # every 4th and the last
    sheet = cs.render_contact_sheet(np.stack([to_uint8_frames(v) for v in videos]), labels, frame_step=4)
    np.testing.assert_array_equal(img, sheet.image)
    m = cs.sheet_metrics(32, 32)
    assert img.shape[1] >= 5 * 32 + 6 * m.pad and len(sheet.frames) == 15
    for r in range(3):
        assert_frames_exact(img, to_uint8_frames(videos[r, [0, 4, 8, 12, 15]]), sheet.frames[5 * r:5 * r + 5])
    assert len(sheet.text) == 4  # a caption per row and one band of indices, above the first row
    caption0, indices = sheet.text[:2]
    assert caption0[0] < indices[0] < sheet.frames[0][0] == indices[0] + indices[2]
    assert [box[0] for box in sheet.frames[::5]] == sorted(box[0] for box in sheet.frames[::5])
    for y, x, h, w in sheet.text:
        assert (img[y:y + h, x:x + w] != cs.BACKGROUND).any()
    with pytest.raises(ValueError, match="row labels"):
        write_contact_sheet(videos, tmp_path / "bad.png", labels[:2])
    assert not (tmp_path / "bad.png").exists()


def test_a_webp_contact_sheet_is_lossy_close_and_has_no_palette(tmp_path):
    ramp = torch.linspace(-1, 1, 32)
    frame = torch.stack([ramp[None, :].expand(32, 32), ramp[:, None].expand(32, 32), -ramp[None, :].expand(32, 32)])
    videos = torch.stack([torch.stack([frame * (0.5 + 0.05 * t) * (1 - 2 * s) for t in range(8)]) for s in range(2)])
    labels = ["The person is smiling.", "The person is angry."]
    png = read(write_contact_sheet(videos, tmp_path / "c.png", labels))
    webp_path = write_contact_sheet(videos, tmp_path / "c.webp", labels)
    with Image.open(webp_path) as im:
        assert im.format == "WEBP"
    webp = read(webp_path)
    assert webp.shape == png.shape
    assert np.abs(webp.astype(int) - png.astype(int)).mean() < 8  # lossy, not another picture
    with pytest.raises(UserError, match="no palette"):
        write_contact_sheet(videos, tmp_path / "p.webp", labels, colors=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "c.webp"]


def test_contact_sheet_without_labels_is_a_plain_grid():
    videos = np.full((2, 3, 8, 8, 3), 7, np.uint8)
    sheet = cs.render_contact_sheet(videos, column_labels=[])
    m = cs.sheet_metrics(8, 8)
    assert sheet.image.shape[:2] == (m.pad + 2 * (8 + m.pad), 3 * 8 + 4 * m.pad) and not sheet.text

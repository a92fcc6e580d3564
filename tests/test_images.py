"""Safe image loading / atomic saving (src.data.images)."""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from src.data.images import load_image, resize_square, save_image, tensor_to_uint8
from src.utils.errors import UserError


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _gradient_rgb(w: int = 32, h: int = 24) -> Image.Image:
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None]
    a[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    a[..., 2] = 77
    return Image.fromarray(a)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _assert_one_line_error(exc: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: "), msg
    for w in words:
        assert w in msg.lower(), msg


def test_roundtrip_png_exact(tmp_path):
    im = _gradient_rgb()
    p = tmp_path / "a.png"
    im.save(p)
    t = load_image(p)
    assert t.shape == (3, 24, 32) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1
    assert np.array_equal(tensor_to_uint8(t), np.asarray(im))


def test_missing_and_folder(tmp_path):
    with pytest.raises(UserError) as e:
        load_image(tmp_path / "nope.png")
    _assert_one_line_error(e, tmp_path / "nope.png", "no such file")
    with pytest.raises(UserError) as e:
        load_image(tmp_path)
    _assert_one_line_error(e, tmp_path, "folder")


def test_corrupt_bytes(tmp_path):
    p = tmp_path / "noise.jpg"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(UserError) as e:
        load_image(p)
    _assert_one_line_error(e, p, "not an image")


def test_corrupted_png_data_fails_crc(tmp_path):
    data = bytearray(_png_bytes(_gradient_rgb()))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF  # flip a byte inside the compressed data: its CRC no longer matches
    p = tmp_path / "bad_crc.png"
    p.write_bytes(bytes(data))
    with pytest.raises(UserError) as e:
        load_image(p)
    _assert_one_line_error(e, p, "corrupt")


def test_truncated_png(tmp_path):
    data = _png_bytes(_gradient_rgb(64, 64))
    p = tmp_path / "trunc.png"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as e:
        load_image(p)
    _assert_one_line_error(e, p, "truncated")


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    _gradient_rgb(128, 128).save(buf, format="JPEG", quality=90)
    p = tmp_path / "trunc.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(UserError) as e:
        load_image(p)
    _assert_one_line_error(e, p, "truncated")


def test_text_file_renamed_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not an image\nsecond line\n")
    with pytest.raises(UserError) as e:
        load_image(p)
    _assert_one_line_error(e, p, "not an image")


def test_decompression_bomb_header(tmp_path):
    # a valid PNG signature + IHDR declaring 100000 x 100000 RGB, a tiny IDAT, IEND: the header
    # alone must get it refused (decoding would need 30 GB)
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _chunk(b"IEND", b""))
    p = tmp_path / "bomb.png"
    p.write_bytes(data)
    with pytest.raises(UserError) as e:
        load_image(p)
    _assert_one_line_error(e, p, "bomb")


def test_pixel_limit_is_ours(tmp_path):
    p = tmp_path / "big.png"
    _gradient_rgb(100, 100).save(p)
    with pytest.raises(UserError) as e:
        load_image(p, max_pixels=100 * 100 - 1)
    _assert_one_line_error(e, p, "too large", "10000")
    assert load_image(p, max_pixels=100 * 100).shape == (3, 100, 100)


def _mode_images() -> dict[str, tuple[Image.Image, str]]:
    rgb = _gradient_rgb()
    l_img = rgb.convert("L")
    la = Image.merge("LA", (l_img, Image.new("L", l_img.size, 128)))
    rgba = rgb.convert("RGBA")
    i16 = Image.fromarray(np.asarray(l_img).astype(np.uint16) * 257)  # uint16 -> "I;16"
    f32 = Image.fromarray(np.asarray(l_img).astype(np.float32) / 255.0)  # float32 -> "F"
    return {
        "L": (l_img, "png"), "LA": (la, "png"), "P": (rgb.convert("P"), "png"), "RGBA": (rgba, "png"),
        "CMYK": (rgb.convert("CMYK"), "jpg"), "I;16": (i16, "png"), "1": (l_img.convert("1"), "png"),
        "F": (f32, "tiff"), "CMYK-tiff": (rgb.convert("CMYK"), "tiff"),
    }


@pytest.mark.parametrize("mode", list(_mode_images()))
def test_odd_modes_load_as_rgb(tmp_path, mode):
    im, ext = _mode_images()[mode]
    p = tmp_path / f"m.{ext}"
    im.save(p)
    t = load_image(p)
    assert t.shape == (3, 24, 32) and t.dtype == torch.float32
    assert torch.isfinite(t).all() and t.min() >= -1 and t.max() <= 1
    grey_src = np.asarray(_gradient_rgb().convert("L")).astype(np.float64)
    if mode in ("L", "I;16", "F"):
        # greyscale of any depth keeps its 8-bit values, replicated on the 3 channels
        got = tensor_to_uint8(t).astype(np.float64)
        assert np.abs(got[..., 0] - grey_src).max() <= 1
        assert np.array_equal(got[..., 0], got[..., 2])
    if mode == "CMYK-tiff":
        assert np.abs(tensor_to_uint8(t).astype(int) - np.asarray(_gradient_rgb()).astype(int)).max() <= 2


def test_alpha_composited_on_background(tmp_path):
    a = np.zeros((8, 8, 4), np.uint8)
    a[..., 0] = 255      # red, ...
    a[:, :4, 3] = 0      # ... fully transparent on the left half, opaque on the right
    a[:, 4:, 3] = 255
    p = tmp_path / "alpha.png"
    Image.fromarray(a).save(p)
    white = load_image(p)
    black = load_image(p, background="black")
    assert torch.allclose(white[:, :, :4], torch.ones(3, 8, 4))
    assert torch.allclose(black[:, :, :4], -torch.ones(3, 8, 4))
    red = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1).expand(3, 8, 4)
    assert torch.allclose(white[:, :, 4:], red) and torch.allclose(black[:, :, 4:], red)
    with pytest.raises(UserError):
        load_image(p, background="grey")


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (6, 6), 0)
    im.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    im.paste(1, (3, 0, 6, 6))
    im.info["transparency"] = 0
    p = tmp_path / "ptrans.png"
    im.save(p, transparency=0)
    t = load_image(p)
    assert torch.allclose(t[:, :, :3], torch.ones(3, 6, 3))                       # transparent -> white
    assert torch.allclose(t[:, :, 3:], torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand(3, 6, 3))


def test_exif_orientation_applied(tmp_path):
    im = _gradient_rgb(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = tmp_path / "phone.jpg"
    im.save(p, exif=exif, quality=95)
    assert load_image(p).shape == (3, 40, 20)


def test_save_roundtrip_and_formats(tmp_path):
    t = load_image(_save_tmp(tmp_path))
    for ext in ("png", "jpg", "webp", "bmp", "tiff"):
        out = save_image(t, tmp_path / "out" / f"x.{ext}")
        back = load_image(out)
        assert back.shape == t.shape
        tol = 0 if ext in ("png", "bmp", "tiff") else 0.15
        assert (back - t).abs().mean() <= tol + 1e-6
    save_image(t.unsqueeze(0), tmp_path / "batched.png")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "batched.png").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    with pytest.raises(UserError):
        save_image(t, tmp_path / "x.gifx")
    with pytest.raises(UserError):
        save_image(torch.zeros(2, 3, 4, 4), tmp_path / "two.png")
    assert not (tmp_path / "two.png").exists()


def _save_tmp(tmp_path: Path) -> Path:
    p = tmp_path / "src.png"
    _gradient_rgb().save(p)
    return p


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "keep.png"
    good = torch.zeros(3, 8, 8)
    save_image(good, target)
    before = target.read_bytes()

    def broken_save(self, fp, format=None, **kw):
        Path(fp).write_bytes(b"\x89PNG partial")  # some bytes hit the disk, then the encoder dies
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(UserError) as e:
        save_image(torch.ones(3, 8, 8), target)
    assert "no space left" in str(e.value).lower()
    with pytest.raises(UserError):
        save_image(torch.ones(3, 8, 8), tmp_path / "new.png")
    assert target.read_bytes() == before                   # old file untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]  # no temp leftovers, no new file


def test_resize_square():
    x = torch.linspace(-1, 1, 3 * 30 * 50).view(3, 30, 50)
    y = resize_square(x, 16)
    assert y.shape == (3, 16, 16) and y.min() >= -1 and y.max() <= 1
    assert resize_square(x.unsqueeze(0).repeat(2, 1, 1, 1), 64).shape == (2, 3, 64, 64)
    sq = torch.rand(3, 20, 20) * 2 - 1
    assert torch.equal(resize_square(sq, 20), sq)

"""Image loading: odd modes, 16-bit, EXIF orientation, corrupt and truncated files."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from weakalign.data.images import CorruptImageError, load_image, to_tensor

from data_helpers import smooth_image


def _png16(path, arr: np.ndarray):
    """Write a 16-bit PNG (grey H x W or RGB H x W x 3, uint16) by hand."""
    h, w = arr.shape[:2]
    colour = 2 if arr.ndim == 3 else 0

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    path.write_bytes(png)
    return path


def test_rgb_and_grey_modes(tmp_path):
    rgb = smooth_image(1, 30, 40)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    out = load_image(tmp_path / "rgb.png")
    assert out.dtype == np.uint8 and out.shape == (30, 40, 3) and np.array_equal(out, rgb)

    grey = rgb[..., 0]
    Image.fromarray(grey, "L").save(tmp_path / "l.png")
    out = load_image(tmp_path / "l.png")
    assert out.shape == (30, 40, 3) and np.array_equal(out[..., 1], grey) and np.array_equal(out[..., 2], grey)

    Image.fromarray(grey).convert("1").save(tmp_path / "bw.png")
    out = load_image(tmp_path / "bw.png")
    assert set(np.unique(out)) <= {0, 255} and out.shape == (30, 40, 3)

    Image.fromarray(rgb).quantize(16).save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").shape == (30, 40, 3)


def test_rgba_composited_on_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 200
    a[0, 0, 3] = 255  # opaque red-ish pixel
    a[0, 1, 3] = 0  # fully transparent -> white
    a[0, 2, 3] = 128  # half
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert tuple(out[0, 1]) == (255, 255, 255)
    expect = np.rint(np.array([200, 0, 0]) * 128 / 255 + 255 * (1 - 128 / 255)).astype(int)
    assert tuple(out[0, 2]) == tuple(expect)
    la = Image.fromarray(a[..., [0, 3]], "LA")
    la.save(tmp_path / "la.png")
    assert tuple(load_image(tmp_path / "la.png")[0, 1]) == (255, 255, 255)
    # palette image with a transparent entry
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 0
    p.save(tmp_path / "pt.png", transparency=0)
    out = load_image(tmp_path / "pt.png")
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (10, 20, 30)


def test_cmyk_jpeg_and_tiff(tmp_path):
    rgb = smooth_image(2, 32, 32)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    cmyk.save(tmp_path / "c.jpg", quality=95)
    cmyk.save(tmp_path / "c.tif")
    for f in ("c.jpg", "c.tif"):
        assert Image.open(tmp_path / f).mode == "CMYK"
        out = load_image(tmp_path / f)
        assert out.shape == (32, 32, 3)
        assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 6, f


def test_16bit_png_scaled_to_8bit(tmp_path):
    g = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    _png16(tmp_path / "g16.png", g)
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_image(tmp_path / "g16.png")
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    # 16-bit RGB: Pillow decodes to 8 bits (high byte); must not wrap around or be black
    c = np.zeros((1, 2, 3), np.uint16)
    c[0, 0] = [65535, 32768, 0]
    c[0, 1] = [256, 512, 65280]
    _png16(tmp_path / "c16.png", c)
    out = load_image(tmp_path / "c16.png")
    assert out[0, 0].tolist() == [255, 128, 0] and out[0, 1].tolist() == [1, 2, 255]


def test_float_and_int32_modes(tmp_path):
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    f.save(tmp_path / "f.tif")
    assert load_image(tmp_path / "f.tif")[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation(tmp_path):
    rgb = smooth_image(3, 20, 50)  # landscape 50 x 20
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "o.jpg")
    assert out.shape == (50, 20, 3)
    raw = load_image(tmp_path / "o.jpg", exif_transpose=False)
    assert raw.shape == (20, 50, 3)
    assert np.abs(np.rot90(raw, k=-1).astype(int) - out.astype(int)).mean() < 1


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_raise_naming_the_file(tmp_path, fmt):
    p = tmp_path / f"t.{fmt.lower()}"
    Image.fromarray(smooth_image(4, 200, 200)).save(p, fmt)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImageError) as ei:
        load_image(p)
    assert str(p) in str(ei.value) and ei.value.path == str(p)
    assert isinstance(ei.value, ValueError)


def test_truncated_even_if_global_flag_set(tmp_path):
    p = tmp_path / "t.jpg"
    Image.fromarray(smooth_image(5, 200, 200)).save(p)
    p.write_bytes(p.read_bytes()[:3000])
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(CorruptImageError):
            load_image(p)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def test_package_does_not_set_load_truncated_images():
    import weakalign.data.audit  # noqa: F401
    import weakalign.data.datasets  # noqa: F401
    import weakalign.data.registry  # noqa: F401

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_garbage_empty_and_missing(tmp_path):
    (tmp_path / "g.jpg").write_bytes(b"this is not an image at all" * 10)
    (tmp_path / "e.png").write_bytes(b"")
    for name in ("g.jpg", "e.png"):
        with pytest.raises(CorruptImageError, match=name):
            load_image(tmp_path / name)
    # header fine, pixel data damaged (bytes flipped in the middle of the PNG stream)
    p = tmp_path / "d.png"
    Image.fromarray(smooth_image(6, 64, 64)).save(p)
    b = bytearray(p.read_bytes())
    for i in range(len(b) // 2, len(b) // 2 + 64):
        b[i] ^= 0xFF
    p.write_bytes(bytes(b))
    with pytest.raises(CorruptImageError, match="d.png"):
        load_image(p)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")


def test_to_tensor_resize():
    a = smooth_image(7, 30, 40)
    t = to_tensor(a)
    assert t.shape == (3, 30, 40) and t.dtype.is_floating_point and 0 <= t.min() and t.max() <= 1
    r = to_tensor(a, (15, 20))
    assert r.shape == (3, 15, 20)
    # align_corners=True: corner pixels are preserved exactly
    assert abs(float(r[0, 0, 0]) - a[0, 0, 0] / 255) < 1e-6
    assert abs(float(r[1, -1, -1]) - a[-1, -1, 1] / 255) < 1e-6

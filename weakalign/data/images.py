"""Image loading: one function, :func:`load_image`, for every dataset.

Returns ``numpy.uint8`` arrays of shape ``H x W x 3`` in RGB order. Conversions:

=====================  ======================================================================
mode on disk           result
=====================  ======================================================================
RGB                    as is
L / 1 (bilevel)        grey replicated to 3 channels (``1`` -> 0 / 255)
P (palette)            palette expanded; with a transparent entry it is treated as RGBA
RGBA / LA / PA / RGBa  **composited on a white background** (alpha blending, rounded), so a
                       transparent region does not become black
CMYK                   Pillow's CMYK -> RGB conversion (no ICC colour management); Adobe
                       "inverted" CMYK JPEGs are handled by Pillow's decoder
YCbCr / LAB / HSV      Pillow conversion to RGB
I;16 / I;16B / I;16L   16-bit grey: scaled to 8 bits as ``round(v / 257)`` (0 -> 0,
                       65535 -> 255), replicated to 3 channels
I (32-bit int)         Pillow opens 16-bit PNGs as ``I`` in some versions: values are taken
                       as 16-bit (clipped to 0..65535) and scaled like I;16
F (32-bit float)       values in [0, 1] are scaled by 255, otherwise clipped to 0..255
16-bit RGB PNG         Pillow decodes it to 8-bit RGB (most significant byte), kept as is
=====================  ======================================================================

EXIF orientation is applied by default (``exif_transpose=True``). Keypoint benchmarks load
with ``exif_transpose=False``: their annotations were made in MATLAB, whose ``imread`` ignores
the EXIF Orientation tag, so keypoints refer to the stored pixel grid.

Images larger than a pixel-count cap raise :class:`ImageTooLargeError` (a
:class:`CorruptImageError`) naming the file and its size. The cap is checked on the header
BEFORE any pixel is decoded (a 140 KB PNG can declare 12000 x 12000 pixels and take gigabytes
once decoded); Pillow's own decompression-bomb error becomes the same one-line error. The cap
is :data:`DEFAULT_MAX_PIXELS` (50 megapixels, e.g. 8660 x 5773), or the environment variable
``WEAKALIGN_MAX_IMAGE_PIXELS``, or :func:`set_max_pixels` / ``load_image(max_pixels=...)``
(``weakalign align --max-image-pixels N``).

Shape limits for alignment (:func:`check_alignable`, used by ``weakalign align``): an image
with a side shorter than :data:`MIN_ALIGN_SIDE` (16 px) is refused with
:class:`ImageShapeError` -- the network resizes every image to its input size (240 x 240), so a
1 x 1 or 8 x 300 image is mostly interpolation and any "alignment" of it is meaningless; an
aspect ratio above :data:`MAX_ALIGN_ASPECT` (10:1) only gives a warning, because it is squeezed
to a square (a strip of a panorama may still align, poorly).

Truncated or corrupt files raise :class:`CorruptImageError` (a ``ValueError``) naming the
file; a missing file raises ``FileNotFoundError``. Pillow's global
``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set by this package; if some other library has set
it, :func:`load_image` still decodes strictly (it switches the flag off for the duration of
the decode, under a lock) so a truncated file is never silently padded with grey.
"""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

_STRICT_LOCK = threading.Lock()

MAX_PIXELS_ENV = "WEAKALIGN_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 50_000_000
_max_pixels: int | None = None  # set_max_pixels(); None = environment variable or default


class CorruptImageError(ValueError):
    """An image file that cannot be decoded completely."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = str(reason)
        super().__init__(f"corrupt or truncated image {self.path}: {self.reason}")


class ImageTooLargeError(CorruptImageError):
    """An image with more pixels than the cap (checked before decoding)."""

    def __init__(self, path, size, limit, pixels: int | None = None):
        self.path, self.size, self.limit = str(path), size, int(limit)
        self.reason = "too large"
        if size is not None:
            what = f"{size[0]} x {size[1]} pixels ({size[0] * size[1]:,})"
        else:
            what = f"{pixels:,} pixels" if pixels else "too many pixels (decompression bomb)"
        ValueError.__init__(
            self, f"image {self.path} is too large to load: {what} > the cap of {self.limit:,} "
            f"pixels; use a smaller image or raise the cap (--max-image-pixels, ${MAX_PIXELS_ENV})")


MIN_ALIGN_SIDE = 16
MAX_ALIGN_ASPECT = 10.0


class ImageShapeError(ValueError):
    """An image too small to be aligned (see :func:`check_alignable`)."""


def check_alignable(path, shape, min_side: int = MIN_ALIGN_SIDE,
                    max_aspect: float = MAX_ALIGN_ASPECT) -> str | None:
    """Refuse (:class:`ImageShapeError`) an image of ``shape`` (H, W, ...) with a side below
    ``min_side``; return a warning (one line) if its aspect ratio exceeds ``max_aspect``, else
    None. See the module docstring for why."""
    h, w = int(shape[0]), int(shape[1])
    if min(h, w) < min_side:
        raise ImageShapeError(
            f"image {path} is too small to align: {w} x {h} pixels; each side must be at least "
            f"{min_side} pixels (every image is resized to the network's input size, so a "
            "smaller one carries almost no information); use a larger image")
    ratio = max(h, w) / min(h, w)
    if ratio > max_aspect:
        return (f"image {path} is {w} x {h} pixels, aspect ratio {ratio:.1f}:1 (over "
                f"{max_aspect:g}:1); it is squeezed to a square for the network, so the "
                "alignment may be poor; crop it closer to the object")
    return None


def set_max_pixels(n: int | None) -> None:
    """Process-wide pixel-count cap of :func:`load_image` (None: back to env / default)."""
    global _max_pixels
    if n is not None and (isinstance(n, bool) or int(n) != n or int(n) < 1):
        raise ValueError(f"the image pixel cap must be a positive integer, got {n!r}")
    _max_pixels = None if n is None else int(n)


def max_pixels() -> int:
    """The pixel-count cap in force (see the module docstring)."""
    if _max_pixels is not None:
        return _max_pixels
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f"${MAX_PIXELS_ENV} must be a positive integer, got {raw!r}")
        return value
    return DEFAULT_MAX_PIXELS


def _open_decoded(path, limit: int | None = None) -> Image.Image:
    limit = max_pixels() if limit is None else int(limit)
    try:
        with warnings.catch_warnings():
            # our own cap is checked right below, with a clearer message
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except FileNotFoundError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(path, None, limit, _bomb_pixels(exc)) from exc
    except UnidentifiedImageError as exc:
        raise CorruptImageError(path, "not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(path, exc) from exc
    w, h = img.size
    if w * h > limit:  # header only: nothing decoded yet
        img.close()
        raise ImageTooLargeError(path, (w, h), limit)
    try:
        with warnings.catch_warnings():
            # Pillow warns (instead of failing) on some damaged files; make that an error.
            warnings.simplefilter("error", UserWarning)
            if ImageFile.LOAD_TRUNCATED_IMAGES:
                with _STRICT_LOCK:
                    saved = ImageFile.LOAD_TRUNCATED_IMAGES
                    ImageFile.LOAD_TRUNCATED_IMAGES = False
                    try:
                        img.load()
                    finally:
                        ImageFile.LOAD_TRUNCATED_IMAGES = saved
            else:
                img.load()
    except Image.DecompressionBombError as exc:
        img.close()
        raise ImageTooLargeError(path, img.size, limit) from exc
    except (OSError, SyntaxError, ValueError, UserWarning, EOFError, IndexError) as exc:
        img.close()
        raise CorruptImageError(path, exc) from exc
    return img


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        return _to_rgb_array(img)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        out = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img)
        a = np.clip(a.astype(np.int64), 0, 65535)
        g = np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        finite = a[np.isfinite(a)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            a = a * 255.0
        g = np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode in ("L", "1"):
        g = np.asarray(img.convert("L"), dtype=np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    # CMYK, YCbCr, LAB, HSV, ... : Pillow's own conversion
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _bomb_pixels(exc) -> int:
    import re

    m = re.search(r"\((\d+) pixels\)", str(exc))
    return int(m.group(1)) if m else 0


def load_image(path: str | os.PathLike, *, exif_transpose: bool = True,
               max_pixels: int | None = None) -> np.ndarray:
    """Load ``path`` as a ``uint8`` RGB array ``H x W x 3`` (see the module docstring).
    ``max_pixels`` overrides the pixel-count cap for this call."""
    img = _open_decoded(path, max_pixels)
    try:
        if exif_transpose:
            try:
                transposed = ImageOps.exif_transpose(img)
            except (OSError, SyntaxError, ValueError, KeyError, TypeError) as exc:
                raise CorruptImageError(path, f"bad EXIF data ({exc})") from exc
            if transposed is not None and transposed is not img:
                img.close()
                img = transposed
        arr = _to_rgb_array(img)
    finally:
        img.close()
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise CorruptImageError(path, f"unexpected decoded shape {arr.shape}")
    arr = np.ascontiguousarray(arr)
    return arr if arr.flags.writeable else arr.copy()


def image_size(path) -> tuple[int, int]:
    """(height, width) of the stored pixel grid, from the header only (no EXIF rotation)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(path, exc) from exc
    return h, w


def to_tensor(arr: np.ndarray, resize: tuple[int, int] | None = None):
    """uint8 H x W x 3 -> float32 tensor 3 x H x W in [0, 1]; optional resize to (h, w).

    The resize is bilinear with ``align_corners=True`` and no antialiasing: the same result as
    the reference code's identity-affine ``grid_sample`` resize, and the convention of
    :mod:`weakalign.geometry` (pixel centres of the corners map onto each other).
    """
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(arr).permute(2, 0, 1).contiguous().float().div_(255.0)
    if resize is not None:
        h, w = int(resize[0]), int(resize[1])
        if (h, w) != tuple(t.shape[1:]):
            t = F.interpolate(t[None], size=(h, w), mode="bilinear",
                              align_corners=True)[0].clamp_(0.0, 1.0)
    return t

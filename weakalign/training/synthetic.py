"""Synthetic strong-supervision pairs (CNNGeometric, CVPR 2017), generated from single photos.

Procedure of the reference code (``SynthDataset`` + ``SynthPairTnf``), reproduced here:

1. the photo is resized (bilinear) to ``load_size`` = 480 x 640 (h x w), whatever its aspect;
2. it is padded **symmetrically** (mirror, edge pixel repeated) by ``padding_factor`` = 0.5 of
   its height/width on each side (implicitly: the sampling coordinates are mirrored instead,
   which gives the same bilinear samples without building the 4x larger padded image;
   ``tests/test_training_synthetic.py`` checks the equality against :func:`symmetric_pad`);
3. the *source* is the central crop sampled on the identity grid scaled by
   ``s = padding_factor * crop_factor`` (= 0.5 * 9/16) of the padded image's normalised frame;
   the *target* is sampled on the grid of the random transformation ``theta``, scaled the same
   way; both at the model's input size (240 x 240);
4. ``theta`` maps target to source coordinates (``docs/conventions.md``), so it is the ground
   truth the network must regress.

Random transformations (reference ranges, ``U`` uniform in [0, 1)):

* affine: ``alpha = (U - 1/2) 2 pi random_alpha`` (+-30 deg), four independent scales
  ``1 + (U - 1/2) 2 random_s`` (0.5..1.5), translations ``(U - 1/2) 2 random_t`` (+-0.5)::

      [s1 cos a, -s2 sin a, tx, s3 sin a, s4 cos a, ty]

* TPS: identity control points + ``(U - 1/2) 2 random_t_tps`` (+-0.4) on each of the 18 numbers.

Randomness never comes from a global generator: every transformation is a pure function of
``(seed, purpose, index, ...)`` through :func:`keyed_generator`, so data order, resuming and
distributed training cannot change which pair a sample is.
"""

from __future__ import annotations

import hashlib
import math

import torch

from ..geometry import normalized_grid, sampling_grid, tps_identity, warp_image
from .params import StrongData  # the generator's ranges and their defaults (train_strong.data), defined once


def keyed_seed(*keys) -> int:
    """A 63-bit seed derived from arbitrary printable keys (stable across runs and machines)."""
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def keyed_generator(*keys) -> torch.Generator:
    return torch.Generator().manual_seed(keyed_seed(*keys))


def random_affine(gen: torch.Generator, n: int = 1, random_t: float = StrongData.random_t, random_s: float = StrongData.random_s,
                  random_alpha: float = StrongData.random_alpha) -> torch.Tensor:
    """``n x 6`` random affine parameters with the reference's distribution (float32)."""
    u = torch.rand(n, 7, generator=gen, dtype=torch.float64)
    alpha = (u[:, 6] - 0.5) * 2 * math.pi * random_alpha
    s = 1 + (u[:, [0, 1, 3, 4]] - 0.5) * 2 * random_s
    c, si = torch.cos(alpha), torch.sin(alpha)
    theta = torch.stack(
        (s[:, 0] * c, -s[:, 1] * si, (u[:, 2] - 0.5) * 2 * random_t, s[:, 2] * si, s[:, 3] * c, (u[:, 5] - 0.5) * 2 * random_t),
        dim=1,
    )
    return theta.float()


def random_tps(gen: torch.Generator, n: int = 1, random_t_tps: float = StrongData.random_t_tps, grid_size: int = 3) -> torch.Tensor:
    """``n x 2g^2`` random TPS parameters: identity control points + uniform perturbation."""
    k = 2 * grid_size * grid_size
    u = torch.rand(n, k, generator=gen, dtype=torch.float64)
    return (tps_identity(n, grid_size, dtype=torch.float64) + (u - 0.5) * 2 * random_t_tps).float()


def generator_params(data) -> "StrongData":
    """``train_strong.data`` as :class:`~weakalign.training.params.StrongData` (a dict of some of
    its keys -- a test's or a script's -- is completed with the defaults)."""
    from ..config import typed

    if isinstance(data, StrongData):
        return data
    return typed(StrongData, {**StrongData().to_dict(), **dict(data)}, "train_strong.data")


def random_theta(kind: str, gen: torch.Generator, n: int, data, grid_size: int = 3) -> torch.Tensor:
    data = generator_params(data)
    if kind == "affine":
        return random_affine(gen, n, data.random_t, data.random_s, data.random_alpha)
    if kind == "tps":
        return random_tps(gen, n, data.random_t_tps, grid_size)
    raise ValueError(f"kind must be 'affine' or 'tps', got {kind!r}")


def symmetric_pad(image: torch.Tensor, padding_factor: float) -> torch.Tensor:
    """Mirror-pad ``... x H x W`` by ``int(H * f)`` rows and ``int(W * f)`` columns on each side;
    the edge row/column is repeated (numpy ``mode="symmetric"``), as in the reference."""
    h, w = image.shape[-2:]
    ph, pw = int(h * padding_factor), int(w * padding_factor)
    if ph > h or pw > w:
        raise ValueError(f"padding_factor {padding_factor} exceeds the image size")
    if pw:
        image = torch.cat((image[..., :pw].flip(-1), image, image[..., w - pw:].flip(-1)), dim=-1)
    if ph:
        image = torch.cat((image[..., :ph, :].flip(-2), image, image[..., h - ph:, :].flip(-2)), dim=-2)
    return image


def _mirror_coords(g: torch.Tensor, size: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised coordinates ``g`` of the padded axis (``size + 2 pad`` pixels) -> normalised
    coordinates of the unpadded axis that sample the same bilinear value, and an "inside the
    padded image" flag. Pixel ``-k`` of the padding is pixel ``k - 1`` of the image, so between
    pixel centres the value at ``x < 0`` is the image's at ``max(0, -1 - x)`` (and mirrored at
    the far end): the map is piecewise linear between integers, hence exact for bilinear
    sampling."""
    n = size + 2 * pad
    x = (g + 1) * (n - 1) / 2 - pad  # pixel coordinate in the unpadded image
    inside = (x >= -pad - 1e-4) & (x <= size - 1 + pad + 1e-4)
    x = torch.where(x < 0, (-1 - x).clamp(min=0), x)
    x = torch.where(x > size - 1, (2 * size - 1 - x).clamp(max=size - 1), x)
    return x * 2 / (size - 1) - 1, inside


def _sample_padded(image: torch.Tensor, grid: torch.Tensor, padding_factor: float) -> torch.Tensor:
    """``warp_image(symmetric_pad(image), grid)`` without building the padded image (falls back
    to building it when the grid leaves the padded image, where zeros are read)."""
    h, w = image.shape[-2:]
    ph, pw = int(h * padding_factor), int(w * padding_factor)
    gx, in_x = _mirror_coords(grid[..., 0], w, pw)
    gy, in_y = _mirror_coords(grid[..., 1], h, ph)
    if not bool((in_x & in_y).all()):
        return warp_image(symmetric_pad(image, padding_factor), grid)
    return warp_image(image, torch.stack((gx, gy), dim=-1))


def synth_pair(image: torch.Tensor, kind: str, theta: torch.Tensor | None, out_size, padding_factor: float, crop_factor: float,
               source: bool = True):
    """Source crop and warped target from an **unpadded** batch ``B x 3 x H x W`` (already at
    ``load_size``); the symmetric padding is applied implicitly (:func:`_sample_padded`).

    ``theta=None`` returns only the source (the identity crop); ``source=False`` skips it.
    Returns ``(source, target)`` (``None`` for the one not made), both ``B x 3 x out_h x out_w``
    in [0, 1].
    """
    h, w = int(out_size[0]), int(out_size[1])
    s = padding_factor * crop_factor
    b = image.shape[0]
    src = None
    if source:
        base = normalized_grid(h, w, b, image.dtype, image.device) * s
        src = _sample_padded(image, base, padding_factor).clamp_(0.0, 1.0)
    target = None
    if theta is not None:
        kw = {"theta_aff": theta} if kind == "affine" else {"theta_tps": theta}
        grid = sampling_grid(kind, h, w, **kw).to(image.dtype) * s
        target = _sample_padded(image, grid, padding_factor).clamp_(0.0, 1.0)
    return src, target


class SyntheticPairs(torch.utils.data.Dataset):
    """Synthetic pairs over an image list.

    Item ``i`` is pair ``i % pairs_per_image`` of photo ``i // pairs_per_image``. Its
    transformation is drawn from ``keyed_generator(seed, tag, kind, photo, pair[, epoch])``:
    ``epoch`` is included only for ``fresh_each_epoch=True`` (the reference's
    ``--random-sample``), set through :meth:`set_epoch`.

    Items: ``source_image``, ``target_image`` (3 x h x w in [0, 1]), ``theta`` (6 or 18),
    ``index``. With ``source_only=True`` only ``source_image`` (and ``index``) per photo; with
    ``target_only=True`` no ``source_image`` (the feature cache computes sources once per photo).

    With ``warp_on_device=True`` the item is only the decoded photo at ``load_size`` (``photo``,
    ``3 x H x W``), ``theta`` and ``index``: the crop and the warp are left to
    :func:`warp_batch`, which makes the pairs of a whole batch at once on the training device
    (a GPU when there is one), so data-loader workers only decode images. The pairs are the same
    as the per-item ones (``tests/test_training_synthetic.py``).
    """

    def __init__(self, paths: list[str], kind: str, data, out_size, seed: int, tag: str,
                 pairs_per_image: int = 1, fresh_each_epoch: bool = False, source_only: bool = False,
                 grid_size: int = 3, target_only: bool = False, warp_on_device: bool = False):
        self.paths = list(paths)
        self.kind, self.data, self.out_size = kind, generator_params(data), tuple(out_size)
        self.seed, self.tag = seed, tag
        self.pairs_per_image = 1 if source_only else int(pairs_per_image)
        self.fresh_each_epoch, self.source_only, self.target_only = fresh_each_epoch, source_only, target_only
        self.warp_on_device = bool(warp_on_device)
        if source_only and target_only:
            raise ValueError("source_only and target_only exclude each other")
        if warp_on_device and (source_only or target_only):
            raise ValueError("warp_on_device makes whole pairs; it excludes source_only / target_only")
        self.grid_size = grid_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.paths) * self.pairs_per_image

    def theta(self, idx: int) -> torch.Tensor:
        photo, pair = divmod(idx, self.pairs_per_image)
        keys = (self.seed, self.tag, self.kind, photo, pair) + ((self.epoch,) if self.fresh_each_epoch else ())
        return random_theta(self.kind, keyed_generator(*keys), 1, self.data, self.grid_size)[0]

    def load(self, photo: int) -> torch.Tensor:
        """The photo resized to ``load_size`` (``3 x H x W`` in [0, 1]; not padded). The last
        photo is kept, so the ``pairs_per_image`` consecutive pairs of one photo decode it once."""
        from ..data.images import load_image, to_tensor

        last = getattr(self, "_last", None)
        if last is not None and last[0] == photo:
            return last[1]
        image = to_tensor(load_image(self.paths[photo]), tuple(self.data.load_size))
        self._last = (photo, image)
        return image

    def __getitem__(self, idx: int) -> dict:
        photo = idx // self.pairs_per_image
        if self.warp_on_device:
            return {"photo": self.load(photo), "theta": self.theta(idx), "index": idx}
        image = self.load(photo)[None]
        theta = None if self.source_only else self.theta(idx)
        src, tgt = synth_pair(image, self.kind, None if theta is None else theta[None], self.out_size,
                              self.data.padding_factor, self.data.crop_factor, source=not self.target_only)
        item = {"index": idx} if self.target_only else {"source_image": src[0], "index": idx}
        if not self.source_only:
            item["target_image"] = tgt[0]
            item["theta"] = theta
        return item


def warp_batch(batch: dict, kind: str, out_size, padding_factor: float, crop_factor: float, device=None) -> dict:
    """Make the synthetic pairs of a collated ``warp_on_device`` batch on ``device``.

    ``batch["photo"]`` (``B x 3 x H x W`` at ``load_size``) and ``batch["theta"]`` are moved
    once (``non_blocking``: pinned memory from the loader makes the copy asynchronous on CUDA);
    returns ``{"source_image", "target_image", "theta"}`` on ``device``, equal to the items
    :class:`SyntheticPairs` makes one at a time on the CPU."""
    device = torch.device(device) if device is not None else batch["photo"].device
    photo = batch["photo"].to(device, non_blocking=True)
    theta = batch["theta"].to(device, non_blocking=True)
    src, tgt = synth_pair(photo, kind, theta, out_size, padding_factor, crop_factor)
    return {"source_image": src, "target_image": tgt, "theta": theta}

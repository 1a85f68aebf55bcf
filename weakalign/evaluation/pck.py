"""PCK: percentage of correct keypoints, with every protocol named.

Keypoints of the **target** image are transferred to the **source** image by the estimated
transformation and compared with the source annotations. A keypoint is correct when
``distance <= alpha * L``. Protocols differ in the reference length ``L``, the coordinate frame
in which keypoints are transferred and measured, and the averaging; a :class:`PCKProtocol`
names all three and is stored next to every number.

Reference lengths (``reference=``):

``"bbox"``
    ``max(w, h)`` of the bounding box of the source keypoints (PF-WILLOW protocol of the
    reference code, ``max(point_A.max - point_A.min)``). Transfer in the original images.
``"image_224"``
    the **PF-PASCAL protocol of the original code** (``pck_procedure='scnet'`` of
    ``PFPascalDataset``, ignacio-rocco/weakalign ``data/pf_dataset.py`` lines 143-154, and
    ignacio-rocco/ncnet ``lib/pf_dataset.py`` lines 101-112, which ``eval_pf_pascal.py`` line 50
    selects), in the original's order of operations:

    1. the 1-based keypoints of both images are rescaled per axis into a 224 x 224 frame,
       ``x' = x * 224 / w``, ``y' = y * 224 / h`` (no origin shift; padding stays -1);
    2. the target keypoints are transferred **in that frame**, i.e. normalised and
       de-normalised with image size 224 x 224 (``(x' - 1 - 111.5) / 111.5``);
    3. the distance to the rescaled source keypoints is compared with ``alpha * 224``.

    The transfer itself happens in the prediction step (:data:`FRAME_224`,
    :func:`weakalign.evaluation.transfer.transfer_keypoints` with ``frame=FRAME_224``), which
    stores the result in source pixels (``x = x' * w / 224``); :func:`normalized_errors` then
    rescales source and transferred points per axis into the frame and divides by 224.
    Transferring in the original images and only rescaling the errors (this module's protocol
    before issue 19) is a different protocol: keypoint errors differ by up to ~1 px in the
    224 frame, and it is not offered.
``"image"``
    the longer side of the source image, ``max(h, w)``. Transfer in the original images.
``"object_bbox"``
    ``max(w, h)`` of a given object box ``[x0, y0, x1, y1]`` in source pixels.

Averaging: ``"per_pair"`` (mean over a pair's keypoints, then over pairs: the paper's) or
``"per_keypoint"`` (all keypoints pooled).

Which keypoints count: a keypoint whose source or target **annotation** is -1 or NaN (padding,
missing annotation) is excluded, never counted; a pair with no such keypoint is excluded from
the per-pair mean and counted in ``pairs_without_keypoints``. A keypoint that is annotated but
whose **predicted** (transferred) position is not finite (NaN or inf: a failed model) counts as
**wrong** in every protocol: its normalised error is ``+inf``. :func:`nonfinite_predictions`
counts them, so that reports can warn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

REFERENCES = ("bbox", "image_224", "image", "object_bbox")
AVERAGING = ("per_pair", "per_keypoint")

#: (h, w) of the frame in which the PF-PASCAL protocol (``"image_224"``) transfers and measures.
FRAME_224 = (224, 224)
#: frame each reference transfers in; ``None`` = the original images.
TRANSFER_FRAMES = {"bbox": None, "image_224": FRAME_224, "image": None, "object_bbox": None}

_DESCRIPTIONS = {
    "bbox": "L = max side of source keypoint bbox",
    "image_224": "keypoints rescaled to 224x224 then transferred there (original PF-PASCAL procedure), L = 224",
    "image": "L = longer side of source image",
    "object_bbox": "L = max side of object box",
}


@dataclass(frozen=True)
class PCKProtocol:
    reference: str = "bbox"
    alphas: tuple[float, ...] = (0.1,)
    averaging: str = "per_pair"

    def __post_init__(self):
        if self.reference not in REFERENCES:
            raise ValueError(f"unknown PCK reference {self.reference!r}; expected one of {REFERENCES}")
        if self.averaging not in AVERAGING:
            raise ValueError(f"unknown PCK averaging {self.averaging!r}; expected one of {AVERAGING}")
        if not self.alphas or any(a <= 0 for a in self.alphas):
            raise ValueError(f"alphas must be positive, got {self.alphas}")
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))

    @property
    def transfer_frame(self) -> tuple[int, int] | None:
        """(h, w) of the frame the keypoints must be transferred in, ``None`` = original images."""
        return TRANSFER_FRAMES[self.reference]

    def describe(self) -> str:
        ref = _DESCRIPTIONS[self.reference]
        return f"PCK@{','.join(f'{a:g}' for a in self.alphas)}; {ref}; averaged {self.averaging.replace('_', ' ')}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["alphas"] = list(self.alphas)
        d["description"] = self.describe()
        return d


def valid_keypoints(source_points: torch.Tensor, target_points: torch.Tensor) -> torch.Tensor:
    """``B x N`` mask of keypoints annotated in both images (not -1, not NaN)."""
    def ok(p):
        return torch.isfinite(p).all(1) & (p != -1).all(1)
    return ok(source_points) & ok(target_points)


def _wh(size, frame, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``B x 2 x 1`` (w, h) of images of ``size`` ((h, w) or ``B x 2``) and of ``frame``."""
    s = torch.as_tensor(size, dtype=like.dtype, device=like.device)
    s = s.reshape(1, 2).expand(like.shape[0], 2) if s.dim() == 1 else s.reshape(like.shape[0], 2)
    f = torch.tensor((float(frame[1]), float(frame[0])), dtype=like.dtype, device=like.device)
    return s.flip(1).unsqueeze(-1), f.reshape(1, 2, 1)


def rescale(points: torch.Tensor, size, frame=FRAME_224) -> torch.Tensor:
    """Every point of images of ``size`` (h, w) rescaled per axis into ``frame`` (h, w)."""
    wh, f = _wh(size, frame, points)
    return points * f / wh


def _padding(points: torch.Tensor) -> torch.Tensor:
    return (points == -1).all(1, keepdim=True)


def to_frame(points: torch.Tensor, size, frame=FRAME_224) -> torch.Tensor:
    """Pixel keypoints (``B x 2 x N``, 1-based as annotated) of images of ``size`` -> the
    ``frame`` ((h, w)): ``x * frame_w / w``, ``y * frame_h / h``, exactly as the original
    ``PFPascalDataset`` does (no origin shift). Padding (-1, -1) stays -1."""
    return torch.where(_padding(points), points, rescale(points, size, frame))


def from_frame(points: torch.Tensor, size, frame=FRAME_224) -> torch.Tensor:
    """Inverse of :func:`to_frame`: points of ``frame`` -> pixels of images of ``size``."""
    wh, f = _wh(size, frame, points)
    return torch.where(_padding(points), points, points * wh / f)


def nonfinite_predictions(source_points: torch.Tensor, target_points: torch.Tensor, warped_points: torch.Tensor) -> torch.Tensor:
    """``B`` counts of keypoints annotated in both images whose prediction is NaN or inf."""
    bad = valid_keypoints(source_points, target_points) & ~torch.isfinite(warped_points).all(1)
    return bad.sum(1)


def normalized_errors(
    source_points: torch.Tensor,
    warped_points: torch.Tensor,
    valid: torch.Tensor,
    protocol: PCKProtocol,
    source_size: torch.Tensor | None = None,
    object_bbox: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distances divided by ``L`` (``B x N``): NaN where not ``valid`` (excluded), ``+inf`` where
    valid but the prediction is not finite (counted wrong). Points are ``B x 2 x N`` source-image
    pixels; ``source_size`` is ``B x 2`` (h, w); ``object_bbox`` ``B x 4``.

    ``"image_224"``: ``warped_points`` must come from a transfer made in the 224 x 224 frame
    (``transfer_keypoints(..., frame=FRAME_224)``, as the prediction step does for PF-PASCAL);
    both point sets are rescaled into the frame here (:func:`rescale`) and ``L = 224``."""
    src = source_points.double()
    wrp = warped_points.double()
    b = src.shape[0]
    if protocol.reference == "image_224":
        if source_size is None:
            raise ValueError("protocol 'image_224' needs source_size (h, w)")
        src, wrp = rescale(src, source_size, FRAME_224), rescale(wrp, source_size, FRAME_224)
        length = torch.full((b,), float(FRAME_224[1]), dtype=torch.float64)
    elif protocol.reference == "bbox":
        inf = torch.tensor(float("inf"), dtype=torch.float64)
        m = valid.unsqueeze(1)
        hi = torch.where(m, src, -inf).amax(-1)
        lo = torch.where(m, src, inf).amin(-1)
        length = (hi - lo).amax(-1)
    elif protocol.reference == "image":
        if source_size is None:
            raise ValueError("protocol 'image' needs source_size (h, w)")
        length = torch.as_tensor(source_size, dtype=torch.float64).reshape(b, 2).amax(-1)
    else:
        if object_bbox is None:
            raise ValueError("protocol 'object_bbox' needs object_bbox [x0, y0, x1, y1]")
        box = torch.as_tensor(object_bbox, dtype=torch.float64).reshape(b, 4)
        length = torch.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])
    dist = torch.linalg.vector_norm(src - wrp, dim=1)
    err = dist / length.to(dist.device).unsqueeze(-1)
    err = torch.where(torch.isfinite(wrp).all(1), err, torch.full_like(err, float("inf")))
    return torch.where(valid, err, torch.full_like(err, float("nan")))


@dataclass
class PCKResult:
    protocol: PCKProtocol
    pck: dict[float, float]  # alpha -> PCK (averaged as the protocol says)
    per_pair: dict[float, list[float]] = field(default_factory=dict)  # alpha -> per-pair PCK (NaN: no keypoints)
    num_pairs: int = 0
    num_keypoints: int = 0
    pairs_without_keypoints: int = 0

    def to_dict(self) -> dict:
        return {
            "protocol": self.protocol.to_dict(),
            "pck": {f"{a:g}": v for a, v in self.pck.items()},
            "num_pairs": self.num_pairs,
            "num_keypoints": self.num_keypoints,
            "pairs_without_keypoints": self.pairs_without_keypoints,
        }


def pck_from_errors(errors: torch.Tensor, protocol: PCKProtocol) -> PCKResult:
    """PCK for every alpha of ``protocol`` from ``B x N`` normalised errors (NaN = excluded,
    ``+inf`` = wrong)."""
    valid = ~torch.isnan(errors)
    n_valid = valid.sum(1)
    has_kp = n_valid > 0
    out, per_pair = {}, {}
    for a in protocol.alphas:
        correct = (errors <= a) & valid
        pair_pck = correct.sum(1).double() / n_valid.clamp(min=1).double()
        pair_pck = torch.where(has_kp, pair_pck, torch.full_like(pair_pck, float("nan")))
        per_pair[a] = pair_pck.tolist()
        if protocol.averaging == "per_pair":
            out[a] = float(pair_pck[has_kp].mean()) if bool(has_kp.any()) else float("nan")
        else:
            total = int(n_valid.sum())
            out[a] = float(correct.sum()) / total if total else float("nan")
    return PCKResult(protocol, out, per_pair, int(errors.shape[0]), int(n_valid.sum()), int((~has_kp).sum()))


def pck(source_points, warped_points, protocol: PCKProtocol, target_points=None, source_size=None, object_bbox=None) -> PCKResult:
    """One-call PCK. ``target_points`` (if given) only serves to exclude unannotated keypoints."""
    tgt = target_points if target_points is not None else source_points
    valid = valid_keypoints(source_points, tgt)
    errors = normalized_errors(source_points, warped_points, valid, protocol, source_size, object_bbox)
    return pck_from_errors(errors, protocol)

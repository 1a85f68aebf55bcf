"""PCK: percentage of correct keypoints, with every protocol named.

Keypoints of the **target** image are transferred to the **source** image by the estimated
transformation and compared with the source annotations. A keypoint is correct when
``distance <= alpha * L``. Protocols differ in the reference length ``L``, the coordinate frame
and the averaging; a :class:`PCKProtocol` names all three and is stored next to every number.

Reference lengths (``reference=``):

``"bbox"``
    ``max(w, h)`` of the bounding box of the source keypoints (PF-WILLOW protocol of the
    reference code, ``max(point_A.max - point_A.min)``).
``"image_224"``
    both images are (conceptually) resized to 224 x 224: source and transferred points are
    rescaled per axis into that frame and ``L = 224`` (PF-PASCAL protocol of the camera-ready
    paper, "scnet" in the reference code).
``"image"``
    the longer side of the source image, ``max(h, w)``.
``"object_bbox"``
    ``max(w, h)`` of a given object box ``[x0, y0, x1, y1]`` in source pixels.

Averaging: ``"per_pair"`` (mean over a pair's keypoints, then over pairs: the paper's) or
``"per_keypoint"`` (all keypoints pooled). Keypoints whose source or target coordinate is -1 or
NaN (padding, missing annotations) are excluded, never counted; a pair with no valid keypoint is
excluded from the per-pair mean and counted in ``pairs_without_keypoints``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

REFERENCES = ("bbox", "image_224", "image", "object_bbox")
AVERAGING = ("per_pair", "per_keypoint")


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

    def describe(self) -> str:
        ref = {"bbox": "L = max side of source keypoint bbox", "image_224": "images resized to 224x224, L = 224",
               "image": "L = longer side of source image", "object_bbox": "L = max side of object box"}[self.reference]
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


def normalized_errors(
    source_points: torch.Tensor,
    warped_points: torch.Tensor,
    valid: torch.Tensor,
    protocol: PCKProtocol,
    source_size: torch.Tensor | None = None,
    object_bbox: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distances divided by ``L`` (``B x N``; NaN where not valid). Points are ``B x 2 x N``
    source-image pixels; ``source_size`` is ``B x 2`` (h, w); ``object_bbox`` ``B x 4``."""
    src = source_points.double()
    wrp = warped_points.double()
    b = src.shape[0]
    if protocol.reference == "image_224":
        if source_size is None:
            raise ValueError("protocol 'image_224' needs source_size (h, w)")
        s = torch.as_tensor(source_size, dtype=torch.float64).reshape(b, 2)
        scale = torch.stack((224.0 / s[:, 1], 224.0 / s[:, 0]), 1).unsqueeze(-1)
        src, wrp = src * scale, wrp * scale
        length = torch.full((b,), 224.0, dtype=torch.float64)
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
    """PCK for every alpha of ``protocol`` from ``B x N`` normalised errors (NaN = excluded)."""
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

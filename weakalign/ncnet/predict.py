"""NCNet over a keypoint benchmark, with predictions in the format of
:mod:`weakalign.evaluation.predict` (so :mod:`weakalign.evaluation.metrics` scores them).

Every distinct image is loaded, resized to ``image_size`` and passed through the backbone
**once** (PF-WILLOW: 100 images for 900 pairs); pairs are then batched through correlation and
consensus on the cached features. The transferred points are the target keypoints expressed in
source pixels (:func:`weakalign.ncnet.matches.transfer_keypoints_ncnet`: reference evaluation
settings -- softmax scores, argmax target -> source match per cell, bilinear interpolation), made
in the frame of the benchmark's PCK protocol as for CNNGeometric models
(:func:`weakalign.evaluation.predict.transfer_frame_for`: PF-PASCAL in the 224 x 224 frame of the
reference's ``eval_pf_pascal.py``, keypoints rescaled first; ``transfer_frame`` in the cache).

The predictions dict: ``dataset``, ``kinds`` (``["ncnet"]``), ``source_path``, ``target_path``,
``category``, ``flip``, ``transfer_frame``, ``source_points`` / ``target_points`` (keypoint benchmarks),
``source_size`` / ``target_size`` (``B x 2`` original (h, w)), ``theta_aff`` = ``theta_tps`` =
``None`` (NCNet estimates no parametric transformation), ``transferred`` =
``{"ncnet": B x 2 x N}`` (empty without keypoints) and ``seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from tqdm import tqdm  # plain text bars: tqdm.auto warns in notebooks without ipywidgets

from ..evaluation.predict import _empty_predictions, _keys, _load_images, _pair_table, flips_source
from ..models.correlation import feature_l2norm
from .matches import transfer_keypoints_ncnet

KIND = "ncnet"


def predict_pairs_ncnet(model, dataset, batch_size: int = 16, device: str | torch.device = "cpu", progress: bool = True,
                        image_size: Sequence[int] | None = None, optimize: bool = True, interpolation: str = "bilinear",
                        flush_denormals: bool = True, reuse_memory: bool = True, num_workers: int = 0) -> dict:
    """Run ``model`` (an :class:`~weakalign.ncnet.model.NCNet`) over every pair of ``dataset``.

    ``image_size`` (h, w) overrides the model's input size; ``optimize`` runs the backbone
    through :func:`weakalign.models.inference.optimized_backbone` (CPU; same features up to
    round-off); ``interpolation`` is ``bilinear`` (reference) or ``nearest``. ``reuse_memory``
    calls :func:`weakalign.ncnet.runtime.reuse_freed_memory` (process-wide glibc setting; halves
    the consensus time on CPU by avoiding page faults, results unchanged); ``num_workers``: image
    decoding processes."""
    from ..models.inference import flush_denormals as _flush

    if getattr(model, "geometric_model", None) != KIND:
        raise TypeError(f"predict_pairs_ncnet expects an NCNet, got {type(model).__name__} "
                        "(use weakalign.evaluation.predict.predict_pairs for CNNGeometric models)")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if reuse_memory:
        from .runtime import reuse_freed_memory

        reuse_freed_memory()
    with _flush(flush_denormals), torch.inference_mode():
        return _predict(model, dataset, int(batch_size), torch.device(device), progress, image_size, optimize, interpolation,
                        int(num_workers))


def _features(model, images: torch.Tensor, batch_size: int, device, optimize: bool, progress: bool) -> torch.Tensor:
    fe = model.feature_extraction
    backbone = fe.backbone
    if optimize and device.type == "cpu" and len(images) and getattr(fe, "amp", "none") == "none":
        from ..models.inference import optimized_backbone

        n = min(batch_size, len(images))
        backbone = optimized_backbone(backbone, fe.normalize(images[:n]))
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc="features", disable=not progress, leave=False):
        x = fe.normalize(images[i:i + batch_size].to(device))
        f = fe.run_backbone(x, backbone)  # autocast when fe.amp is set (weakalign.devices)
        out.append(feature_l2norm(f) if fe.l2norm else f)
    return torch.cat(out)


def _predict(model, dataset, batch_size, device, progress, image_size, optimize, interpolation, num_workers=0) -> dict:
    t0 = time.perf_counter()
    recs, paths, index = _pair_table(dataset)
    pred = _empty_predictions(recs, dataset, [KIND])
    flip = flips_source(dataset)
    src_idx = torch.tensor([index[_keys(r, flip)[0]] for r in recs], dtype=torch.long)
    tgt_idx = torch.tensor([index[_keys(r, flip)[1]] for r in recs], dtype=torch.long)
    model = model.to(device).eval()
    size = tuple(int(v) for v in (image_size or model.config.image_size))
    images, sizes = _load_images(paths, size, progress, num_workers, pin_memory=device.type == "cuda")
    feats = _features(model, images, batch_size, device, optimize, progress)
    src_size, tgt_size = sizes[src_idx], sizes[tgt_idx]
    pred["source_size"], pred["target_size"] = src_size, tgt_size
    pred["theta_aff"], pred["theta_tps"] = None, None
    pred["transferred"] = {}
    if "target_points" in pred:
        frame = None if pred.get("transfer_frame") is None else tuple(pred["transfer_frame"])
        out = torch.empty_like(pred["target_points"])
        for i in tqdm(range(0, len(recs), batch_size), desc=f"pairs ({dataset.name}, ncnet)", disable=not progress, leave=False):
            s, t = src_idx[i:i + batch_size], tgt_idx[i:i + batch_size]
            corr = model.forward_features(feats[s.to(feats.device)], feats[t.to(feats.device)])
            pts = pred["target_points"][i:i + len(s)].to(device)
            out[i:i + len(s)] = transfer_keypoints_ncnet(corr, pts, tgt_size[i:i + len(s)], src_size[i:i + len(s)],
                                                         interpolation=interpolation, frame=frame).cpu()
        pred["transferred"][KIND] = out
    pred["seconds"] = time.perf_counter() - t0
    return pred

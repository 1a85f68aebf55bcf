"""Run a model over a keypoint benchmark once and keep its per-pair predictions.

Two paths that give the same numbers (``tests/test_predict.py``):

* :func:`predict_pairs` (fast path): every distinct image is loaded, resized and passed through
  the backbone **once** (PF-WILLOW: 100 images for 900 pairs), pairs are batched, everything
  runs under ``torch.inference_mode``. Only the stage-2 features of the affine-warped source
  are computed per pair (they depend on the pair).
* :func:`predict_pairs_naive`: the reference code's way, one pair at a time, every backbone pass
  recomputed; kept as the baseline for ``benchmarks/`` and as the oracle for the fast path.

Predictions are a dict of tensors and lists (``torch.save``-able, loadable with
``weights_only=True``): per pair the estimated parameters, the transferred target keypoints in
source pixels for every transform kind the model provides, the annotations and image sizes.
Metrics are computed from this cache only (:mod:`weakalign.evaluation.metrics`).

Transferred keypoints are always in source pixels, but *where* the transfer is made follows the
benchmark's default PCK protocol (:func:`transfer_frame_for`): in the original images, or, for
PF-PASCAL (``image_224``), in the 224 x 224 frame of the original evaluation code (keypoints
rescaled first, transferred there; :func:`weakalign.evaluation.transfer.transfer_in_frame`).
The cache records it as ``transfer_frame`` (``None`` or ``[224, 224]``), and
:func:`check_transfer_frame` refuses to score a protocol on a cache made in another frame.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn
from tqdm import tqdm  # plain text bars: tqdm.auto warns in notebooks without ipywidgets

from ..data.images import load_image, to_tensor
from ..geometry import affine_identity, tps_identity
from .pck import TRANSFER_FRAMES, PCKProtocol
from .transfer import transfer_keypoints


def model_kinds(model: nn.Module | None) -> tuple[str, ...]:
    """Transform kinds a model provides: identity -> ("identity",), affine, tps, affine_tps."""
    if model is None:
        return ("identity",)
    kind = model.geometric_model
    return ("affine", "affine_tps") if kind == "affine_tps" else (kind,)


def flips_source(dataset) -> bool:
    """Whether the dataset feeds the network a horizontally flipped source image when a pair's
    ``flip`` flag is set (TSS, as in the reference code; the estimated θ then refers to the
    flipped source, and the dense TSS metrics score it as the reference does)."""
    return bool(getattr(dataset, "flip_source", getattr(dataset, "name", "") == "tss"))


def _resolver(dataset):
    resolve = getattr(dataset, "_resolve", None)
    if resolve is not None:
        return resolve
    return lambda rel: dataset.image_root / rel


def _pair_table(dataset):
    """Records, the distinct images to load (``(path, flipped)``) and the index of each.

    Keys are ``(relative path, flip)``: a source shown flipped is a different network input."""
    recs = dataset.records
    resolve = _resolver(dataset)
    flip = flips_source(dataset)
    keys = list(dict.fromkeys(k for r in recs for k in _keys(r, flip)))
    index = {k: i for i, k in enumerate(keys)}
    return recs, [(resolve(p), f) for p, f in keys], index


def _keys(r, flip: bool):
    return (r.source, bool(flip and getattr(r, "flip", 0))), (r.target, False)


def _read(path_flip):
    path, flip = path_flip
    arr = load_image(path, exif_transpose=False)
    return arr[:, ::-1].copy() if flip else arr


class _Images(torch.utils.data.Dataset):
    """The distinct images of a benchmark as ``(tensor at size, (h, w))``, for a DataLoader."""

    def __init__(self, paths, size):
        self.paths, self.size = list(paths), size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        arr = _read(self.paths[i])
        return to_tensor(arr, self.size), tuple(arr.shape[:2])


def _load_images(paths, size, progress, num_workers: int = 0, pin_memory: bool = False):
    """``(images N x 3 x H x W at size, original sizes N x 2)``, decoded in ``num_workers``
    processes (0: in this one, the default), pinned for a CUDA device when ``pin_memory``. The
    images stay on the CPU; batches are copied to the device as needed. Resized in a worker
    process, an image can differ from the in-process one in the last bit (measured: <= 2e-7 on
    [0, 1] values), so ``num_workers`` is a speed setting that is equal up to round-off, not
    bit for bit."""
    if num_workers > 0 and len(paths):
        items = torch.utils.data.DataLoader(_Images(paths, size), batch_size=None, num_workers=int(num_workers))
    else:
        items = (_Images(paths, size)[i] for i in range(len(paths)))
    images, sizes = [], []
    for img, hw in tqdm(items, total=len(paths), desc="loading images", disable=not progress, leave=False):
        sizes.append(hw)
        images.append(img)
    images = torch.stack(images)
    if pin_memory:
        images = images.pin_memory()
    return images, torch.tensor(sizes, dtype=torch.float32)


def _points(recs, attr, n_max):
    out = torch.full((len(recs), 2, n_max), -1.0)
    for i, r in enumerate(recs):
        p = torch.as_tensor(getattr(r, attr), dtype=torch.float32)
        out[i, :, : p.shape[1]] = p
    return out


def transfer_frame_for(dataset) -> tuple[int, int] | None:
    """Frame the dataset's keypoints are transferred in: that of its default PCK protocol
    (``dataset.pck_protocol["reference"]``; PF-PASCAL: 224 x 224), ``None`` = original images."""
    ref = (getattr(dataset, "pck_protocol", None) or {}).get("reference")
    return TRANSFER_FRAMES.get(ref) if isinstance(ref, str) else None


def check_transfer_frame(predictions: dict, protocol: PCKProtocol) -> None:
    """Raise ``ValueError`` if ``protocol`` needs keypoints transferred in a frame other than the
    one the cache was made in (e.g. PF-PASCAL's ``image_224`` on a cache from before issue 19,
    which transferred in the original images)."""
    need = protocol.transfer_frame
    if need is None:
        return
    have = predictions.get("transfer_frame")
    if have is None or tuple(int(v) for v in have) != tuple(need):
        raise ValueError(f"PCK protocol {protocol.reference!r} needs keypoints transferred in the {need[0]}x{need[1]} frame, "
                         f"but the {predictions.get('dataset', '?')} predictions were transferred in "
                         f"{'the original images' if have is None else f'a {have[0]}x{have[1]} frame'}: "
                         "re-run `weakalign evaluate predict`")


def has_keypoints(recs) -> bool:
    """Keypoint benchmarks (PF-WILLOW, PF-PASCAL) and Caltech-101 (its polygons, transferred
    like keypoints) carry points; TSS (dense flow ground truth) does not."""
    return all(r.source_points is not None and r.target_points is not None for r in recs)


def _empty_predictions(recs, dataset, kinds):
    pred = {
        "dataset": dataset.name,
        "kinds": list(kinds),
        "source_path": [str(r.source) for r in recs],
        "target_path": [str(r.target) for r in recs],
        "category": [str(r.category) for r in recs],
        "flip": [int(getattr(r, "flip", 0)) for r in recs],
        "transfer_frame": (lambda f: None if f is None else list(f))(transfer_frame_for(dataset)),
    }
    if has_keypoints(recs):
        # Caltech-101 polygons: source and target outlines have their own lengths (padded with -1)
        n_max = max(max(r.source_points.shape[1], r.target_points.shape[1]) for r in recs)
        pred["source_points"] = _points(recs, "source_points", n_max)
        pred["target_points"] = _points(recs, "target_points", n_max)
    return pred


def _finish(pred, theta_aff, theta_tps, sizes_src, sizes_tgt, kinds):
    pred["source_size"], pred["target_size"] = sizes_src, sizes_tgt
    pred["theta_aff"], pred["theta_tps"] = theta_aff, theta_tps
    pred["transferred"] = {}
    if "target_points" not in pred:
        return pred
    for kind in kinds:
        if kind == "identity":
            k, ta, tt = "affine", affine_identity(len(sizes_src)), None
        else:
            k, ta, tt = kind, theta_aff, theta_tps
        frame = pred.get("transfer_frame")
        pred["transferred"][kind] = transfer_keypoints(k, pred["target_points"], sizes_tgt, sizes_src, ta, tt,
                                                       frame=None if frame is None else tuple(frame))
    return pred


def predict_pairs(*args, **kwargs) -> dict:
    """Fast path (see :func:`_predict_pairs` for the arguments), denormals flushed to zero."""
    from ..models.inference import flush_denormals

    with flush_denormals(kwargs.pop("flush_denormals", True)):
        return _predict_pairs(*args, **kwargs)


@torch.inference_mode()
def _predict_pairs(model: nn.Module | None, dataset, batch_size: int = 16, device: str | torch.device = "cpu", progress: bool = True, image_size: Sequence[int] | None = None, optimize: bool = True,
                   num_workers: int = 0) -> dict:
    """Fast path. ``model=None`` is the identity transform (no image is loaded). ``optimize``
    runs the backbone through :func:`weakalign.models.inference.optimize_for_inference` with the
    oneDNN Graph fuser (CPU only; other devices run the model as it is). ``num_workers``: image
    decoding processes. The features of every image are computed once on ``device`` and stay
    there; the images stay on the CPU (pinned on CUDA) and only the sources a batch warps are
    copied."""
    t0 = time.perf_counter()
    recs, paths, index = _pair_table(dataset)
    kinds = model_kinds(model)
    pred = _empty_predictions(recs, dataset, kinds)
    n = len(recs)
    flip = flips_source(dataset)
    src_idx = torch.tensor([index[_keys(r, flip)[0]] for r in recs])
    tgt_idx = torch.tensor([index[_keys(r, flip)[1]] for r in recs])
    if model is None:
        from ..data.images import image_size as read_size

        sizes = torch.tensor([read_size(p) for p, _ in paths], dtype=torch.float32)
        pred = _finish(pred, None, None, sizes[src_idx], sizes[tgt_idx], kinds)
        pred["seconds"] = time.perf_counter() - t0
        return pred
    device = torch.device(device)
    model = model.to(device).eval()
    if optimize:
        from ..models.inference import optimize_for_inference

        model = optimize_for_inference(model, batch_size, onednn_fusion=True)
    size = tuple(image_size or model.config.image_size)
    images, sizes = _load_images(paths, size, progress, num_workers, pin_memory=device.type == "cuda")
    feats = torch.cat([model.extract(images[i : i + batch_size].to(device)) for i in tqdm(range(0, len(paths), batch_size), desc="features", disable=not progress, leave=False)])
    theta_aff = torch.empty(n, 6) if model.geometric_model in ("affine", "affine_tps") else None
    theta_tps = torch.empty(n, 18) if model.geometric_model in ("tps", "affine_tps") else None
    for i in tqdm(range(0, n, batch_size), desc=f"pairs ({dataset.name})", disable=not progress, leave=False):
        s, t = src_idx[i : i + batch_size], tgt_idx[i : i + batch_size]
        fs, ft = feats[s.to(feats.device)], feats[t.to(feats.device)]
        if model.geometric_model == "affine_tps":
            out = model(images[s].to(device), None, f_src=fs, f_tgt=ft)
            theta_aff[i : i + len(s)] = out.theta_aff.cpu()
            theta_tps[i : i + len(s)] = out.theta_aff_tps.cpu()
        else:
            theta, _ = model.forward_features(fs, ft)
            (theta_aff if model.geometric_model == "affine" else theta_tps)[i : i + len(s)] = theta.cpu()
    pred = _finish(pred, theta_aff, theta_tps, sizes[src_idx], sizes[tgt_idx], kinds)
    pred["seconds"] = time.perf_counter() - t0
    return pred


def predict_pairs_naive(model: nn.Module, dataset, device: str | torch.device = "cpu", progress: bool = True, limit: int | None = None) -> dict:
    """Reference-style baseline: one pair at a time, both images reloaded and re-encoded."""
    t0 = time.perf_counter()
    recs, _, _ = _pair_table(dataset)
    recs = recs[:limit] if limit else recs
    kinds = model_kinds(model)
    pred = _empty_predictions(recs, dataset, kinds)
    model = model.to(device).eval()
    size = tuple(model.config.image_size)
    resolve, flip = _resolver(dataset), flips_source(dataset)
    th_a, th_t, s_sizes, t_sizes = [], [], [], []
    for r in tqdm(recs, desc="pairs (naive)", disable=not progress, leave=False):
        (sp, sf), (tp, _) = _keys(r, flip)
        src = _read((resolve(sp), sf))
        tgt = _read((resolve(tp), False))
        s_sizes.append(src.shape[:2])
        t_sizes.append(tgt.shape[:2])
        with torch.no_grad():
            out = model(to_tensor(src, size)[None].to(device), to_tensor(tgt, size)[None].to(device))
        if model.geometric_model == "affine_tps":
            th_a.append(out.theta_aff.cpu())
            th_t.append(out.theta_aff_tps.cpu())
        elif model.geometric_model == "affine":
            th_a.append(out.cpu())
        else:
            th_t.append(out.cpu())
    cat = lambda xs: torch.cat(xs) if xs else None  # noqa: E731
    pred = _finish(pred, cat(th_a), cat(th_t), torch.tensor(s_sizes, dtype=torch.float32), torch.tensor(t_sizes, dtype=torch.float32), kinds)
    pred["seconds"] = time.perf_counter() - t0
    return pred

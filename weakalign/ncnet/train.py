"""``weakalign train-ncnet``: NCNet's weakly-supervised training (NeurIPS 2018, ``train.py``).

The neighbourhood consensus network learns from matching image pairs only: the loss
(:mod:`weakalign.ncnet.loss`) raises the matching score of each pair and lowers that of a
non-matching pair made by rolling the batch's sources. Pairs: the same weak pair lists as
``train-weak`` (``data.train`` / ``data.val``: same-category Caltech-101 pairs by default,
the PF-PASCAL training pairs in the ``paper`` profile), honouring the ``flip`` column.

The backbone is frozen (the reference's default ``fe_finetune_params 0``), so with
``cache_features`` the L2-normalised features of every distinct image are computed once and
cached on disk (``cache_dir``, keyed by the backbone weights, image list and size) and an
epoch only runs correlation + consensus. ``fe_finetune: N`` trains the last N backbone blocks
too (no feature cache then).

Model selection (``selection: heldout_weak_loss``, the reference keeps the best validation
loss): the weak loss on the even rows of ``data.val``; the odd rows are only used for the
reported before/after numbers. Held-out negatives pair every target with the *next* held-out
pair's source (over the whole list, so the numbers do not depend on the batch size).

The shared loop of :mod:`weakalign.training.engine` gives resumable checkpoints
(``--resume``, ``--resume=auto``), determinism, ``--max-steps``, DDP and progress bars.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from ..devices import set_backbone_amp
from ..training import engine
from ..training.sources import cache_path, cached, check_images, extract_features, module_fingerprint, pair_list, paths_digest, subsample
from ..training.weak import load_pair_image
from .checkpoints import save_ncnet_checkpoint
from .loss import matching_score, weak_loss
from .model import NCNet, NCNetConfig
from ..config import as_block
from .params import BLOCK, NCNetLoss, TrainNCNet, fingerprint


def _user_error(msg):
    from weakalign.cli import UserError

    return UserError(msg)


def _rel(p) -> str:
    from ..data.paths import project_root

    try:
        return str(Path(p).relative_to(project_root()))
    except ValueError:
        return str(p)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def _image_key(rel: str, flip: int, use_flip: bool) -> tuple[str, bool]:
    return rel, bool(flip) and use_flip


class _UniqueImages(torch.utils.data.Dataset):
    def __init__(self, keys, image_root, size):
        self.keys, self.image_root, self.size = keys, Path(image_root), tuple(size)

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        rel, flip = self.keys[i]
        return {"image": load_pair_image(self.image_root / rel, flip, self.size)}


def pair_features(ctx, model: NCNet, records, image_root, size, use_flip: bool, cfg: TrainNCNet, backbone_fp: str, progress: bool, what: str):
    """``((rel_path, flip) -> row, features N x C x h x w)`` for every image of ``records``,
    from the cache when it holds exactly these images, backbone and size."""
    keys = list(dict.fromkeys(_image_key(p, r.flip, use_flip) for r in records for p in (r.source, r.target)))
    key = {"what": "ncnet-features", "backbone": backbone_fp, "l2norm": bool(model.config.normalize_features),
           "image_size": list(size), "root": str(image_root), "images": paths_digest(f"{p}|{int(f)}" for p, f in keys), "n": len(keys)}
    if cfg.amp != "none":  # features made under autocast never mix with float32 ones
        key["amp"] = cfg.amp
    obj = cached(ctx, cache_path(cfg.cache_dir, "ncnet", key), key, lambda: extract_features(
        model, _UniqueImages(keys, image_root, size), ("image",), int(cfg.batch_size), int(cfg.num_workers), ctx.device,
        f"features {what}", progress))
    return {k: i for i, k in enumerate(keys)}, obj["image"]


class NCPairs(torch.utils.data.Dataset):
    """Weak pairs as cached features (``f_src``, ``f_tgt``) or, without a cache, images
    (``source_image``, ``target_image``); ``with_negative=True`` adds the next pair's source
    (``f_neg`` / ``negative_image``) for the held-out negatives."""

    def __init__(self, records, image_root, size, use_flip: bool, features=None, with_negative: bool = False):
        self.records, self.image_root, self.size = list(records), Path(image_root), tuple(size)
        self.use_flip, self.features, self.with_negative = use_flip, features, with_negative

    def __len__(self):
        return len(self.records)

    def _source(self, r):
        key = _image_key(r.source, r.flip, self.use_flip)
        if self.features is not None:
            rows, feats = self.features
            return feats[rows[key]]
        return load_pair_image(self.image_root / key[0], key[1], self.size)

    def _target(self, r):
        key = _image_key(r.target, r.flip, self.use_flip)
        if self.features is not None:
            rows, feats = self.features
            return feats[rows[key]]
        return load_pair_image(self.image_root / key[0], key[1], self.size)

    def __getitem__(self, i):
        r = self.records[i]
        names = ("f_src", "f_tgt", "f_neg") if self.features is not None else ("source_image", "target_image", "negative_image")
        item = {names[0]: self._source(r), names[1]: self._target(r), "index": i}
        if self.with_negative:
            item[names[2]] = self._source(self.records[(i + 1) % len(self.records)])
        return item


# ---------------------------------------------------------------------------------------------
# step, validation, task
# ---------------------------------------------------------------------------------------------

class NCStep(nn.Module):
    """batch -> weak loss (negatives: the batch's sources rolled by one, as in the reference)."""

    def __init__(self, model: NCNet, device, normalization: str = NCNetLoss.normalization):
        super().__init__()
        self.model, self.device, self.normalization = model, device, normalization

    def features(self, batch, key_img: str, key_feat: str) -> torch.Tensor:
        if key_feat in batch:
            return batch[key_feat].to(self.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.model.backbone_frozen):
            return self.model.extract(batch[key_img].to(self.device))

    def forward(self, batch) -> torch.Tensor:
        fa = self.features(batch, "source_image", "f_src")
        fb = self.features(batch, "target_image", "f_tgt")
        return weak_loss(self.model, fa, fb, self.normalization)[0]


@torch.no_grad()
def heldout_scores(step: NCStep, dataset: NCPairs, ctx, batch_size: int) -> dict:
    """Mean positive and negative matching scores and the weak loss over a held-out list
    (``dataset.with_negative``; sharded over ranks, all-reduced)."""
    from torch.utils.data import DataLoader, Subset

    model = step.model
    was_training = model.training
    model.eval()
    idx = engine.shard(len(dataset), ctx)
    pos = neg = count = 0.0
    if len(idx):
        for batch in DataLoader(Subset(dataset, list(idx)), batch_size=batch_size, shuffle=False):
            fa = step.features(batch, "source_image", "f_src")
            fb = step.features(batch, "target_image", "f_tgt")
            fn = step.features(batch, "negative_image", "f_neg")
            n = fa.shape[0]
            s = matching_score(model.forward_features(torch.cat((fa, fn)), torch.cat((fb, fb))), step.normalization).double()
            pos += float(s[:n].sum())
            neg += float(s[n:].sum())
            count += n
    model.train(was_training)
    pos, neg, count = ctx.all_reduce_sum([pos, neg, count])
    count = max(count, 1.0)
    return {"loss": (neg - pos) / count, "score_pos": pos / count, "score_neg": neg / count}


class NCTask(engine.Task):
    selection_name = "val_loss"

    def __init__(self, model, step, train_dataset, val_dataset, ctx, cfg):
        self.model, self.step_module, self.train_dataset = model, step, train_dataset
        self.val_dataset, self.ctx, self.cfg = val_dataset, ctx, cfg
        self.selection_mode = "last" if cfg.selection == "last_epoch" else "min"

    def set_train_mode(self):
        self.model.train()  # the backbone stays in eval mode (NCNet.train)

    def validate(self):
        s = heldout_scores(self.step_module, self.val_dataset, self.ctx, int(self.cfg.batch_size))
        return {"value": s["loss"], "val_score_pos": s["score_pos"], "val_score_neg": s["score_neg"]}


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------

def model_config(cfg: TrainNCNet) -> NCNetConfig:
    m = cfg.model
    return NCNetConfig(backbone=m.backbone, image_size=tuple(int(v) for v in m.image_size),
                       kernel_sizes=tuple(int(k) for k in m.kernel_sizes), channels=tuple(int(c) for c in m.channels),
                       symmetric=bool(m.symmetric), conv4d_impl=str(m.conv4d_impl))


def build_training_model(cfg: TrainNCNet, backbone_factory=None) -> NCNet:
    """The untrained NCNet of a ``train_ncnet`` config (backbone weights from the registry)."""
    from ..models.backbones import BackboneWeightsMismatch, BackboneWeightsNotFound

    config = model_config(cfg)
    try:
        if backbone_factory is not None:
            return NCNet(config, backbone=backbone_factory())
        return NCNet(config, backbone_weights=cfg.model.backbone_weights)
    except (BackboneWeightsNotFound, BackboneWeightsMismatch) as exc:
        raise _user_error(f"train_ncnet.model.backbone {config.backbone!r}: {exc}") from exc
    except ValueError as exc:
        raise _user_error(f"train_ncnet.model: {exc}") from exc


def train_ncnet(cfg: TrainNCNet | dict, *, resume: str = "never", max_steps: int = 0, progress: bool = True,
                backbone_factory=None, on_step=None, ctx: engine.DistContext | None = None) -> dict:
    """Train NCNet with the weak loss (see the module docstring); returns the metrics dict.

    ``cfg``: the resolved ``train_ncnet`` block (:func:`weakalign.ncnet.params.resolve_ncnet`; a
    complete dict is checked and converted by :func:`weakalign.config.as_block`)."""
    cfg = as_block(BLOCK, cfg)
    t0 = time.perf_counter()
    with engine.distributed_context(cfg, ctx, key="train_ncnet.device") as ctx:
        return _train(cfg, ctx, resume, max_steps, progress and ctx.main, backbone_factory, on_step, t0)


def _train(cfg, ctx, resume, max_steps, progress, backbone_factory, on_step, t0):
    from ..atomic import write_json

    outs = {k: engine.resolve_path(v) for k, v in cfg.outputs.to_dict().items()}
    data, seed = cfg.data, int(cfg.seed)
    use_flip = bool(data.use_flip)

    train_recs, train_root = pair_list(data.train, data.root, "train_ncnet.data.train", use_flip)
    val_recs, val_root = pair_list(data.val, data.root, "train_ncnet.data.val", use_flip)
    # the same seeded subsets as train_weak (same keys): both methods see the same pairs
    train_recs = [train_recs[i] for i in subsample(len(train_recs), int(data.max_train_pairs), seed, "weak-train-pairs")]
    val_recs = [val_recs[i] for i in subsample(len(val_recs), int(data.max_val_pairs), seed, "weak-val-pairs")]
    sel_recs, report_recs = val_recs[0::2], val_recs[1::2]
    if len(train_recs) < 2 or len(sel_recs) < 2 or len(report_recs) < 2:
        raise _user_error(f"train_ncnet: need >= 2 training pairs and >= 4 held-out pairs (have {len(train_recs)}, {len(val_recs)})")
    check_images([train_root / p for r in train_recs for p in (r.source, r.target)], "train_ncnet.data.train")
    check_images([val_root / p for r in val_recs for p in (r.source, r.target)], "train_ncnet.data.val")

    engine.seed_everything(seed)
    model = set_backbone_amp(build_training_model(cfg, backbone_factory).to(ctx.device), cfg.amp)
    trains = model.set_finetune(int(cfg.fe_finetune))
    size = tuple(model.config.image_size)
    bb_fp = module_fingerprint(model.feature_extraction)
    feat_hw = model.feature_size()

    cache = bool(cfg.cache_features) and model.backbone_frozen
    train_feats = pair_features(ctx, model, train_recs, train_root, size, use_flip, cfg, bb_fp, progress, "ncnet train pairs") if cache else None
    val_feats = pair_features(ctx, model, val_recs, val_root, size, use_flip, cfg, bb_fp, progress, "ncnet held-out pairs") if cache else None
    train_ds = NCPairs(train_recs, train_root, size, use_flip, train_feats)
    sel_ds = NCPairs(sel_recs, val_root, size, use_flip, val_feats, with_negative=True)
    report_ds = NCPairs(report_recs, val_root, size, use_flip, val_feats, with_negative=True)

    step = NCStep(model, ctx.device, cfg.loss.normalization)
    bs = int(cfg.batch_size)
    before = heldout_scores(step, report_ds, ctx, bs)

    task = NCTask(model, step, train_ds, sel_ds, ctx, cfg)
    digest = lambda recs: paths_digest(f"{r.source}|{r.target}|{r.flip}" for r in recs)  # noqa: E731
    fp = fingerprint(cfg, {"backbone": bb_fp, "train": digest(train_recs), "val": digest(val_recs)})
    selection = {
        "criterion": cfg.selection,
        "uses_keypoints": False,
        "description": {
            "heldout_weak_loss": "NCNet weak loss on the even rows of the held-out pair list (the reference keeps the best validation loss); no keypoints",
            "last_epoch": "no selection: weights after the last epoch",
        }[cfg.selection],
    }
    meta = {"stage": "train-ncnet", "profile": cfg.profile, "selection": selection, "loss": cfg.loss.to_dict(),
            "train_parts": trains, "params_fingerprint": fp}
    fit_cfg = engine.FitConfig(
        seed=seed, batch_size=bs, schedule=cfg.schedule, weight_decay=float(cfg.weight_decay),
        num_workers=int(cfg.num_workers), checkpoint_every=int(cfg.checkpoint_every), state_path=outs["state"],
        fingerprint=fp, meta=meta, desc="train-ncnet", resume=resume, max_steps=max_steps, progress=progress, on_step=on_step,
    )
    state = engine.fit(task, fit_cfg, ctx)

    after = heldout_scores(step, report_ds, ctx, bs)
    epochs = len(state["history"])
    metrics = {
        "stage": "train-ncnet",
        "profile": cfg.profile,
        "model": model.config.to_dict(),
        "feature_size": list(feat_hw),
        "train_parts": trains,
        "features_cached": cache,
        "train_pairs": len(train_ds),
        "epochs": epochs,
        "steps": state["global_step"],
        "heldout_pairs": len(report_ds),
        "heldout_loss_before": before["loss"],
        "heldout_loss_after": after["loss"],
        "heldout_loss_gain": before["loss"] - after["loss"],
        "heldout_score_pos_before": before["score_pos"],
        "heldout_score_pos_after": after["score_pos"],
        "heldout_score_neg_before": before["score_neg"],
        "heldout_score_neg_after": after["score_neg"],
        "selection": {**selection, "best_epoch": state["best"]["epoch"], "best_value": state["best"]["value"], "selection_pairs": len(sel_ds)},
        "seconds": round(time.perf_counter() - t0, 1),
        "training_seconds": round(state["elapsed"], 1),
        "params_fingerprint": fp,
        "config": cfg.to_dict(),
    }
    if ctx.main:
        save_ncnet_checkpoint(outs["checkpoint"], model, meta={**meta, "metrics": metrics})
        write_json(outs["metrics"], metrics)
        engine.write_curves(state, task.selection_name, outs.get("plot"), outs.get("steps_plot"))
        print(f"train-ncnet: {epochs} epochs, {len(train_ds):,} pairs, held-out weak loss {before['loss']:.4g} -> {after['loss']:.4g} "
              f"(positive score {before['score_pos']:.4g} -> {after['score_pos']:.4g}, negative {before['score_neg']:.4g} -> "
              f"{after['score_neg']:.4g}), {engine.format_duration(metrics['seconds'])} -> {_rel(outs['checkpoint'])}", flush=True)
    ctx.barrier()
    return metrics

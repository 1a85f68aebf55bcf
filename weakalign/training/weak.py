"""``weakalign train-weak``: WeakAlign's weakly-supervised fine-tuning (CVPR 2018).

The two-stage model (:class:`~weakalign.models.TwoStageCNNGeometric`) is assembled from the
strong affine and TPS checkpoints and trained on matching image pairs with
``loss = -mean(TwoStageInlierScore)`` (:mod:`weakalign.losses.inlier`; its parameters come from
``train_weak.loss``). As in the reference, the model stays in eval mode during training (BN
statistics fixed) unless ``update_bn_buffers``.

Which parameters train is ``train_parts``: ``regressors`` (both heads; default profile),
``last_blocks`` (+ the last ``last_blocks`` backbone blocks) or ``all`` (the reference's
default). With a frozen backbone and fixed images (no random crop) the stage-1 features of
every image are computed once and cached; the stage-2 features of the affine-warped source
depend on the current estimate and run at every step, and the gradient flows through the
frozen backbone into the warp (the method is unchanged by the caching).

Model selection (``selection``): ``heldout_weak_score`` (default, no keypoints anywhere) is the
mean soft-inlier score on the even rows of the held-out pair list; the odd rows are only used
for the reported before/after numbers. ``pf_pascal_val_pck`` is the reference code's choice
(PCK@0.1 on the PF-PASCAL validation pairs: keypoint supervision for model selection); its use
is recorded in the metrics and the checkpoint; ``data.max_val_pairs`` > 0 keeps that many evenly
spaced validation pairs (0 = all 308, as the original). ``reference`` is the same criterion under
the name the paper profile uses in both training blocks. ``last_epoch`` keeps the last weights.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from ..devices import set_backbone_amp
from ..losses import TwoStageInlierScore
from . import engine
from ..config import as_block
from .params import TrainWeak, fingerprint, weak_label
from .sources import cache_path, cached, check_images, module_fingerprint, pair_list, paths_digest, subsample
from .synthetic import keyed_generator

REFERENCE_LOSS = {"tolerance": 0, "shape": "square", "mask": "identity", "normalize": True, "offset_factor": 227.0 / 210.0, "tps_reg_factor": 0.2,
                  "composition": "reference"}


def _user_error(msg):
    from weakalign.cli import UserError

    return UserError(msg)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def random_crop_box(h: int, w: int, gen: torch.Generator) -> tuple[int, int, int, int]:
    """The reference's crop: top/left in [0, size/4), bottom/right in [3 size/4, size)."""
    def r(n):
        return int(torch.randint(0, max(1, int(n / 4)), (1,), generator=gen))
    top, left = r(h), r(w)
    bottom, right = int(3 * h / 4 + r(h)), int(3 * w / 4 + r(w))
    return top, bottom, left, right


def load_pair_image(path: Path, flip: bool, size, crop_gen: torch.Generator | None = None) -> torch.Tensor:
    import numpy as np

    from ..data.images import load_image, to_tensor

    a = load_image(path)
    if crop_gen is not None:
        t, b, l, r = random_crop_box(a.shape[0], a.shape[1], crop_gen)
        a = a[t:b, l:r]
    if flip:
        a = np.ascontiguousarray(a[:, ::-1])
    return to_tensor(a, size)


class WeakPairs(torch.utils.data.Dataset):
    """Pairs as images (``source_image``, ``target_image``). ``features`` (a dict
    ``(rel_path, flip) -> row`` and a tensor): the initial backbone's stage-1 features
    (``f_src``, ``f_tgt``) from the cache; ``prefix`` (same form): the cached input of the
    trained backbone blocks (``p_src``, ``p_tgt``, ``train_parts: last_blocks``). The target
    image is loaded only when neither is given or ``images`` is set (a trained backbone without
    a prefix cache, whose cached ``features`` only score held-out pairs); the source image is
    always loaded (stage 2 warps it)."""

    def __init__(self, records, image_root: Path, size, use_flip: bool, random_crop: bool, seed: int, tag: str,
                 features: tuple[dict, torch.Tensor] | None = None, prefix: tuple[dict, torch.Tensor] | None = None,
                 images: bool = False):
        self.records, self.image_root, self.size = list(records), Path(image_root), tuple(size)
        self.use_flip, self.random_crop, self.seed, self.tag = use_flip, random_crop, seed, tag
        self.features, self.prefix, self.images = features, prefix, bool(images)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.records)

    def flip(self, r) -> bool:
        return bool(r.flip) and self.use_flip

    def _gen(self, i, which):
        return keyed_generator(self.seed, self.tag, "crop", self.epoch, i, which) if self.random_crop else None

    def __getitem__(self, i):
        r = self.records[i]
        fl = self.flip(r)
        item = {"source_image": load_pair_image(self.image_root / r.source, fl, self.size, self._gen(i, "source")), "index": i}
        if self.images or (self.features is None and self.prefix is None):
            item["target_image"] = load_pair_image(self.image_root / r.target, fl, self.size, self._gen(i, "target"))
        for name, cache in (("f", self.features), ("p", self.prefix)):
            if cache is not None:
                rows, feats = cache
                item[f"{name}_src"] = feats[rows[(r.source, fl)]]
                item[f"{name}_tgt"] = feats[rows[(r.target, fl)]]
        return item


class _UniqueImages(torch.utils.data.Dataset):
    def __init__(self, keys, image_root, size):
        self.keys, self.image_root, self.size = keys, Path(image_root), size

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        rel, fl = self.keys[i]
        return {"image": load_pair_image(self.image_root / rel, fl, self.size)}


def stage1_features(ctx, model, records_list, image_root, size, use_flip, cfg, backbone_fp, progress, prefix=None):
    """``((rel_path, flip) -> row, features)`` for every image of the given record lists: the
    model's current (L2-normalised) stage-1 features, or with ``prefix`` = ``(extractor, n)`` the
    output of a :class:`_PrefixExtractor` (the input of the last ``n`` blocks, not normalised)."""
    from .sources import extract_features

    keys = list(dict.fromkeys((p, bool(r.flip) and use_flip) for recs in records_list for r in recs for p in (r.source, r.target)))
    what = "weak-stage1" if prefix is None else "weak-prefix"
    key = {"what": what, "backbone": backbone_fp, "image_size": list(size), "root": str(image_root),
           "images": paths_digest(f"{p}|{int(f)}" for p, f in keys), "n": len(keys)}
    if prefix is not None:
        key["last_blocks"] = int(prefix[1])
    key["extractor"] = "traced-channels-last" if ctx.device.type == "cpu" else "eager"
    if cfg.amp != "none" and prefix is None:  # features made under autocast (eager) never mix with float32 ones
        key["extractor"], key["amp"] = "eager", cfg.amp

    def compute():
        # the backbone (or its prefix) is frozen whenever features are cached: its traced,
        # BN-folded copy gives the same features up to round-off, faster (weakalign.models.inference)
        from ..models.inference import optimize_for_inference

        extractor = optimize_for_inference(model, int(cfg.batch_size)) if prefix is None else prefix[0]
        return extract_features(extractor, _UniqueImages(keys, image_root, size), ("image",),
                                int(cfg.batch_size), int(cfg.num_workers), ctx.device, f"features weak pairs ({what})", progress)

    obj = cached(ctx, cache_path(cfg.cache_dir, what, key), key, compute)
    return {k: i for i, k in enumerate(keys)}, obj["image"]


# ---------------------------------------------------------------------------------------------
# model, step, task
# ---------------------------------------------------------------------------------------------

def load_stage(path: Path, kind: str, backbone_factory=None) -> nn.Module:
    """A strong one-stage checkpoint (``kind`` = affine | tps)."""
    from ..models import CNNGeometric, ModelConfig, load_checkpoint
    from ..models.checkpoints import safe_load

    if not path.is_file():
        raise _user_error(f"strong {kind} checkpoint {path} not found; create it with `weakalign train-strong --model {kind}` "
                          f"(or `dvc repro train_strong@{kind}`)")
    if backbone_factory is not None:
        ckpt = safe_load(path)
        model = CNNGeometric(ckpt["geometric_model"], ModelConfig.from_dict(ckpt["config"]), backbone=backbone_factory())
        model.load_state_dict(ckpt["state_dict"])
    else:
        model, _ = load_checkpoint(path)
    if model.geometric_model != kind:
        raise _user_error(f"{path} holds a {model.geometric_model} model, expected {kind}")
    return model


def backbone_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's blocks in execution order: ``nn.Sequential`` containers are expanded,
    parameter-free modules (ReLU, pooling) dropped. ResNet: bottlenecks; EfficientNet:
    inverted-residual blocks; VGG: convolutions."""
    body = getattr(backbone, "body", backbone)
    out: list[nn.Module] = []

    def walk(m):
        if isinstance(m, nn.Sequential):
            for c in m.children():
                walk(c)
        elif any(True for _ in m.parameters()):
            out.append(m)

    walk(body)
    return out


def unfreeze_last_blocks(backbone: nn.Module, n: int) -> int:
    """Make the last ``n`` of :func:`backbone_blocks` trainable; returns how many there were."""
    blocks = backbone_blocks(backbone)
    n = max(0, min(int(n), len(blocks)))
    for b in blocks[len(blocks) - n:]:
        for p in b.parameters():
            p.requires_grad_(True)
    return n


def _leaves(module: nn.Module):
    """Modules of nested ``nn.Sequential`` containers in execution order (containers expanded)."""
    if isinstance(module, nn.Sequential):
        for child in module.children():
            yield from _leaves(child)
    else:
        yield module


def split_backbone(backbone: nn.Module, n: int) -> tuple[nn.Sequential, nn.Sequential]:
    """``(prefix, suffix)`` with ``suffix(prefix(x)) == backbone.body(x)``: ``suffix`` starts at
    the first of the last ``n`` :func:`backbone_blocks` (the blocks ``train_parts: last_blocks``
    trains) and holds everything after it. Both share the backbone's modules (no copy), so
    training ``suffix`` trains the backbone. ``n`` is clamped to ``1 .. len(blocks)``."""
    body = getattr(backbone, "body", backbone)
    blocks = backbone_blocks(backbone)
    if not blocks:
        raise ValueError("backbone has no block with parameters")
    n = max(1, min(int(n), len(blocks)))
    leaves = list(_leaves(body))
    first = blocks[len(blocks) - n]
    k = next(i for i, m in enumerate(leaves) if m is first)
    return nn.Sequential(*leaves[:k]), nn.Sequential(*leaves[k:])


class _PrefixExtractor(nn.Module):
    """``extract(image01)`` = the frozen prefix of the backbone (the input of the trained blocks),
    for :func:`weakalign.training.sources.extract_features`; traced for speed on the CPU."""

    def __init__(self, model, prefix: nn.Sequential):
        super().__init__()
        from ..models.backbones import Backbone
        from ..models.inference import optimized_backbone

        bb = model.feature_extraction.backbone
        self.normalize = bb.normalize
        head = Backbone(f"{bb.name}-prefix", prefix, 0, bb.mean, bb.std)
        if next(model.parameters()).device.type == "cpu":
            h, w = model.config.image_size
            example = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0))
            head = optimized_backbone(head, bb.normalize(example))
        self.head = head

    def forward(self, x_normalized: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.head(x_normalized)

    def extract(self, image01: torch.Tensor) -> torch.Tensor:
        return self(self.normalize(image01))


def set_trainable(model, parts: str, last_blocks: int) -> list[str]:
    """requires_grad per ``train_parts``; returns a short description of what trains."""
    for p in model.parameters():
        p.requires_grad_(parts == "all")
    for head in (model.regression, model.regression2):
        for p in head.parameters():
            p.requires_grad_(True)
    desc = ["regression", "regression2"]
    if parts == "last_blocks":
        n = unfreeze_last_blocks(model.feature_extraction.backbone, last_blocks)
        desc.append(f"last {n} backbone block(s)")
    elif parts == "all":
        desc.append("backbone")
    return desc


class WeakStep(nn.Module):
    """batch -> loss. ``stage2_features`` (optional): a frozen, faster copy of the feature
    extraction run without gradient on the affine-warped source (``stage2_backbone_grad: false``;
    the reference back-propagates through the backbone into the warp). With ``suffix`` (the
    trained last blocks of :func:`split_backbone`, ``train_parts: last_blocks``) the model's
    features are ``suffix(p)`` of the cached prefix outputs ``p_src``/``p_tgt``, and
    ``stage2_features`` is the frozen prefix alone (run without gradient; ``suffix`` after it
    keeps its gradient). ``backbone_frozen``: cached ``f_src``/``f_tgt`` are the model's own
    features (otherwise they are the initial backbone's, used only to score held-out pairs)."""

    def __init__(self, model, scorer: TwoStageInlierScore, device, stage2_features=None, suffix: nn.Module | None = None,
                 backbone_frozen: bool = True):
        super().__init__()
        self.model, self.scorer, self.device = model, scorer, device
        self._stage2 = stage2_features
        self._suffix = [suffix]  # a list: the blocks belong to the model, not to this module
        self.backbone_frozen = bool(backbone_frozen)

    def tail(self, prefix_features: torch.Tensor) -> torch.Tensor:
        """The model's features from the prefix output (trained blocks, then L2 normalisation)."""
        from ..models.correlation import feature_l2norm

        f = self._suffix[0](prefix_features)
        return feature_l2norm(f) if self.model.feature_extraction.l2norm else f

    def stage2_features(self, x: torch.Tensor) -> torch.Tensor | None:
        with torch.no_grad():
            f = self._stage2(x)
        return self.tail(f) if self._suffix[0] is not None else f

    @property
    def stage2(self):
        return self.stage2_features if self._stage2 is not None else None

    def features(self, batch):
        """``(f_src, f_tgt)`` the model runs on (``None``: computed from the images)."""
        if "p_src" in batch:
            return self.tail(batch["p_src"].to(self.device)), self.tail(batch["p_tgt"].to(self.device))
        if "f_src" in batch and self.backbone_frozen:
            return batch["f_src"].to(self.device), batch["f_tgt"].to(self.device)
        return None, None

    def forward_model(self, batch):
        src = batch["source_image"].to(self.device)
        fs, ft = self.features(batch)
        tgt = batch["target_image"].to(self.device) if fs is None else None
        return self.model(src, tgt, f_src=fs, f_tgt=ft, stage2_features=self.stage2)

    def scores(self, batch, scorer=None) -> torch.Tensor:
        out = self.forward_model(batch)
        return (scorer or self.scorer)(out.theta_aff, out.theta_aff_tps, out.corr_aff)

    def forward(self, batch) -> torch.Tensor:
        return -self.scores(batch).mean()


@torch.no_grad()
def mean_scores(step: WeakStep, dataset, ctx, batch_size: int, scorers=None, identity: bool = False) -> list[float]:
    """Mean per-pair two-stage soft-inlier score over ``dataset`` for each of ``scorers``
    (default: the training loss's), from one forward pass per batch (sharded over ranks,
    all-reduced). ``identity=True`` scores the identity transformation on the stage-1
    correlation instead of the model's estimates."""
    from torch.utils.data import DataLoader, Subset

    from ..geometry import affine_identity, tps_identity

    scorers = scorers or [step.scorer]
    m = step.model
    m.eval()
    idx = engine.shard(len(dataset), ctx)
    totals, count = [0.0] * len(scorers), 0
    if len(idx):
        for batch in DataLoader(Subset(dataset, list(idx)), batch_size=batch_size, shuffle=False):
            # the score is taken on the initial backbone's correlation when it is cached (a trained
            # backbone is then judged on the same matches as a frozen one), else on the model's own
            yardstick = m.correlation(batch["f_src"].to(step.device), batch["f_tgt"].to(step.device)) if "f_src" in batch else None
            if identity:
                if yardstick is None:
                    out = step.forward_model(batch)
                    yardstick = out.corr_aff
                corr = yardstick
                n = corr.shape[0]
                th_aff, th_tps = affine_identity(n, device=corr.device), tps_identity(n, device=corr.device)
            else:
                out = step.forward_model(batch)
                corr, th_aff, th_tps = (out.corr_aff if yardstick is None else yardstick), out.theta_aff, out.theta_aff_tps
            for i, sc in enumerate(scorers):
                totals[i] += float(sc(th_aff, th_tps, corr).double().sum())
            count += int(corr.shape[0])
    reduced = ctx.all_reduce_sum(totals + [float(count)])
    return [t / max(reduced[-1], 1.0) for t in reduced[:-1]]


def mean_score(step: WeakStep, dataset, ctx, batch_size: int, scorer=None, identity: bool = False) -> float:
    return mean_scores(step, dataset, ctx, batch_size, [scorer or step.scorer], identity)[0]


def uses_val_pck(cfg: TrainWeak) -> bool:
    """``selection`` is PCK@0.1 on the PF-PASCAL validation pairs (``pf_pascal_val_pck`` or its
    paper-profile name ``reference``)."""
    return cfg.selection in ("pf_pascal_val_pck", "reference")


def pf_pascal_val_pck(model, ctx, batch_size: int, max_pairs: int = 0) -> float:
    """PCK@0.1 (PF-PASCAL protocol: images and points at 224 x 224, L = 224, per pair) of the
    two-stage model on the PF-PASCAL validation pairs (``max_pairs`` > 0: that many evenly
    spaced pairs; rank 0 computes, then broadcasts)."""
    value = None
    if ctx.main:
        from ..data.datasets import PFPascalDataset, evenly_spaced
        from ..evaluation.metrics import pck_table
        from ..evaluation.pck import PCKProtocol
        from ..evaluation.predict import predict_pairs

        ds = evenly_spaced(PFPascalDataset(split="val"), max_pairs)
        pred = predict_pairs(model, ds, batch_size=batch_size, device=ctx.device, progress=False)
        value = pck_table(pred, PCKProtocol("image_224", (0.1,), "per_pair"), "affine_tps")["result"].pck[0.1]
    return float(ctx.broadcast_object(value))


class WeakTask(engine.Task):
    def __init__(self, model, step, train_dataset, val_dataset, ctx, cfg, report_dataset=None):
        self.model, self.step_module, self.train_dataset = model, step, train_dataset
        self.val_dataset, self.ctx, self.cfg = val_dataset, ctx, cfg
        self.report_dataset = report_dataset
        sel = cfg.selection
        self.selection_mode = {"heldout_weak_score": "max", "pf_pascal_val_pck": "max", "reference": "max", "last_epoch": "last"}[sel]
        self.selection_name = {"heldout_weak_score": "val_score", "pf_pascal_val_pck": "val_pck", "reference": "val_pck",
                               "last_epoch": "val_score"}[sel]

    def set_train_mode(self):
        self.model.train(bool(self.cfg.update_bn_buffers))

    def set_epoch(self, epoch):
        self.train_dataset.set_epoch(epoch)

    def validate(self):
        bs = int(self.cfg.batch_size)
        score = mean_score(self.step_module, self.val_dataset, self.ctx, bs)
        out = {"value": score}
        if uses_val_pck(self.cfg):
            out = {"value": pf_pascal_val_pck(self.model, self.ctx, bs, int(self.cfg.data.max_val_pairs)), "val_score": score}
        if self.report_dataset is not None:
            # the held-out score curve (odd rows): reported per epoch, never used for selection
            out["heldout_score"] = mean_score(self.step_module, self.report_dataset, self.ctx, bs)
        return out


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------

def train_weak(cfg: TrainWeak | dict, *, resume: str = "never", max_steps: int = 0, progress: bool = True,
               backbone_factory=None, on_step=None, ctx: engine.DistContext | None = None) -> dict:
    """Fine-tune the two-stage model with the soft-inlier loss; returns the metrics dict.

    ``cfg``: the resolved ``train_weak`` block (:func:`weakalign.training.params.resolve`, a
    variant already merged; a complete dict is checked and converted by
    :func:`weakalign.config.as_block`)."""
    cfg = as_block("train_weak", cfg)
    t0 = time.perf_counter()
    with engine.distributed_context(cfg, ctx, key="train_weak.device") as ctx:
        return _train_weak(cfg, ctx, resume, max_steps, progress and ctx.main, backbone_factory, on_step, t0)


def _train_weak(cfg, ctx, resume, max_steps, progress, backbone_factory, on_step, t0):
    from ..atomic import write_json
    from ..models import TwoStageCNNGeometric
    from ..models.checkpoints import save_checkpoint

    variant = cfg.variant
    label = weak_label(cfg)
    out_spec = cfg.outputs if variant == "default" else cfg.variant_outputs
    outs = {k: engine.resolve_path(v, variant=variant) for k, v in out_spec.to_dict().items()}
    data, seed = cfg.data, int(cfg.seed)

    if uses_val_pck(cfg):
        from ..data.datasets import DatasetNotAvailable, PFPascalDataset

        try:
            PFPascalDataset(split="val")
        except DatasetNotAvailable as exc:
            raise _user_error(f"train_weak.selection {cfg.selection} needs the PF-PASCAL validation pairs and images: {exc}") from exc

    train_recs, train_root = pair_list(data.train, data.root, "train_weak.data.train", data.use_flip)
    val_recs, val_root = pair_list(data.val, data.root, "train_weak.data.val", data.use_flip)
    train_recs = [train_recs[i] for i in subsample(len(train_recs), int(data.max_train_pairs), seed, "weak-train-pairs")]
    val_recs = [val_recs[i] for i in subsample(len(val_recs), int(data.max_val_pairs), seed, "weak-val-pairs")]
    sel_recs, report_recs = val_recs[0::2], val_recs[1::2]
    if not train_recs or not sel_recs or not report_recs:
        raise _user_error(f"train_weak: need >= 1 training pair and >= 2 held-out pairs (have {len(train_recs)}, {len(val_recs)})")
    check_images([train_root / p for r in train_recs for p in (r.source, r.target)], "train_weak.data.train")
    check_images([val_root / p for r in val_recs for p in (r.source, r.target)], "train_weak.data.val")

    engine.seed_everything(seed)
    init = {k: engine.resolve_path(getattr(cfg.init, k)) for k in ("affine", "tps")}
    aff, tps = load_stage(init["affine"], "affine", backbone_factory), load_stage(init["tps"], "tps", backbone_factory)
    try:
        model = TwoStageCNNGeometric.from_stages(aff, tps)
    except ValueError as exc:
        raise _user_error(f"{init['affine']} and {init['tps']} cannot be combined: {exc}") from exc
    del aff, tps
    model = set_backbone_amp(model.to(ctx.device), cfg.amp)
    trains = set_trainable(model, cfg.train_parts, int(cfg.last_blocks))
    size = tuple(model.config.image_size)
    bb_fp = module_fingerprint(model.feature_extraction)
    h, w = model.feature_size

    backbone_frozen = cfg.train_parts == "regressors" and not cfg.update_bn_buffers
    # last_blocks with a frozen prefix (BN buffers fixed): the prefix output of every fixed image is
    # cached and only the trained blocks run per step on it (the same model and gradients)
    split = None
    if cfg.train_parts == "last_blocks" and not cfg.update_bn_buffers and bool(cfg.cache_features):
        prefix_module, suffix_module = split_backbone(model.feature_extraction.backbone, int(cfg.last_blocks))
        split = (_PrefixExtractor(model, prefix_module), int(cfg.last_blocks))  # traced once, frozen
    cache_train = bool(cfg.cache_features) and (backbone_frozen or split is not None) and not data.random_crop
    # held-out pairs: the initial backbone's features are cached whatever trains; they are the
    # model's input when the backbone is frozen and the scoring correlation always (mean_scores)
    cache_val = bool(cfg.cache_features)
    use_flip = bool(data.use_flip)
    train_feats = (stage1_features(ctx, model, [train_recs], train_root, size, use_flip, cfg, bb_fp, progress, split)
                   if cache_train else None)
    val_feats = stage1_features(ctx, model, [val_recs], val_root, size, use_flip, cfg, bb_fp, progress) if cache_val else None
    val_prefix = stage1_features(ctx, model, [val_recs], val_root, size, use_flip, cfg, bb_fp, progress, split) if split else None
    val_images = not backbone_frozen and split is None  # a trained backbone without prefix cache runs on the images
    train_ds = WeakPairs(train_recs, train_root, size, use_flip, bool(data.random_crop), seed, "train",
                         None if split else train_feats, prefix=train_feats if split else None)
    sel_ds = WeakPairs(sel_recs, val_root, size, use_flip, False, seed, "val", val_feats, val_prefix, val_images)
    report_ds = WeakPairs(report_recs, val_root, size, use_flip, False, seed, "val", val_feats, val_prefix, val_images)

    loss_kw = cfg.loss.to_dict()
    scorer = TwoStageInlierScore(h, w, **loss_kw).to(ctx.device)
    ref_scorer = TwoStageInlierScore(h, w, **REFERENCE_LOSS).to(ctx.device)
    stage2 = None
    if not bool(cfg.stage2_backbone_grad):
        if not backbone_frozen and split is None:
            raise _user_error("train_weak: stage2_backbone_grad: false needs a frozen backbone (train_parts: regressors, "
                              "update_bn_buffers: false) or a frozen prefix (train_parts: last_blocks, cache_features: true)")
        from ..models.inference import optimize_for_inference

        if split is None:
            stage2 = optimize_for_inference(model, int(cfg.batch_size)).feature_extraction
        else:  # frozen prefix without gradient, then the trained blocks with it (WeakStep.stage2_features)
            stage2 = split[0]
    step = WeakStep(model, scorer, ctx.device, stage2, suffix=suffix_module if split else None, backbone_frozen=backbone_frozen)
    bs = int(cfg.batch_size)
    pair_of_scorers = [scorer, ref_scorer]
    before = dict(zip(("score", "score_reference_loss"), mean_scores(step, report_ds, ctx, bs, pair_of_scorers)))
    identity = dict(zip(("score", "score_reference_loss"), mean_scores(step, report_ds, ctx, bs, pair_of_scorers, identity=True)))

    task = WeakTask(model, step, train_ds, sel_ds, ctx, cfg, report_dataset=report_ds)
    fp = fingerprint(cfg, {"init_affine": module_fingerprint(model.regression), "init_tps": module_fingerprint(model.regression2),
                           "backbone": bb_fp, "train": paths_digest(f"{r.source}|{r.target}|{r.flip}" for r in train_recs),
                           "val": paths_digest(f"{r.source}|{r.target}|{r.flip}" for r in val_recs)})
    selection = {
        "criterion": cfg.selection,
        "uses_keypoints": uses_val_pck(cfg),
        "description": {
            "heldout_weak_score": "mean two-stage soft-inlier score (this run's loss) on the even rows of the held-out pair list; no keypoints",
            "pf_pascal_val_pck": "PCK@0.1 on the PF-PASCAL validation pairs (reference code's choice; uses keypoint annotations)",
            "reference": "the original's: PCK@0.1 on the PF-PASCAL validation pairs (= pf_pascal_val_pck; uses keypoint annotations)",
            "last_epoch": "no selection: weights after the last epoch",
        }[cfg.selection],
    }
    meta = {"stage": "train-weak", "variant": variant, "label": label, "profile": cfg.profile, "selection": selection,
            "loss": loss_kw, "train_parts": trains, "params_fingerprint": fp}
    fit_cfg = engine.FitConfig(
        seed=seed, batch_size=bs, schedule=cfg.schedule, weight_decay=float(cfg.weight_decay),
        num_workers=int(cfg.num_workers), checkpoint_every=int(cfg.checkpoint_every), state_path=outs["state"],
        fingerprint=fp, meta=meta, desc=f"train-weak {variant}", resume=resume, max_steps=max_steps, progress=progress,
        on_step=on_step,
    )
    prepare_seconds = time.perf_counter() - t0
    state = engine.fit(task, fit_cfg, ctx)

    after = dict(zip(("score", "score_reference_loss"), mean_scores(step, report_ds, ctx, bs, pair_of_scorers)))
    epochs = len(state["history"])
    metrics = {
        "stage": "train-weak",
        "variant": variant,
        "label": label,
        "profile": cfg.profile,
        "loss": loss_kw,
        "train_parts": trains,
        "update_bn_buffers": bool(cfg.update_bn_buffers),
        "stage1_features_cached": cache_train,
        "stage1_cache": "prefix (input of the trained blocks)" if split and cache_train else ("features" if cache_train else "none"),
        "heldout_scored_on": "initial backbone's correlation" if cache_val else "the model's own correlation",
        "stage2_backbone_grad": bool(cfg.stage2_backbone_grad),
        "train_pairs": len(train_ds),
        "epochs": epochs,
        "steps": state["global_step"],
        "heldout_pairs": len(report_ds),
        "heldout_score_before": before["score"],
        "heldout_score_after": after["score"],
        "heldout_score_gain": after["score"] - before["score"],
        "heldout_score_identity": identity["score"],
        "heldout_score_reference_loss_before": before["score_reference_loss"],
        "heldout_score_reference_loss_after": after["score_reference_loss"],
        "selection": {**selection, "best_epoch": state["best"]["epoch"], "best_value": state["best"]["value"], "selection_pairs": len(sel_ds)},
        "seconds": round(time.perf_counter() - t0, 1),
        "prepare_seconds": round(prepare_seconds, 1),
        "training_seconds": round(state["elapsed"], 1),
        "params_fingerprint": fp,
    }
    if ctx.main:
        save_checkpoint(outs["checkpoint"], model, meta={**meta, "metrics": metrics})
        write_json(outs["metrics"], metrics)
        engine.write_curves(state, task.selection_name, outs.get("plot"), outs.get("steps_plot"),
                            minutes_offset=prepare_seconds / 60.0)
        from .strong import _rel

        print(f"train-weak {variant} ({label}): {epochs} epochs, {len(train_ds):,} pairs, held-out soft-inlier score "
              f"{before['score']:.4g} -> {after['score']:.4g} (identity {identity['score']:.4g}), selection {cfg.selection}, "
              f"{engine.format_duration(metrics['seconds'])} -> {_rel(outs['checkpoint'])}", flush=True)
    ctx.barrier()
    return metrics


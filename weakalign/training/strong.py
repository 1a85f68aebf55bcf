"""``weakalign train-strong``: CNNGeometric with strong synthetic supervision (CVPR 2017).

One-stage affine or TPS model; the backbone is frozen (the reference optimises
``FeatureRegression`` only and keeps ``FeatureExtraction`` in eval mode), the regression head
trains in train mode with Adam on the transformed-grid loss. Pairs come from
:mod:`weakalign.training.synthetic`.

``pairs: fixed`` (default profile): each training photo gets ``pairs_per_image`` seeded random
transformations drawn once, like the reference's default training CSV of random
transformations; the frozen backbone's features of the source crops (shared by the affine and
the TPS training) and of the warped targets are computed once and cached on disk, so an epoch
only runs correlation + regression. ``pairs: random`` (paper profile) draws new transformations
every epoch (``--random-sample 1``) and runs the backbone at every step.

Validation (model selection) and the held-out report use fixed seeded pairs of the validation
image list: even rows select, odd rows report (never used for selection). The report compares
the selected model's grid loss with the identity transformation's. ``selection: reference``
(paper profile) selects on every row instead, as the original ``train_strong.py`` did with its
synthetic ``test.csv``; the "held-out" numbers are then those of the selection rows
(``heldout_is_selection`` in the metrics). Unlike the original, whose test pairs were drawn anew
each epoch with ``--random-sample``, the selection pairs are seeded and drawn once.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from ..devices import set_backbone_amp
from ..losses import TransformedGridLoss
from . import engine
from ..config import as_block
from .params import TrainStrong, fingerprint
from .sources import (
    cache_path,
    cached,
    check_images,
    extract_features,
    image_list,
    module_fingerprint,
    paths_digest,
    portable_paths_digest,
    subsample,
)
from .mirror import mirror_features, mirror_theta
from .synthetic import SyntheticPairs, keyed_generator, warp_batch


class CachedPairs(torch.utils.data.Dataset):
    """Pairs as cached features: source features per photo, target features per pair.

    ``mirror_prob > 0`` (training only) mirrors a pair left-right with that probability
    (:mod:`weakalign.training.mirror`); the draw is a pure function of ``(seed, epoch, index)``,
    so data order and resuming do not change it."""

    def __init__(self, f_src: torch.Tensor, f_tgt: torch.Tensor, theta: torch.Tensor, pairs_per_image: int,
                 mirror_prob: float = 0.0, seed: int = 0, grid_size: int = 3):
        self.f_src, self.f_tgt, self.theta, self.k = f_src, f_tgt, theta, int(pairs_per_image)
        self.mirror_prob, self.seed, self.grid_size, self.epoch = float(mirror_prob), int(seed), int(grid_size), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def with_mirroring(self, prob: float, seed: int, grid_size: int = 3) -> CachedPairs:
        return CachedPairs(self.f_src, self.f_tgt, self.theta, self.k, prob, seed, grid_size)

    def __len__(self):
        return self.f_tgt.shape[0]

    def mirrored(self, i: int) -> bool:
        if self.mirror_prob <= 0.0:
            return False
        u = torch.rand((), generator=keyed_generator(self.seed, "mirror", self.epoch, int(i)))
        return bool(u < self.mirror_prob)

    def __getitem__(self, i):
        fs, ft, th = self.f_src[i // self.k], self.f_tgt[i], self.theta[i]
        if self.mirrored(i):
            fs, ft, th = mirror_features(fs), mirror_features(ft), mirror_theta(th, self.grid_size)
        return {"f_src": fs, "f_tgt": ft, "theta": th}


class StrongStep(nn.Module):
    """batch -> grid loss (features from the cache, or from the frozen backbone).

    A batch of decoded photos (``pairs: random``: ``photo`` + ``theta``) is first turned into
    synthetic pairs on the training device by :func:`~weakalign.training.synthetic.warp_batch`
    with the ``warp`` settings (kind, output size, padding and crop factors)."""

    def __init__(self, model: nn.Module, loss: nn.Module, device, warp: dict | None = None):
        super().__init__()
        self.model, self.loss, self.device, self.warp = model, loss, device, warp

    def predict(self, batch) -> torch.Tensor:
        if "photo" in batch:
            batch = warp_batch(batch, device=self.device, **self.warp)
        if "f_src" in batch:
            fs, ft = batch["f_src"].to(self.device), batch["f_tgt"].to(self.device)
        else:
            with torch.no_grad():
                fs = self.model.extract(batch["source_image"].to(self.device))
                ft = self.model.extract(batch["target_image"].to(self.device))
        return self.model.forward_features(fs, ft)[0]

    def forward(self, batch) -> torch.Tensor:
        return self.loss(self.predict(batch), batch["theta"].to(self.device))


class StrongTask(engine.Task):
    selection_mode = "min"
    selection_name = "val_loss"

    def __init__(self, model, step, train_dataset, val_dataset, ctx, batch_size, heldout_dataset=None):
        self.model, self.step_module, self.train_dataset = model, step, train_dataset
        self.val_dataset, self.ctx, self.batch_size = val_dataset, ctx, batch_size
        self.heldout_dataset = heldout_dataset

    def set_train_mode(self):
        self.model.eval()  # frozen backbone: BN statistics fixed (reference)
        self.model.regression.train()

    def set_epoch(self, epoch):
        if hasattr(self.train_dataset, "set_epoch"):
            self.train_dataset.set_epoch(epoch)

    def validate(self):
        out = {"value": grid_loss_mean(self.step_module, self.val_dataset, self.ctx, self.batch_size)}
        if self.heldout_dataset is self.val_dataset:  # selection: reference (the same rows)
            out["heldout_grid_loss"] = out["value"]
        elif self.heldout_dataset is not None:
            # reported per epoch for the loss-vs-minutes curve; never used for selection
            out["heldout_grid_loss"] = grid_loss_mean(self.step_module, self.heldout_dataset, self.ctx, self.batch_size)
        return out


@torch.no_grad()
def grid_loss_mean(step: StrongStep, dataset: CachedPairs, ctx, batch_size: int, identity: bool = False) -> float:
    """Mean per-pair grid loss over ``dataset`` (sharded over ranks, all-reduced)."""
    from ..geometry import affine_identity, tps_identity

    step.model.eval()
    idx = engine.shard(len(dataset), ctx)
    total, count = 0.0, 0
    for i in range(idx.start, idx.stop, batch_size):
        j = min(i + batch_size, idx.stop)
        batch = {"f_src": dataset.f_src[[k // dataset.k for k in range(i, j)]], "f_tgt": dataset.f_tgt[i:j], "theta": dataset.theta[i:j]}
        gt = batch["theta"].to(step.device)
        if identity:
            n = j - i
            theta = affine_identity(n, device=gt.device) if gt.shape[1] == 6 else tps_identity(n, device=gt.device)
        else:
            theta = step.predict(batch)
        total += float(step.loss(theta, gt)) * (j - i)
        count += j - i
    s, c = ctx.all_reduce_sum([total, float(count)])
    return s / max(c, 1.0)


def _feature_extractor(model, batch_size: int):
    """The frozen backbone for feature caching: a traced, BN-folded copy on the CPU
    (:func:`weakalign.models.inference.optimize_for_inference`), the model itself elsewhere."""
    from ..models.inference import optimize_for_inference

    fast = optimize_for_inference(model, batch_size)
    if fast is not model:
        fast.extractor_name = "traced-channels-last"
    return fast


def _build_model(kind: str, cfg: TrainStrong, backbone_factory=None):
    from ..models import ModelConfig, build_model

    m = cfg.model
    config = ModelConfig(backbone=m.backbone, image_size=tuple(m.image_size), kernel_sizes=tuple(m.kernel_sizes), channels=tuple(m.channels))
    backbone = backbone_factory() if backbone_factory is not None else None
    try:
        return build_model(kind, config, backbone_weights=m.backbone_weights, backbone=backbone)
    except FileNotFoundError as exc:  # BackboneWeightsNotFound
        from weakalign.cli import UserError

        raise UserError(str(exc)) from exc


def _pair_features(ctx, model, kind, paths, cfg, tag, backbone_fp, progress, pairs_per_image=1):
    """(source features per photo, target features per pair, theta per pair), cached on disk.

    ``model`` only extracts features here: on the CPU it is the traced, BN-folded copy of
    :func:`weakalign.models.inference.optimize_for_inference` (same features up to round-off,
    about 1.6x faster), so the cache key records which extractor made them."""
    data, seed = cfg.data, int(cfg.seed)
    out_size = tuple(cfg.model.image_size)
    geo = {k: getattr(data, k) for k in ("load_size", "padding_factor", "crop_factor")}
    common = {"backbone": backbone_fp, "extractor": getattr(model, "extractor_name", "eager"),
              "image_size": list(out_size), "images": paths_digest(paths), "n": len(paths), **geo}
    if cfg.amp != "none":  # features made under autocast never mix with float32 ones
        common["amp"] = cfg.amp
    bs, nw, dev = int(cfg.batch_size), int(cfg.num_workers), ctx.device
    src_key = {"what": "synthetic-source", **common}
    src = cached(ctx, cache_path(cfg.cache_dir, "synth-src", src_key), src_key, lambda: extract_features(
        model, SyntheticPairs(paths, kind, data, out_size, seed, tag, source_only=True), ("source_image",), bs, nw, dev,
        f"features {tag} sources", progress))
    rnd = {k: getattr(data, k) for k in ("random_t", "random_s", "random_alpha")} if kind == "affine" else {"random_t_tps": data.random_t_tps}
    tgt_key = {"what": "synthetic-target", "kind": kind, "seed": seed, "tag": tag, "pairs_per_image": pairs_per_image, **rnd, **common}
    tgt = cached(ctx, cache_path(cfg.cache_dir, f"synth-tgt-{kind}", tgt_key), tgt_key, lambda: extract_features(
        model, SyntheticPairs(paths, kind, data, out_size, seed, tag, pairs_per_image=pairs_per_image, target_only=True),
        ("target_image",), bs, nw, dev,
        f"features {tag} {kind} targets", progress))
    return CachedPairs(src["source_image"], tgt["target_image"], tgt["theta"], pairs_per_image)


def train_strong(cfg: TrainStrong | dict, kind: str, *, resume: str = "never", max_steps: int = 0, progress: bool = True,
                 backbone_factory=None, on_step=None, ctx: engine.DistContext | None = None) -> dict:
    """Train the one-stage ``kind`` model; returns the metrics dict (also written to disk).

    ``cfg``: the resolved ``train_strong`` block (:func:`weakalign.training.params.resolve`; a
    complete dict is checked and converted by :func:`weakalign.config.as_block`).

    ``backbone_factory`` (tests) replaces the registered backbone; ``on_step(state)`` is called
    after every step (tests use it to simulate a crash)."""
    if kind not in ("affine", "tps"):
        from weakalign.cli import UserError

        raise UserError(f"--model must be affine or tps, got {kind!r}")
    cfg = as_block("train_strong", cfg)
    t0 = time.perf_counter()
    with engine.distributed_context(cfg, ctx, key="train_strong.device") as ctx:
        return _train_strong(cfg, kind, ctx, resume, max_steps, progress and ctx.main, backbone_factory, on_step, t0)


def _train_strong(cfg, kind, ctx, resume, max_steps, progress, backbone_factory, on_step, t0):
    from ..atomic import write_json
    from ..models.checkpoints import save_checkpoint

    outs = {k: engine.resolve_path(v, model=kind) for k, v in cfg.outputs.to_dict().items()}
    data = cfg.data
    seed = int(cfg.seed)
    train_paths = image_list(data.train, data.root, "train_strong.data.train")
    val_paths = image_list(data.val, data.root, "train_strong.data.val")
    train_paths = [train_paths[i] for i in subsample(len(train_paths), int(data.max_train_images), seed, "train-images")]
    val_paths = [val_paths[i] for i in subsample(len(val_paths), int(data.max_val_images), seed, "val-images")]
    reference = cfg.selection == "reference"
    # reference: every row selects (the original's test.csv) and the report is on the same rows
    sel_paths, heldout_paths = (val_paths, val_paths) if reference else (val_paths[0::2], val_paths[1::2])
    if not sel_paths or not heldout_paths:
        from weakalign.cli import UserError

        need = 1 if reference else 2
        raise UserError(f"train_strong: need at least {need} validation image(s) in data.val (have {len(val_paths)})")
    check_images(train_paths + val_paths, "train_strong")

    engine.seed_everything(seed)
    model = set_backbone_amp(_build_model(kind, cfg, backbone_factory).to(ctx.device), cfg.amp)
    for p in model.feature_extraction.parameters():
        p.requires_grad_(False)
    bb_fp = module_fingerprint(model.feature_extraction)
    extractor = _feature_extractor(model, int(cfg.batch_size))

    if cfg.pairs == "fixed":
        train_ds = _pair_features(ctx, extractor, kind, train_paths, cfg, "train", bb_fp, progress, int(cfg.pairs_per_image))
        train_ds = train_ds.with_mirroring(float(cfg.mirror_prob), seed, model.config.tps_grid_size)
    else:
        # workers decode photos; crops and warps are made per batch on the training device
        train_ds = SyntheticPairs(train_paths, kind, data, tuple(cfg.model.image_size), seed, "train",
                                  pairs_per_image=int(cfg.pairs_per_image), fresh_each_epoch=True, warp_on_device=True)
    val_ds = _pair_features(ctx, extractor, kind, sel_paths, cfg, "val", bb_fp, progress)
    heldout_ds = val_ds if reference else _pair_features(ctx, extractor, kind, heldout_paths, cfg, "heldout", bb_fp, progress)
    del extractor
    prepare_seconds = time.perf_counter() - t0

    loss = TransformedGridLoss(kind, tps_grid_size=model.config.tps_grid_size)
    # not loss.to(device): TransformedGridLoss defines a method named _apply, which shadows
    # nn.Module._apply; move its one buffer by hand
    loss.points = loss.points.to(ctx.device)
    warp = {"kind": kind, "out_size": tuple(cfg.model.image_size),
            "padding_factor": data.padding_factor, "crop_factor": data.crop_factor}
    step = StrongStep(model, loss, ctx.device, warp)
    task = StrongTask(model, step, train_ds, val_ds, ctx, int(cfg.batch_size), heldout_dataset=heldout_ds)
    fp = fingerprint(cfg, {"kind": kind, "backbone": bb_fp, "train": portable_paths_digest(train_paths),
                           "val": portable_paths_digest(val_paths)})
    meta = {"stage": "train-strong", "geometric_model": kind, "profile": cfg.profile, "params_fingerprint": fp}
    fit_cfg = engine.FitConfig(
        seed=seed, batch_size=int(cfg.batch_size), schedule=cfg.schedule, weight_decay=float(cfg.weight_decay),
        num_workers=int(cfg.num_workers), checkpoint_every=int(cfg.checkpoint_every), state_path=outs["state"],
        fingerprint=fp, meta=meta, desc=f"train-strong {kind}", resume=resume, max_steps=max_steps, progress=progress,
        on_step=on_step,
    )
    state = engine.fit(task, fit_cfg, ctx)

    bs = int(cfg.batch_size)
    heldout = grid_loss_mean(step, heldout_ds, ctx, bs)
    heldout_id = grid_loss_mean(step, heldout_ds, ctx, bs, identity=True)
    val_id = grid_loss_mean(step, val_ds, ctx, bs, identity=True)
    epochs = len(state["history"])
    metrics = {
        "stage": "train-strong",
        "geometric_model": kind,
        "profile": cfg.profile,
        "backbone": cfg.model.backbone,
        "pairs": cfg.pairs,
        "train_images": len(train_paths),
        "train_pairs": len(train_ds) if cfg.pairs == "fixed" else len(train_paths) * int(cfg.pairs_per_image),
        "pairs_seen": epochs * len(train_ds),
        "epochs": epochs,
        "steps": state["global_step"],
        "heldout_pairs": len(heldout_ds),
        "heldout_grid_loss": heldout,
        "heldout_identity_grid_loss": heldout_id,
        "heldout_improvement_factor": heldout_id / heldout if heldout > 0 else None,
        "heldout_is_selection": reference,
        "selection": {"criterion": ("reference: val_grid_loss (synthetic pairs of every row of the validation images, "
                                    "the original's test split; the held-out numbers are on the same rows)") if reference
                      else "val_grid_loss (synthetic pairs, even rows of the validation images)",
                      "best_epoch": state["best"]["epoch"], "best_val_grid_loss": state["best"]["value"],
                      "val_identity_grid_loss": val_id, "val_pairs": len(val_ds)},
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
        n_pairs = metrics["train_pairs"]
        print(f"train-strong {kind}: {epochs} epochs, {n_pairs:,} pairs, held-out grid loss {heldout:.4g} "
              f"(identity {heldout_id:.4g}), {engine.format_duration(metrics['seconds'])} -> {_rel(outs['checkpoint'])}", flush=True)
    ctx.barrier()
    return metrics


def _rel(p: Path) -> str:
    from ..data.paths import project_root

    try:
        return str(Path(p).relative_to(project_root()))
    except ValueError:
        return str(p)

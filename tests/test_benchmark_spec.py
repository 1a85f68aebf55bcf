"""The benchmark specification (weakalign.data.registry.BENCHMARKS) is the one source of every
benchmark's kind and protocol: evaluation, the dataset classes, the audit and the status read it,
and a benchmark (or protocol) it does not declare is an error, never a fallback."""

import pytest

from weakalign.data.registry import (BENCHMARKS, EVALUATION_BENCHMARKS, BenchmarkSpec, UndeclaredBenchmark,
                                     benchmark_spec, dataset_class)
from weakalign.evaluation.commands import DENSE_BENCHMARKS, KEYPOINT_BENCHMARKS, check_protocols, protocols_for
from weakalign.evaluation.pck import PCKProtocol


def test_published_protocols_are_the_ones_declared():
    # PF-WILLOW: bbox of the source keypoints; PF-PASCAL: the original 224 x 224 procedure
    assert protocols_for("pf-willow")["default"] == PCKProtocol("bbox", (0.05, 0.1, 0.15), "per_pair")
    assert protocols_for("pf-pascal")["default"] == PCKProtocol("image_224", (0.05, 0.1, 0.15), "per_pair")
    assert list(protocols_for("pf-pascal")) == ["default", "bbox", "per_keypoint"]
    assert KEYPOINT_BENCHMARKS == ("pf-willow", "pf-pascal") and DENSE_BENCHMARKS == ("caltech-101", "tss")
    assert EVALUATION_BENCHMARKS == tuple(BENCHMARKS)


def test_dataset_classes_show_the_spec_summary():
    for name, spec in BENCHMARKS.items():
        cls = dataset_class(name)
        assert cls.pck_protocol == dict(spec.summary)
        if spec.kind == "keypoints":
            assert cls.pck_protocol["reference"] == spec.protocols["default"].reference


def test_a_benchmark_without_a_protocol_raises():
    with pytest.raises(UndeclaredBenchmark, match="unknown benchmark 'spair-71k'"):
        protocols_for("spair-71k")  # used to fall back to PF-PASCAL's 224 protocol silently
    with pytest.raises(UndeclaredBenchmark, match="scored densely"):
        protocols_for("tss")
    with pytest.raises(ValueError, match="'default' PCK protocol"):
        BenchmarkSpec("new", "keypoints", {"bbox": PCKProtocol("bbox")})
    with pytest.raises(ValueError, match="measures and scorer"):
        BenchmarkSpec("new", "dense")


def test_protocol_selection_keeps_default_and_refuses_unknown_names():
    assert list(protocols_for("pf-willow", ["image"])) == ["default", "image"]
    assert list(protocols_for("pf-willow", [])) == ["default"]  # an empty list: the default protocol only
    assert list(protocols_for("pf-willow")) == list(protocols_for("pf-willow", None))  # not configured: all
    with pytest.raises(UndeclaredBenchmark, match="image_224"):
        protocols_for("pf-willow", ["image_224"])
    from weakalign.cli import UserError

    from weakalign.evaluation.commands import EvaluateParams

    check_protocols(EvaluateParams(benchmarks=("pf-willow",), protocols={"pf-willow": ["per_keypoint"]}))
    with pytest.raises(UserError, match="params.yaml: evaluate: .*'tss' is scored densely"):
        check_protocols(EvaluateParams(benchmarks=("tss",), protocols={"tss": ["default"]}))
    with pytest.raises(UserError, match="unknown benchmark 'spair'"):
        check_protocols(EvaluateParams(benchmarks=("spair",), protocols={}))


def test_every_benchmark_has_an_audit_role_and_a_collector():
    from weakalign.data.audit import EVAL_SET_COLLECTORS, _eval_sets

    assert set(EVAL_SET_COLLECTORS) == {n for n, s in BENCHMARKS.items() if s.audit_sets}
    assert all(s.audit_sets for s in BENCHMARKS.values())


def test_audit_sets_come_from_the_spec(tmp_path):
    from weakalign.data.audit import _eval_sets

    present, absent = _eval_sets(tmp_path)  # nothing on disk: every declared set reported absent
    assert set(present) | set(absent) == {x for s in BENCHMARKS.values() for x in s.audit_sets}


def test_dense_scorers_are_declared():
    from weakalign.evaluation.dense import SCORERS

    for name in DENSE_BENCHMARKS:
        assert benchmark_spec(name).scorer in SCORERS

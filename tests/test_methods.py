"""One method interface (weakalign.methods): evaluation, training (`weakalign train <block>`), the
methods table and released-file recognition go through the registry, so a third method is one
module that registers itself."""

import json

import pytest
import torch

from weakalign import methods as registry
from weakalign.evaluation import commands


def test_builtin_methods_and_spec_resolution():
    assert list(registry.methods())[:3] == ["identity", "cnngeometric", "ncnet"]
    assert registry.method_for_spec({"type": "identity"}).name == "identity"
    assert registry.method_for_spec({"checkpoint": "models/x.pt"}).name == "cnngeometric"
    assert registry.method_for_spec({"affine": "a.pt", "tps": "t.pt"}).name == "cnngeometric"
    nc = registry.method_for_spec({"type": "ncnet", "checkpoint": "models/ncnet.pt"})
    assert nc.name == "ncnet" and not nc.parametric and nc.dense_reason == commands.NCNET_DENSE_REASON
    with pytest.raises(registry.UnknownMethod, match="unknown method type 'glue'.*identity, cnngeometric, ncnet"):
        registry.method_for_spec({"type": "glue"})
    # released files: NCNet by its declared prefix, CNNGeometric / WeakAlign files untagged
    assert registry.spec_for_released("ncnet_pfpascal.pth.tar") == {"type": "ncnet"}
    assert registry.spec_for_released("best_pascal_checkpoint_adam_affine_grid_loss.pth.tar") == {}
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.NCNET)


def test_methods_table_rows_come_from_the_registry():
    from weakalign.reports import METHODS

    assert [m[1] for m in METHODS] == ["strong_affine_tps", "weak_affine_tps", "ncnet"]
    assert METHODS[1][3] == ("train_strong_affine", "train_strong_tps", "train_weak")


def test_missing_checkpoint_names_the_file(tmp_path):
    for spec in ({"type": "ncnet", "checkpoint": "models/absent.pt"}, {"checkpoint": "models/absent.pt"}):
        with pytest.raises(FileNotFoundError, match="absent.pt"):
            commands.load_model(spec, tmp_path)


def _shift_method():
    """A third method, as a user would add it: a non-parametric baseline that moves every
    transferred keypoint by a fixed number of pixels (its spec's ``pixels``)."""
    from weakalign.evaluation.predict import predict_pairs

    def load(spec, root):
        return float(spec.get("pixels", 0.0))

    def predict(model, dataset, *, batch_size=16, device="cpu", progress=True, **kw):
        pred = predict_pairs(None, dataset, batch_size=batch_size, device=device, progress=progress, **kw)
        pred["kinds"] = ["shift"]
        pred["transferred"] = {"shift": pred["transferred"].pop("identity") + model}
        return pred

    return registry.Method(name="shift", label="shift", load=load, predict=predict, parametric=False,
                           dense_reason="shift moves keypoints only",
                           table_rows=(registry.TableRow("Shift baseline", "shifted", "shift"),))


def test_a_third_method_runs_through_evaluate_and_the_methods_table(tmp_path, monkeypatch, tiny_willow):
    """Registered from outside the package, a new method is predicted, scored from its cache,
    kept off the dense benchmarks with its own reason, and gets its methods-table row."""
    from weakalign.reports import methods_frame

    registry.register(_shift_method())
    try:
        monkeypatch.setattr("weakalign.data.paths.project_root", lambda: tmp_path)
        monkeypatch.setattr("weakalign.data.registry.get_dataset", lambda name, root=None: {"pf-willow": tiny_willow}[name])
        params = tmp_path / "params.yaml"
        params.write_text("evaluate:\n  batch_size: 4\n  benchmarks: [pf-willow]\n"
                          "  models:\n    identity: {type: identity}\n    shifted: {type: shift, pixels: 0.0}\n")
        args = type("A", (), {"params": str(params), "quiet": True})()
        assert commands._predict(args) == 0
        assert commands._metrics(args) == 0
        m = json.loads((tmp_path / "reports" / "metrics" / "pck.json").read_text())["pf-willow"]["models"]
        # zero shift = the identity, computed through the new method's own predict
        assert m["shifted"]["shift"]["default"] == m["identity"]["identity"]["default"]
        cache = torch.load(tmp_path / "data" / "predictions" / "pf-willow" / "shifted.pt", weights_only=True)
        assert cache["kinds"] == ["shift"]
        df = methods_frame(tmp_path / "reports" / "metrics").set_index("model")
        assert df.loc["shifted", "method"] == "Shift baseline"
        assert df.loc["shifted", "PCK@0.1"] == m["shifted"]["shift"]["default"]["0.1"]
    finally:
        registry.unregister("shift")
    assert "shift" not in registry.methods()


def test_non_parametric_method_is_kept_off_dense_benchmarks(tmp_path, monkeypatch, tiny_willow):
    registry.register(_shift_method())
    try:
        monkeypatch.setattr("weakalign.data.paths.project_root", lambda: tmp_path)

        class Dense:
            name, records = "tss", []

            def __len__(self):
                return 0

        monkeypatch.setattr("weakalign.data.registry.get_dataset", lambda name, root=None: Dense())
        params = tmp_path / "params.yaml"
        params.write_text("evaluate:\n  benchmarks: [tss]\n  models:\n    shifted: {type: shift}\n")
        assert commands._predict(type("A", (), {"params": str(params), "quiet": True})()) == 0
        status = json.loads((tmp_path / "data" / "predictions" / "status.json").read_text())
        assert status["tss"]["models"]["shifted"] == {"available": False, "reason": "shift moves keypoints only"}
    finally:
        registry.unregister("shift")


def test_unknown_method_type_is_one_line_before_any_model_runs(tmp_path, monkeypatch):
    from weakalign.cli import UserError

    monkeypatch.setattr("weakalign.data.paths.project_root", lambda: tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  benchmarks: [pf-willow]\n  models:\n    mine: {type: glue, checkpoint: m.pt}\n")
    with pytest.raises(UserError, match=r"evaluate\.models\.mine: unknown method type 'glue'") as exc:
        commands._predict(type("A", (), {"params": str(params), "quiet": True})())
    assert "\n" not in str(exc.value)


def test_entry_point_plugins_register_once(monkeypatch):
    """A package's ``weakalign.methods`` entry point is loaded on first use and registers its method;
    a broken plugin is an error naming it."""
    import importlib.metadata as md

    class EP:
        def __init__(self, name, fn):
            self.name, self.value, self._fn = name, f"pkg:{name}", fn

        def load(self):
            return self._fn()

    calls = []
    good = EP("shift", lambda: (lambda: calls.append(registry.register(_shift_method()))))
    monkeypatch.setattr(md, "entry_points", lambda group=None: [good] if group == registry.ENTRY_POINT_GROUP else [])
    try:
        assert registry.load_plugins(force=True) == ["shift"]
        assert registry.get_method("shift").label == "shift" and len(calls) == 1
        assert registry.load_plugins() == [] and len(calls) == 1  # once
    finally:
        registry.unregister("shift")

    def broken():
        raise ModuleNotFoundError("No module named 'pkg'")

    monkeypatch.setattr(md, "entry_points", lambda group=None: [EP("bad", broken)])
    with pytest.raises(ImportError, match="plugin 'bad' .* failed to load"):
        registry.load_plugins(force=True)
    monkeypatch.setattr(md, "entry_points", lambda group=None: [])
    registry.load_plugins(force=True)


def test_declared_training_stages_exist_as_commands_and_params_blocks(capsys):
    """Every TrainingStage a method declares can run (its callable), reads a params block the
    resolver knows, and its older command name (if any) is a real `weakalign` sub-command;
    `weakalign methods` lists them."""
    import argparse

    from weakalign import config
    from weakalign.cli import build_parser, main

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert "train" in sub.choices
    for m in registry.methods().values():
        for stage in m.training:
            assert callable(stage.run), (m.name, stage.block)
            assert not stage.command or stage.command in sub.choices, (m.name, stage.command)
            assert stage.block in config.BLOCK_MODULES, (m.name, stage.block)
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "ncnet: NCNet; training: train_ncnet -> weakalign train-ncnet; keypoint benchmarks only" in out
    assert "cnngeometric: CNNGeometric / WeakAlign; training: train_strong -> weakalign train-strong, train_weak" in out


# --- training goes through the registry too -----------------------------------------------------

def _toy_stage():
    """A third method's training stage, as a user would declare it: a tiny :class:`Task` (fit
    ``y = 2x`` with one weight) driven by the shared ``engine.fit``, writing its metrics record
    under ``--out`` (its own option); no command-line code."""
    from pathlib import Path

    from torch import nn

    from weakalign.training import engine

    class Toy(nn.Linear):
        # what engine.fit's checkpoints store besides the weights (weakalign.models.checkpoints)
        geometric_model = "toy"
        config = type("Config", (), {"to_dict": lambda self: {}})()

        def __init__(self):
            super().__init__(1, 1, bias=False)
            nn.init.zeros_(self.weight)  # loss 4 mean(x^2) before training

    class Step(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return ((self.model(x) - 2 * x) ** 2).mean()

    class ToyTask(engine.Task):
        def __init__(self):
            self.model = Toy()
            self.step_module = Step(self.model)
            self.train_dataset = torch.linspace(-1, 1, 8).unsqueeze(1)

        def validate(self):
            with torch.no_grad():
                return {"value": float(self.step_module(self.train_dataset))}

    def run(args) -> dict:
        from weakalign.training.commands import fit_options

        out = args.out
        task = ToyTask()
        before = task.validate()["value"]
        cfg = engine.FitConfig(seed=0, batch_size=4, schedule=[{"epochs": 2, "lr": 0.1}], weight_decay=0.0, num_workers=0,
                               checkpoint_every=1, state_path=out / "state.pt", fingerprint="toy", meta={"stage": "train_toy"},
                               desc="train_toy", **fit_options(args))
        state = engine.fit(task, cfg, engine.DistContext())
        metrics = {"stage": "train_toy", "steps": state["global_step"], "loss_before": before,
                   "loss_after": task.validate()["value"], "profile": args.profile}
        (out / "train_toy.json").write_text(json.dumps(metrics))
        return metrics

    return registry.TrainingStage("train_toy", run, help="fit the toy weight",
                                  options=(registry.option("--out", type=Path, required=True, help="output folder"),))


def test_a_third_method_trains_through_weakalign_train(tmp_path, capsys):
    """A stage a registered method declares runs as `weakalign train <block>`, with its own option
    and the common ones (--max-steps pauses with exit 3, --resume finishes), listed by
    `weakalign train --help` and `weakalign methods`: the method needs no command module."""
    from dataclasses import replace

    from weakalign.cli import main

    registry.register(replace(_shift_method(), training=(_toy_stage(),)))
    try:
        common = ["--out", str(tmp_path), "--no-progress", "--profile", "toyprof"]
        assert main(["train", "train_toy", *common, "--max-steps", "1"]) == 3
        assert "weakalign train: stopped after step 1" in capsys.readouterr().out
        assert not (tmp_path / "train_toy.json").exists()
        assert main(["train", "train_toy", *common, "--resume"]) == 0
        rec = json.loads((tmp_path / "train_toy.json").read_text())
        assert rec["steps"] == 4 and rec["profile"] == "toyprof" and rec["loss_after"] < rec["loss_before"]
        with pytest.raises(SystemExit):
            main(["train", "--help"])
        out = capsys.readouterr().out
        assert "train_toy      shift: fit the toy weight" in out and "train_strong   cnngeometric:" in out
        assert main(["methods"]) == 0
        assert "shift: shift; training: train_toy -> weakalign train train_toy;" in capsys.readouterr().out
    finally:
        registry.unregister("shift")


def test_unknown_training_stage_is_one_line_listing_the_declared_ones(capsys):
    from weakalign.cli import main

    assert main(["train", "train_glue", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("weakalign train: error: unknown training stage 'train_glue'; declared: "
                          "train_strong (cnngeometric), train_weak (cnngeometric), train_ncnet (ncnet)")
    assert main(["train"]) == 1
    assert "no training stage given; declared: train_strong" in capsys.readouterr().err


@pytest.mark.parametrize("argv, block, extra", [
    (["train-strong", "--model", "tps"], "train_strong", {"model": "tps"}),
    (["train-weak", "--variant", "no_mask"], "train_weak", {"variant": "no_mask"}),
    (["train-ncnet"], "train_ncnet", {}),
])
def test_historical_training_commands_run_the_registry_stage(argv, block, extra, tmp_path):
    """`train-strong` / `train-weak` / `train-ncnet` are aliases of `weakalign train <block>`: the
    stage the registry holds is called, with the same parsed options either way."""
    from dataclasses import replace

    from weakalign.cli import main

    method, stage = registry.training_stage(block)
    calls = []

    def spy(args):
        calls.append({k: v for k, v in vars(args).items() if k not in ("command", "func", "rest")})
        return {}

    registry.register(replace(method, training=tuple(replace(t, run=spy) if t is stage else t for t in method.training)),
                      replace=True)
    try:
        common = ["--params", str(tmp_path / "p.yaml"), "--set", "seed=3", "--resume=auto", "--max-steps", "2", "--no-progress"]
        assert main([*argv, *common]) == 0
        assert main(["train", block, *argv[1:], *common]) == 0
    finally:
        registry.register(method, replace=True)
    assert registry.training_stage(block)[1] is stage
    alias, generic = calls
    expected = {"stage": block, "params": str(tmp_path / "p.yaml"), "profile": None, "set_": ["seed=3"], "resume": "auto",
                "max_steps": 2, "no_progress": True, "debug": False, "trust_unverified": False, **extra}
    assert alias == expected and generic == expected


def test_block_config_resolves_a_block_other_than_the_cnngeometric_ones(tmp_path):
    """`block_config` (what a stage's run uses) resolves any registered block as its own
    resolver does: here train_ncnet, against NCNet's config_from_file."""
    import argparse

    from weakalign.ncnet.params import config_from_file
    from weakalign.training.commands import block_config

    p = tmp_path / "params.yaml"
    p.write_text("train_ncnet: {batch_size: 4}\nprofiles: {default: {train_ncnet: {seed: 2}}}\n")
    args = argparse.Namespace(params=str(p), profile=None, set_=["data.max_train_pairs=7"])
    cfg = block_config(args, "train_ncnet")
    assert cfg == config_from_file(str(p), None, ["data.max_train_pairs=7"])
    assert (cfg.batch_size, cfg.seed, cfg.data.max_train_pairs, cfg.profile) == (4, 2, 7, "default")

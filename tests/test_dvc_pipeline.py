"""dvc.yaml tracks exactly the parameters each stage reads: a stage that reads block ``B`` of
params.yaml depends on ``B``, on ``profile`` and on ``profiles.${profile}.B`` -- the selected
profile's overrides only, so editing the smoke profile does not invalidate the default run."""

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = ("train_strong", "train_weak", "train_ncnet", "evaluate")


def _stages():
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for name, st in doc["stages"].items():
        yield name, st.get("do", st)


def test_each_stage_tracks_the_selected_profile_of_its_block():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    checked = 0
    for name, st in _stages():
        tracked = [p for p in st.get("params", []) if isinstance(p, str)]
        assert "profiles" not in tracked, f"{name}: depends on every profile"
        for block in (b for b in BLOCKS if b in tracked):
            assert "profile" in tracked and f"profiles.${{profile}}.{block}" in tracked, (name, tracked)
            checked += 1
        assert all(p in ("profile", *BLOCKS) or p.startswith(("data.", "profiles.${profile}.")) for p in tracked), (name, tracked)
    assert checked >= 6
    # ${profile} must resolve for every profile: each one has every block (empty = no override)
    for prof, over in params["profiles"].items():
        missing = [b for b in BLOCKS if b not in (over or {})]
        assert not missing, f"profiles.{prof} lacks {missing} (add them as {{}})"
    assert params["profile"] in params["profiles"]


@pytest.mark.parametrize("profile", ["smoke", "paper"])
def test_dvc_resolves_the_pipeline_for_every_profile(tmp_path, profile):
    dvc = Path(ROOT / ".venv" / "bin" / "dvc")
    if not dvc.is_file():
        pytest.skip("dvc not installed in .venv")
    for f in ("dvc.yaml", "params.yaml"):
        (tmp_path / f).write_text((ROOT / f).read_text().replace("profile: default\n", f"profile: {profile}\n", 1) if f == "params.yaml"
                                  else (ROOT / f).read_text())
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([str(dvc), "init", "-q"], cwd=tmp_path, check=True)
    out = subprocess.run([str(dvc), "stage", "list"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "train_ncnet" in out.stdout and "evaluate_predict" in out.stdout


# --- every stage depends on all the weakalign code its command imports ------------------------
#
# The import graph is static (ast over weakalign/, imports anywhere in a module, function-level
# ones included, since the package imports lazily): from the module that registers the stage's
# sub-command (and, for `weakalign notebook`, the notebook's own code cells), every weakalign
# module reachable must be a dependency of the stage (the file or a folder holding it).
# weakalign/cli.py is dispatch: it is imported for UserError, but the other sub-commands it
# registers (and their imports) do not run, so the graph does not follow it.

import ast
import json
import re

PKG = ROOT / "weakalign"
DISPATCH = {PKG / "cli.py"}


def _module_file(name: str) -> Path | None:
    p = ROOT.joinpath(*name.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    return p.with_suffix(".py") if p.with_suffix(".py").is_file() else None


def _package_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1])  # a module's package; for __init__.py the package itself


def _imported_files(source: str, package: str) -> set:
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]  # `from pkg import module`
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != "weakalign":
                continue
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__
                f = _module_file(".".join(parts[:i]))
                if f:
                    out.add(f)
    return out


def import_closure(start_files, extra_sources=()) -> set:
    todo = set(start_files)
    for src in extra_sources:
        todo |= _imported_files(src, "")
    seen = set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        if f not in DISPATCH:
            todo |= _imported_files(f.read_text(), _package_of(f))
    return seen - DISPATCH


def _command_modules() -> dict:
    """{sub-command word: module file} from the add_parser calls of the CLI's command modules."""
    import weakalign.cli as cli

    out = {}
    for name in cli.COMMAND_MODULES:
        f = _module_file(name)
        for word in re.findall(r'add_parser\(\s*"([\w-]+)"', f.read_text()):
            out.setdefault(word, f)
    return out


def _notebook_sources(cmd: str) -> list:
    nb = re.search(r"notebook\s+(\S+\.ipynb)", cmd)
    if not nb:
        return []
    cells = json.loads((ROOT / nb.group(1)).read_text())["cells"]
    return ["\n".join(line for line in "".join(c["source"]).splitlines() if not line.lstrip().startswith(("%", "!")))
            for c in cells if c["cell_type"] == "code"]


def stage_code(cmd: str) -> set:
    """Every weakalign file the stage's command imports (see above)."""
    words = cmd.split()
    assert words[0] == "weakalign", cmd
    entry = _command_modules()[words[1]]
    return import_closure({entry, PKG / "__init__.py"}, _notebook_sources(cmd))


def _resolved_stages(dvc_yaml: Path) -> dict:
    """{stage: (cmd, deps)} with foreach expanded (the first item stands for all: same code)."""
    doc = yaml.safe_load(dvc_yaml.read_text())
    out = {}
    for name, st in doc["stages"].items():
        body = st.get("do", st)
        out[name] = (body["cmd"], [d if isinstance(d, str) else next(iter(d)) for d in body.get("deps", [])])
    return out


def missing_code_deps(dvc_yaml: Path) -> dict:
    """{stage: [weakalign files it imports that no dependency covers]}."""
    out = {}
    for name, (cmd, deps) in _resolved_stages(dvc_yaml).items():
        covered = [ROOT / d for d in deps if d.startswith("weakalign")]
        miss = [f for f in stage_code(cmd) if not any(f == c or c in f.parents for c in covered)]
        if miss:
            out[name] = sorted(str(f.relative_to(ROOT)) for f in miss)
    return out


def test_every_stage_depends_on_all_the_code_it_imports():
    assert missing_code_deps(ROOT / "dvc.yaml") == {}


def test_the_dependency_check_fails_on_a_removed_dependency(tmp_path):
    text = (ROOT / "dvc.yaml").read_text()
    cut = tmp_path / "dvc.yaml"
    cut.write_text(text.replace("      - weakalign/data/csvio.py\n", "", 1) if "      - weakalign/data/csvio.py\n" in text
                   else text.replace("      - weakalign/data\n", "", 1))
    assert cut.read_text() != text
    assert missing_code_deps(cut), "removing a dependency went unnoticed"


def test_evaluation_stages_import_the_csv_readers():
    # touching weakalign/data/csvio.py (where the keypoint CSVs are parsed) must re-run evaluation
    stages = _resolved_stages(ROOT / "dvc.yaml")
    for name in ("evaluate_predict", "evaluate_metrics"):
        assert PKG / "data" / "csvio.py" in stage_code(stages[name][0]), name


def test_import_graph_follows_relative_and_function_level_imports():
    files = import_closure({PKG / "evaluation" / "commands.py"})
    assert PKG / "evaluation" / "dense.py" in files  # `from .dense import SCORERS` inside a function
    assert PKG / "data" / "registry.py" in files  # `from ..data.registry import ...`
    assert PKG / "cli.py" not in files


def test_model_paths_agree_with_params_and_the_training_outputs():
    """Checkpoints written by the training stages (the code's ``outputs.checkpoint``) are the ones
    dvc.yaml declares, and every checkpoint evaluate.models reads is a dependency of evaluate_predict."""
    from weakalign.ncnet.params import config_from_file
    from weakalign.training.params import read_params_file, resolve

    doc, _ = read_params_file(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]

    def outs(stage):
        body = raw[stage].get("do", raw[stage])
        return [o if isinstance(o, str) else next(iter(o)) for o in body["outs"]]

    strong = resolve("train_strong", doc).outputs.checkpoint
    for item in raw["train_strong"]["foreach"]:
        assert strong.format(model=item) in [o.replace("${item}", item) for o in outs("train_strong")]
    weak = resolve("train_weak", doc)
    assert weak.outputs.checkpoint in outs("train_weak")
    for item in raw["train_weak_ablation"]["foreach"]:
        assert weak.variant_outputs.checkpoint.format(variant=item) in [o.replace("${item}", item) for o in outs("train_weak_ablation")]
    assert config_from_file(str(ROOT / "params.yaml")).outputs.checkpoint in outs("train_ncnet")
    # every checkpoint the evaluation reads is a dependency (resolved through DVC's templating)
    deps = set()
    for d in raw["evaluate_predict"]["deps"]:
        if d.startswith("${") and d.endswith("}"):
            node = doc
            for k in d[2:-1].split("."):
                node = node[k]
            d = node
        deps.add(d)
    for name, spec in doc["evaluate"]["models"].items():
        for key in ("checkpoint", "affine", "tps"):
            if key in spec:
                assert spec[key] in deps, (name, spec[key])


def test_no_profile_overrides_the_templated_paths():
    """dvc.yaml templates model paths from the top-level blocks (``${train_weak.init.*}``,
    ``${evaluate.models.*}``): a profile overriding them, or the outputs, would leave the stage
    dependencies silently wrong, so none may (use the top-level block instead)."""
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    templated = {"train_strong": ("outputs",), "train_weak": ("init", "outputs", "variant_outputs"),
                 "train_ncnet": ("outputs",), "evaluate": ("models", "predictions_dir")}
    for name, prof in (doc.get("profiles") or {}).items():
        for block, keys in templated.items():
            over = (prof or {}).get(block) or {}
            bad = [k for k in keys if k in over]
            assert not bad, f"profiles.{name}.{block} overrides {bad}: dvc.yaml would not follow"


# --- every data folder / CSV a stage reads, in every profile, is a dependency ----------------

def _data_reads(block: str, cfg: dict) -> set[str]:
    """Data paths (relative to the project root) that the stage reading ``block`` opens with
    the resolved parameters ``cfg``: image lists / pair lists and the folders their images live
    in, the PF-PASCAL validation pairs of PCK selection, the evaluation benchmarks' files (from
    the dataset classes themselves, so a moved file shows up here)."""
    from weakalign.data.registry import CALTECH_IMAGE_ROOT, PF_PASCAL_IMAGE_ROOT, SPLIT_FILES, dataset_class

    image_root = {s: f"data/{PF_PASCAL_IMAGE_ROOT}" if s.startswith("pf-pascal") else
                  "data/pascal-voc-2011" if s.startswith("voc2011") else f"data/{CALTECH_IMAGE_ROOT}/101_ObjectCategories"
                  for s in SPLIT_FILES}
    reads: set[str] = set()

    def spec_reads(spec):
        if isinstance(spec, str):
            reads.update({f"data/splits/{SPLIT_FILES[spec]}", image_root[spec]})
        else:
            reads.update({spec["csv"], spec.get("image_root") or str(Path(spec["csv"]).parent)})

    if block in ("train_strong", "train_weak", "train_ncnet"):
        spec_reads(cfg["data"]["train"])
        spec_reads(cfg["data"]["val"])
        if block == "train_weak" and cfg["selection"] in ("pf_pascal_val_pck", "reference"):
            reads.update({"data/pf-pascal/val_pairs_pf_pascal.csv", "data/pf-pascal/PF-dataset-PASCAL"})
    elif block == "evaluate":
        for bench in cfg["benchmarks"]:
            ds = dataset_class(bench)(root=ROOT / "data", _check=False)
            reads.add(str(ds.csv_path.relative_to(ROOT)))
            # keypoint benchmarks: images in the archive's folder under image_root (docs/datasets.md);
            # dense ones: paths in the CSV relative to its folder
            sub = {"pf-willow": "PF-dataset", "pf-pascal": "PF-dataset-PASCAL"}
            folder = Path(ds.image_root) / sub[bench] if bench in sub else ds.csv_path.parent
            reads.add(str(folder.relative_to(ROOT)))
    return reads


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or Path(path).is_relative_to(d) for d in deps)


@pytest.mark.parametrize("profile", ["default", "smoke", "paper"])
def test_every_data_path_a_stage_reads_is_a_dependency_in_every_profile(profile):
    from weakalign.config import resolve_block
    from weakalign.training.params import read_params_file

    doc, _ = read_params_file(ROOT / "params.yaml")
    stage_block = {"train_strong": "train_strong", "train_weak": "train_weak", "train_weak_ablation": "train_weak",
                   "train_ncnet": "train_ncnet", "evaluate_predict": "evaluate"}
    stages = dict(_stages())
    checked = 0
    for stage, block in stage_block.items():
        cfg, used = resolve_block(block, doc, profile=profile)
        assert used == profile
        deps = [d for d in stages[stage]["deps"] if not d.startswith("${")]
        for path in sorted(_data_reads(block, cfg)):
            assert _covered(path, deps), f"profile {profile}: stage {stage} reads {path}, not a dependency in dvc.yaml"
            checked += 1
    # dense benchmarks are re-read by evaluate_metrics (masks / flows from the dataset files)
    from weakalign.data.registry import benchmark_spec

    cfg, _ = resolve_block("evaluate", doc, profile=profile)
    dense = {**cfg, "benchmarks": [b for b in cfg["benchmarks"] if benchmark_spec(b).kind == "dense"]}
    for path in sorted(_data_reads("evaluate", dense)):
        assert _covered(path, stages["evaluate_metrics"]["deps"]), f"profile {profile}: evaluate_metrics reads {path}"
    assert checked >= 15


def test_optional_dataset_folders_exist_in_a_fresh_clone():
    """DVC refuses a missing dependency: the folders of the optional datasets are committed
    (a README each), so their dependency holds in every profile before any fetch."""
    tracked = subprocess.run(["git", "ls-files", "data"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    outs = {next(iter(o)) if isinstance(o, dict) else o for st in raw.values() for o in st.get("do", st).get("outs", [])}
    for folder in ("data/pascal-voc-2011", "data/tss"):
        assert f"{folder}/README.md" in tracked, folder
        assert not any(o == folder or Path(o).is_relative_to(folder) for o in outs), folder
    assert "data/pascal-voc-2011" in raw["train_strong"]["do"]["deps"]
    assert "data/tss" in raw["evaluate_predict"]["deps"] and "data/tss" in raw["data_audit"]["deps"]


def test_a_missing_data_dependency_is_caught(monkeypatch):
    """The check above fails when a profile reads a folder no dependency covers."""
    from weakalign.config import resolve_block
    from weakalign.training.params import read_params_file

    doc, _ = read_params_file(ROOT / "params.yaml")
    cfg, _ = resolve_block("train_strong", doc, profile="paper")
    deps = [d for d in dict(_stages())["train_strong"]["deps"] if d != "data/pascal-voc-2011"]
    assert not all(_covered(p, deps) for p in _data_reads("train_strong", cfg))

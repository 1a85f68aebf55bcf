"""Writes the thin notebooks of this folder (run once after editing; outputs stay empty).

    python notebooks/make_notebooks.py
"""

from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent


def notebook(title: str, params: str, cells: list[str]) -> nbf.NotebookNode:
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(nbf.v4.new_markdown_cell(title))
    p = nbf.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells.append(p)
    for c in cells:
        if c.startswith("#md "):
            nb.cells.append(nbf.v4.new_markdown_cell(c[4:]))
        else:
            nb.cells.append(nbf.v4.new_code_cell(c))
    return nb


NOTEBOOKS = {
    "01_pck_tables.ipynb": notebook(
        "# PCK tables: this repository vs the published numbers\n\n"
        "Every number below comes from `reports/metrics/pck.json` (written by `weakalign evaluate metrics` "
        "from cached predictions) or from `weakalign/evaluation/paper_results.yaml` (published numbers, each "
        "with its source). The protocol of each row is in its `note` column. Brackets: 95% bootstrap confidence "
        "interval over image pairs (settings in `pck.json` under `bootstrap`); published rows have none.",
        'metrics_path = "reports/metrics/pck.json"\nout_dir = "reports/tables"\nfigures_dir = "reports/figures"\n'
        'benchmarks = ["pf-willow", "pf-pascal"]\nmethods_benchmark = "pf-willow"',
        [
            "from pathlib import Path\nfrom IPython.display import Markdown, display\nfrom weakalign import reports",
            "for bench in benchmarks:\n"
            "    df = reports.comparison_table(metrics_path, bench)\n"
            "    md = f'## {bench}\\n\\nPCK@0.1\\n\\n' + reports.to_markdown(df)\n"
            "    Path(out_dir).mkdir(parents=True, exist_ok=True)\n"
            "    (Path(out_dir) / f'pck_vs_paper_{bench}.md').write_text(md)\n"
            "    display(Markdown(md))",
            "#md ## The methods side by side\n\n"
            "CNNGeometric (strong supervision only), WeakAlign (the same, then weakly fine-tuned with the soft-inlier "
            "count) and NCNet (neighbourhood consensus, weak supervision only) on the same backbone, training pairs and "
            "PCK protocol. Training time adds up the stages each method needs (`reports/metrics/train_*.json`, "
            "`seconds`); evaluation time is `evaluate predict` over every pair. Both measured by the pipeline on this "
            "machine. Error bars: 95% bootstrap confidence intervals over pairs.",
            "import matplotlib\nmatplotlib.use('Agg')\n"
            "metrics_dir = Path(metrics_path).parent\n"
            "methods = reports.methods_frame(metrics_dir, methods_benchmark)\n"
            "md = f'## Methods on {methods_benchmark}\\n\\n' + reports.to_markdown(methods, floatfmt='.3g')\n"
            "(Path(out_dir) / f'methods_{methods_benchmark}.md').write_text(md)\n"
            "display(Markdown(md))\n"
            "fig = reports.methods_figure(methods, methods_benchmark)\n"
            "reports.save_figure(fig, Path(figures_dir) / f'methods_{methods_benchmark}.png')",
        ],
    ),
    "02_inlier_mask_ablation.ipynb": notebook(
        "# Ablation: the inlier mask\n\n"
        "The weakly-supervised fine-tuning maximises a soft-inlier count. These rows compare variants that differ "
        "only in the mask (no mask, tolerance 0/1/2 cells) and in which parts of the network are trained, on the "
        "same benchmark and protocol. Brackets and error bars: 95% bootstrap confidence intervals over image pairs; "
        "the paired differences below resample the same pairs for both models, so they are much tighter than the "
        "two separate intervals suggest.",
        'metrics_path = "reports/metrics/pck.json"\nbenchmark = "pf-willow"\nout_dir = "reports/figures"',
        [
            "import json\nfrom pathlib import Path\nimport matplotlib\nmatplotlib.use('Agg')\n"
            "from IPython.display import Markdown, display\nfrom weakalign import reports",
            "df = reports.pck_frame(metrics_path, benchmark)\n"
            "df = df[df['transform'].isin(['affine+TPS', 'identity'])]\n"
            "display(Markdown(reports.to_markdown(df)))",
            "#md ## Paired differences\n\n"
            "Mean over pairs of (PCK of a - PCK of b), with a paired-bootstrap interval; `*` marks an interval that "
            "excludes 0. The same table is in the README and in `reports/tables/pck.md` (all alphas).",
            "display(Markdown(reports.differences_markdown(metrics_path, benchmark)))",
            "#md ## Training seeds\n\n"
            "The intervals above are over evaluation pairs for one training run. `weakalign seeds` (not part of "
            "`dvc repro`: about 14 CPU-minutes per seed) retrains the fine-tuning and its ablations with several seeds "
            "and reports mean ± standard deviation over seeds beside each run's interval.",
            "seeds_path = Path(metrics_path).parent / 'seeds.json'\n"
            "if seeds_path.is_file():\n"
            "    from weakalign.seeds import seeds_markdown\n"
            "    display(Markdown(seeds_markdown(json.loads(seeds_path.read_text()))))\n"
            "else:\n"
            "    print(f'{seeds_path} not found: run `weakalign seeds` (see weakalign/seeds.py)')",
            "if df['PCK'].notna().any():\n"
            "    fig = reports.ablation_figure(df, benchmark)\n"
            "    reports.save_figure(fig, f'{out_dir}/ablation_{benchmark}.png')",
        ],
    ),
    "03_qualitative.ipynb": notebook(
        "# Qualitative results\n\nSource, target, aligned source and keypoint transfer for a few PF-WILLOW pairs, "
        "and the matches that the inlier mask keeps vs discards.",
        'checkpoint = "models/weak_affine_tps.pt"\nbenchmark = "pf-willow"\ndata_root = "data"\npairs_csv = None\npairs = [0, 100, 250, 400]\nout_dir = "reports/figures"',
        [
            "from pathlib import Path\nfrom weakalign import figures",
            "if Path(checkpoint).is_file():\n"
            "    for i in pairs:\n"
            "        fig = figures.pair_figure(checkpoint, benchmark, i, root=data_root, csv=pairs_csv)\n"
            "        figures.save(fig, f'{out_dir}/qualitative_{benchmark}_{i}.png')\n"
            "else:\n"
            "    print(f'{checkpoint} not found: run the training stages first')",
        ],
    ),
    "04_per_category_and_curves.ipynb": notebook(
        "# Per-category PCK and PCK-vs-alpha curves\n\n"
        "Curve bands: 95% bootstrap confidence intervals over image pairs (`reports/plots/pck_curve_<benchmark>.csv`, "
        "columns `low` / `high`).",
        'metrics_path = "reports/metrics/pck.json"\nplots_dir = "reports/plots"\nbenchmark = "pf-willow"\nout_dir = "reports/figures"',
        [
            "import pandas as pd\nimport matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nimport seaborn as sns\n"
            "from pathlib import Path\nfrom weakalign import reports",
            "cat = reports.per_category_frame(metrics_path, benchmark)\n"
            "if len(cat):\n"
            "    pivot = cat.pivot(index='category', columns='model', values='PCK')\n"
            "    fig, ax = plt.subplots(figsize=(1.2 * len(pivot.columns) + 3, 0.4 * len(pivot) + 1.5))\n"
            "    sns.heatmap(pivot, annot=True, fmt='.2f', cmap='viridis', vmin=0, vmax=1, ax=ax)\n"
            "    ax.set_title(f'{benchmark}: PCK@0.1 per category')\n"
            "    reports.save_figure(fig, f'{out_dir}/per_category_{benchmark}.png')",
            "curve = Path(plots_dir) / f'pck_curve_{benchmark}.csv'\n"
            "if curve.is_file():\n"
            "    fig = reports.curve_figure(pd.read_csv(curve), benchmark)\n"
            "    reports.save_figure(fig, f'{out_dir}/pck_curve_{benchmark}.png')",
        ],
    ),
    "05_training_curves.ipynb": notebook(
        "# Training curves: held-out numbers against minutes\n\n"
        "Strong stage: grid loss of the selected model on held-out synthetic pairs (odd rows of the validation "
        "image list, never used for selection) at the end of every epoch, against wall-clock minutes since the stage "
        "started (feature caching included), from `reports/plots/train_strong_<kind>.csv`. The previous default "
        "configuration, re-run with the current code on the same held-out pairs, is in `reports/plots/baseline/` "
        "(command in docs/training.md). Weak stage: held-out soft-inlier score per epoch "
        "(`reports/plots/train_weak.csv`, ablations beside it).",
        'plots_dir = "reports/plots"\nmetrics_dir = "reports/metrics"\nout_dir = "reports/figures"',
        [
            "import json\nimport matplotlib\nmatplotlib.use('Agg')\nfrom pathlib import Path\n"
            "from IPython.display import Markdown, display\nfrom weakalign import reports",
            "strong = reports.strong_curve_frame(plots_dir, metrics_dir)\n"
            "identity = {}\n"
            "for kind in ('affine', 'tps'):\n"
            "    f = Path(metrics_dir) / f'train_strong_{kind}.json'\n"
            "    if f.is_file():\n"
            "        identity[kind] = json.loads(f.read_text())['heldout_identity_grid_loss']\n"
            "if len(strong):\n"
            "    fig = reports.strong_curve_figure(strong, identity)\n"
            "    reports.save_figure(fig, Path(out_dir) / 'strong_heldout_grid_loss_vs_minutes.png')\n"
            "    last = strong.sort_values('epoch').groupby(['kind', 'run'], sort=False).tail(1)\n"
            "    display(Markdown(last[['kind', 'run', 'epoch', 'minutes', 'heldout_grid_loss']].to_markdown(index=False, floatfmt='.4g')))",
            "weak = reports.weak_curve_frame(plots_dir)\n"
            "before = {}\n"
            "f = Path(metrics_dir) / 'train_weak.json'\n"
            "if f.is_file():\n"
            "    before['inlier mask, tolerance 0 (WeakAlign)'] = json.loads(f.read_text())['heldout_score_before']\n"
            "for g in sorted((Path(metrics_dir) / 'ablations').glob('train_weak_*.json')):\n"
            "    before[g.stem.replace('train_weak_', '')] = json.loads(g.read_text())['heldout_score_before']\n"
            "if len(weak):\n"
            "    fig = reports.weak_curve_figure(weak, before)\n"
            "    reports.save_figure(fig, Path(out_dir) / 'weak_heldout_score.png')\n"
            "    display(Markdown(weak.to_markdown(index=False, floatfmt='.4g')))",
        ],
    ),
}

if __name__ == "__main__":
    for name, nb in NOTEBOOKS.items():
        nbf.write(nb, HERE / name)
        print("wrote", name)

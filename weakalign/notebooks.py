"""``weakalign notebook NOTEBOOK --out DIR [-p NAME VALUE ...]``: execute a thin notebook with
papermill (kernel ``python3`` of the running environment) into ``DIR`` and export HTML.

Outputs are written atomically: a failed run leaves the previous report in place."""

from __future__ import annotations

import time
from pathlib import Path


def _parse_value(v: str):
    import yaml

    return yaml.safe_load(v)


def execute(notebook: Path, out_dir: Path, parameters: dict, kernel: str = "python3", cwd: Path | None = None) -> Path:
    import nbformat
    import papermill as pm
    from nbconvert import HTMLExporter

    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / notebook.name
    tmp = out_dir / f".{notebook.stem}.running.ipynb"
    pm.execute_notebook(str(notebook), str(tmp), parameters=parameters, kernel_name=kernel,
                        cwd=str(cwd) if cwd else None, progress_bar=False)
    html, _ = HTMLExporter().from_notebook_node(nbformat.read(tmp, as_version=4))
    html_tmp = out_dir / f".{notebook.stem}.html.tmp"
    html_tmp.write_text(html, encoding="utf-8")
    tmp.replace(final)
    html_tmp.replace(out_dir / f"{notebook.stem}.html")
    return final


def _run(args) -> int:
    from .cli import UserError
    from .data.paths import project_root

    t0 = time.time()
    nb = Path(args.notebook)
    if not nb.is_file():
        raise UserError(f"notebook {nb} not found")
    params = {k: _parse_value(v) for k, v in (args.param or [])}
    root = project_root()
    out = execute(nb, Path(args.out), params, kernel=args.kernel, cwd=root)
    print(f"notebook: {nb.name} executed in {time.time() - t0:.0f}s -> {out} (+ .html)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("notebook", help="execute a notebook with papermill into a reports folder (+ HTML)")
    p.add_argument("notebook")
    p.add_argument("--out", default="reports")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"), help="parameter (YAML value)")
    p.add_argument("--kernel", default="python3")
    p.set_defaults(func=_run)

"""``python -m diffmm figures``: training-curve and sparsity figures from run directories.

    python -m diffmm figures --run runs/tiktok-diffmm --out figures/
    python -m diffmm figures --run runs/tiktok-diffmm --run runs/tiktok-lightgcn --out figures/

Each run directory (see :mod:`diffmm.experiments.runs`) provides ``history.csv``,
``per_user_test.csv`` and ``metrics.json``. With several runs the figures compare them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def _run_name(run_dir: Path) -> str:
    """'<model>' from metrics.json, else the directory name."""
    metrics = run_dir / "metrics.json"
    if metrics.exists():
        return str(json.loads(metrics.read_text()).get("model", run_dir.name))
    return run_dir.name


def write_run_figures(run_dirs: list[str | Path], out: str | Path, metric: str = "recall@20",
                      bins: str = "0,5,10,20,50,inf", png: bool | None = None) -> list[Path]:
    """Write ``training_curves`` and ``sparsity`` figures for the runs into ``out``; return the files."""
    from diffmm.viz.plots import save_figure, sparsity_figure, training_curves

    histories, per_user = {}, {}
    for run_dir in map(Path, run_dirs):
        if not run_dir.is_dir():
            raise FileNotFoundError(f"run directory {run_dir} does not exist")
        name = _run_name(run_dir)
        if name in histories:  # two runs of the same model: tell them apart by directory
            name = f"{name} ({run_dir.name})"
        for file, table in (("history.csv", histories), ("per_user_test.csv", per_user)):
            if not (run_dir / file).exists():
                raise FileNotFoundError(f"{run_dir / file} is missing; is {run_dir} a finished run directory "
                                        "(python -m diffmm train --out ...)?")
            table[name] = pd.read_csv(run_dir / file)
    edges = int(bins) if bins.strip().isdigit() else [float(x) for x in bins.split(",")]  # float('inf') parses
    out = Path(out)
    written = save_figure(training_curves(histories if len(histories) > 1 else next(iter(histories.values())),
                                          metric), out / "training_curves", png=png)
    written += save_figure(sparsity_figure(per_user, edges, metric), out / "sparsity", png=png)
    return written


def cmd_figures(args, extra) -> int:
    written = write_run_figures(args.run, args.out, args.metric, args.bins, png=False if args.no_png else None)
    for path in written:
        print(path)
    return 0


def add_parser(subparsers) -> None:
    """Register ``figures`` on the CLI's argparse subparsers."""
    parser = subparsers.add_parser("figures", help="training-curve and sparsity figures from run directories")
    parser.add_argument("--run", action="append", required=True,
                        help="run directory (repeat to compare runs, e.g. diffmm and lightgcn)")
    parser.add_argument("--out", default="figures", help="output folder (default figures/)")
    parser.add_argument("--metric", default="recall@20", help="metric to plot (default recall@20)")
    parser.add_argument("--bins", default="0,5,10,20,50,inf",
                        help="user-activity group edges, or a number q for q quantile groups "
                             "(default 0,5,10,20,50,inf)")
    parser.add_argument("--no-png", action="store_true", help="write only HTML (PNG needs kaleido + Chrome)")
    parser.set_defaults(func=cmd_figures)


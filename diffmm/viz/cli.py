"""``python -m diffmm figures``: training-curve and sparsity figures from run directories.

    python -m diffmm figures --run runs/tiktok-diffmm --out figures/
    python -m diffmm figures --run runs/tiktok-diffmm --run runs/tiktok-lightgcn --out figures/
    python -m diffmm figures --run runs/rho0 --run runs/rho0.5 --run runs/rho1 --by fusion_ratio --out figures/

Each run directory (see :mod:`diffmm.experiments.runs`) provides ``history.csv``,
``per_user_test.csv``, ``metrics.json`` and ``config.json``. With several runs the figures compare
them; with ``--by FIELD`` one figure shows the validation-selected test metrics against that
configuration field (the paper's fusion-ratio and hyperparameter figures from finished runs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from pathlib import Path


from diffmm.experiments.runs import read_json, run_dir_results

if TYPE_CHECKING:  # pandas loads on first use: training never imports it (~33 MiB of RSS)
    import pandas as pd


def _run_name(run_dir: Path) -> str:
    """'<model>' from metrics.json, else the directory name."""
    metrics = run_dir / "metrics.json"
    if metrics.exists():
        return str(read_json(metrics).get("model", run_dir.name))
    return run_dir.name


def write_run_figures(run_dirs: list[str | Path], out: str | Path, metric: str = "recall@20",
                      bins: str = "0,5,10,20,50,inf", png: bool | None = None,
                      plotlyjs: str = "directory") -> list[Path]:
    """Write ``training_curves`` and ``sparsity`` figures for the runs into ``out``; return the files."""
    import pandas as pd
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
                                          metric), out / "training_curves", png=png, include_plotlyjs=plotlyjs)
    written += save_figure(sparsity_figure(per_user, edges, metric), out / "sparsity", png=png,
                           include_plotlyjs=plotlyjs)
    return written


def config_field(run_dir: Path, field: str):
    """A run's value of a DiffMMConfig / TrainConfig field (model_config first), from its config.json."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; is {run_dir} a run directory (python -m diffmm train --out ...)?")
    config = read_json(path)
    for section in ("model_config", "train"):
        if field in config.get(section, {}):
            value = config[section][field]
            return tuple(value) if isinstance(value, list) else value  # e.g. denoiser_hidden: hashable
    known = sorted({*config.get("model_config", {}), *config.get("train", {})})
    raise ValueError(f"{path}: no field '{field}' in model_config or train; fields: {known}")


def runs_by_field(run_dirs: list[str | Path], field: str, metrics=("recall@20", "ndcg@20")) -> pd.DataFrame:
    """Validation-selected test metrics of each run against ``field``: one row per value, with the
    mean over the runs that share it (e.g. seeds), ``<metric>_std`` (ddof 1; blank for one run) and ``runs``."""
    import pandas as pd
    rows = []
    for run_dir in map(Path, run_dirs):
        if not (run_dir / "metrics.json").exists():
            raise FileNotFoundError(f"{run_dir / 'metrics.json'} is missing; is {run_dir} a finished run directory?")
        test = run_dir_results(run_dir)["test"]
        rows.append({field: config_field(run_dir, field), **{m: test[m] for m in metrics}})
    table = pd.DataFrame(rows).groupby(field, sort=True, dropna=False)  # unset optional fields group as 'none'
    out = table.mean()
    for m in metrics:
        out[f"{m}_std"] = table[m].std(ddof=1)
    out["runs"] = table.size()
    return out.reset_index()


def write_field_figure(run_dirs: list[str | Path], field: str, out: str | Path, png: bool | None = None,
                       title: str | None = None, plotlyjs: str = "directory") -> list[Path]:
    """Write ``<field>`` (metrics against the field's values) into ``out``; return the files.

    ``title``: what the figure shows (default: 'test metrics (validation-selected) against <field>');
    the number of runs per value is appended."""
    from diffmm.viz.plots import hyperparameter_figure, save_figure

    table = runs_by_field(run_dirs, field)
    title = (title or f"test metrics (validation-selected) against {field}") + "; runs per value: " + \
        ", ".join(f"{'none' if isinstance(v, float) and v != v else v}: {n}" for v, n in zip(table[field], table["runs"]))
    return save_figure(hyperparameter_figure(table, field, title=title), Path(out) / field, png=png,
                       include_plotlyjs=plotlyjs)


def cmd_figures(args, extra) -> int:
    png = False if args.no_png else None
    if args.by:
        written = write_field_figure(args.run, args.by, args.out, png=png, title=args.title, plotlyjs=args.plotlyjs)
    else:
        written = write_run_figures(args.run, args.out, args.metric, args.bins, png=png, plotlyjs=args.plotlyjs)
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
    parser.add_argument("--by", metavar="FIELD",
                        help="instead of curves: test metrics against this config field, e.g. fusion_ratio, "
                             "omega, msi_weight (runs with equal values are averaged, std as error bars)")
    parser.add_argument("--title", help="with --by: the figure's title (the runs per value are appended)")
    parser.add_argument("--plotlyjs", choices=("directory", "cdn"), default="directory",
                        help="'directory' (default): one plotly.min.js beside the HTML files, opens offline; "
                             "'cdn': the HTML loads plotly from its CDN (the committed figures/)")
    parser.add_argument("--no-png", action="store_true", help="write only HTML (PNG needs kaleido + Chrome)")
    parser.set_defaults(func=cmd_figures)


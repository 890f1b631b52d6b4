"""The quick start: popularity, MF-BPR, LightGCN and DiffMM trained on one dataset, a metrics table and
two figures (training curves, Recall@20 by user activity). ``python -m diffmm quickstart``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable


from diffmm.data.dataset import RecDataset
from diffmm.experiments.runs import build_run_config, parse_settings, run

if TYPE_CHECKING:  # pandas loads on first use: training never imports it (~33 MiB of RSS)
    import pandas as pd

MODELS = ("popularity", "mf", "lightgcn", "diffmm")


def quickstart(dataset: RecDataset, out: str | Path, settings: dict[str, str] | None = None,
               report: Callable[[str], None] = lambda line: None) -> tuple[pd.DataFrame, dict]:
    """Train :data:`MODELS` on ``dataset`` into ``out/<model>`` (afresh).

    Args:
        settings: ``--<field> <value>`` settings for every trained model (e.g. epochs, lr).
        report: called with one line per finished model.

    Returns:
        The test-metric table (one row per model) and the runs' results by model.
    """
    import pandas as pd
    rows, results = [], {}
    for model in MODELS:
        config = build_run_config(model, overrides=settings if model != "popularity" else {"progress": "false"})
        result, _ = run(dataset, config, Path(out) / model, resume=False)
        results[model] = result
        rows.append({"model": model, "best_epoch": result.best_epoch, "wall_s": round(result.wall_s, 1),
                     **{f"test {m}": result.test[m] for m in ("recall@20", "ndcg@20", "precision@20")}})
        report(f"  {model:<10} {result.summary()}")
    return pd.DataFrame(rows).set_index("model"), results


def write_figures(results: dict, folder: str | Path) -> list[Path]:
    """The training curves of the trained models and their Recall@20 by user activity, into ``folder``."""
    from diffmm.viz import plots

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    per_user = {m: r.test_result.per_user for m, r in results.items()}
    histories = {m: r.history for m, r in results.items() if m != "popularity"}
    written = [plots.save_figure(plots.sparsity_figure(per_user), folder / "sparsity"),
               plots.save_figure(plots.training_curves(histories), folder / "training_curves")]
    return [Path(p) for paths in written for p in (paths if isinstance(paths, list) else [paths])]


# ------------------------------------------------------------------------------------------ CLI
def add_parser(sub) -> None:
    p = sub.add_parser("quickstart", help="train popularity, MF, LightGCN and DiffMM; table + figures")
    p.add_argument("--data", default="synthetic", help="dataset directory or registered name (default: synthetic)")
    p.add_argument("--epochs", type=int, default=10, help="epochs per model (default: 10)")
    p.add_argument("--lr", type=float, default=5e-3,
                   help="learning rate (default: 5e-3, higher than the paper's for a short run)")
    p.add_argument("--out", default="runs/quickstart", help="parent of the run directories (default: runs/quickstart)")
    p.add_argument("--figures", default="figures/quickstart", help="where the figures go (default: figures/quickstart)")
    p.set_defaults(func=main, accepts_settings=True)


def main(args, extra=()) -> int:
    from diffmm.data import registry as datasets

    dataset = datasets.load(args.data)
    print(dataset)
    settings = {"epochs": str(args.epochs), "lr": str(args.lr), "progress": "false", **parse_settings(extra)}
    table, results = quickstart(dataset, args.out, settings, report=print)
    print()
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    print("figures: " + ", ".join(map(str, write_figures(results, args.figures))))
    return 0

"""Command line: ``python -m diffmm train | evaluate | stats | summarize | quickstart | bench | figures``.

    python -m diffmm train --model lightgcn --data ../shared/datasets/tiktok --epochs 3 --seed 7 --out runs/lgcn
    python -m diffmm train --model diffmm --data ../shared/datasets/tiktok --preset tiktok --out runs/diffmm
    python -m diffmm stats --data ../shared/datasets/ml100k
    python -m diffmm summarize runs/tiktok-diffmm-s*       # seeds: one row each, then mean and std

``--data`` takes a directory (DiffMM pkl, MMRec .inter or RecBole format) or a registered name
('synthetic', 'ml100k', 'tiktok', 'baby'). Any config field can be set with ``--<field> <value>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def _load_data(spec: str):
    from diffmm import datasets

    return datasets.load(spec)


def _overrides(extra: list[str]) -> dict[str, str]:
    """['--epochs', '3', '--seed=7'] -> {'epochs': '3', 'seed': '7'}."""
    out, i = {}, 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--"):
            raise SystemExit(f"error: expected --<setting> <value>, got '{token}'")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(extra):
                raise SystemExit(f"error: setting --{key} needs a value")
            value, i = extra[i + 1], i + 1
        out[key] = value
        i += 1
    return out


def _settings_help() -> str:
    """Every config field a ``--<field> <value>`` may set, with its default, per config class."""
    import dataclasses
    import textwrap

    from diffmm.config import TrainConfig
    from diffmm.models import MODELS

    lines = ["settings (--<field> <value>; meanings in diffmm/config.py; 'none' for optional fields):"]
    classes = {"TrainConfig (all models)": TrainConfig,
               **{f"{cls.__name__} (--model {name})": cls for name, (cls, _) in MODELS.items()}}
    for title, cls in classes.items():
        if not dataclasses.fields(cls):
            continue
        fields = ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
                           for k, v in cls().to_dict().items())
        lines += [f"  {title}:", textwrap.fill(fields, width=100, initial_indent="    ", subsequent_indent="    ")]
    return "\n".join(lines)


def cmd_train(args, extra) -> int:
    from diffmm.config import RunConfig
    from diffmm.experiments import build_run_config, run

    base = RunConfig.load(args.config) if args.config else None
    model = args.model or (base.model if base else "lightgcn")
    config = build_run_config(model, args.preset, _overrides(extra), base=base)
    dataset = _load_data(args.data)
    out = Path(args.out) if args.out else Path("runs") / f"{dataset.name}-{model}"
    result, _ = run(dataset, config, out, resume=not args.fresh)
    print(f"{model} on {dataset.name}: {result.summary()} -> {out}")
    return 0


def cmd_evaluate(args, extra) -> int:

    from diffmm.config import RunConfig, TrainConfig
    from diffmm.evaluate import evaluate
    from diffmm.models import build_model
    from diffmm.train import changed_settings, data_signature, load_checkpoint

    run_dir = Path(args.run)
    config = RunConfig.load(run_dir / "config.json")
    dataset = _load_data(args.data)
    model = build_model(config.model, dataset, config.model_config)
    best = load_checkpoint(run_dir / "best.pt")
    if "signature" in best:  # checkpoints of earlier versions have none: load_state_dict checks shapes
        changed = changed_settings({"data": best["signature"]["data"]}, {"data": data_signature(dataset)})
        if changed:
            raise ValueError(f"{run_dir / 'best.pt'} was trained on other data ({'; '.join(changed)}): "
                             "pass the dataset it was trained on with --data")
    model.load_state_dict(best["model"])
    train = TrainConfig.from_dict(config.train)
    rows = {split: evaluate(model.scorer(), dataset, split, train.ks).metrics for split in ("valid", "test")}
    print(pd.DataFrame(rows).T.to_string(float_format=lambda v: f"{v:.4f}"))
    return 0


def cmd_quickstart(args, extra) -> int:
    """Train the baselines and DiffMM on one dataset, print the metrics table, write figures."""
    from diffmm.experiments import build_run_config, run

    dataset = _load_data(args.data)
    overrides = {"epochs": str(args.epochs), "lr": str(args.lr), "progress": "false", **_overrides(extra)}
    rows, per_user, histories = [], {}, {}
    print(dataset)
    for model in ("popularity", "mf", "lightgcn", "diffmm"):
        config = build_run_config(model, overrides=overrides if model != "popularity" else {"progress": "false"})
        result, _ = run(dataset, config, Path(args.out) / model, resume=False)
        rows.append({"model": model, "best_epoch": result.best_epoch, "wall_s": round(result.wall_s, 1),
                     **{f"test {m}": result.test[m] for m in ("recall@20", "ndcg@20", "precision@20")}})
        per_user[model] = result.test_result.per_user
        histories[model] = result.history
        print(f"  {model:<10} {result.summary()}")
    table = pd.DataFrame(rows).set_index("model")
    print()
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    try:
        from diffmm.viz import plots
    except ImportError:
        return 0
    figures = Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    written = [plots.save_figure(plots.sparsity_figure(per_user), figures / "sparsity"),
               plots.save_figure(plots.training_curves({m: h for m, h in histories.items() if m != "popularity"}),
                                 figures / "training_curves")]
    print(f"figures: {', '.join(str(p) for paths in written for p in (paths if isinstance(paths, list) else [paths]))}")
    return 0


def cmd_summarize(args, extra) -> int:
    from diffmm.experiments import summarize_runs

    table = summarize_runs(args.runs, average_from=args.average_from)
    print(table.to_string(float_format=lambda v: f"{v:.4f}", na_rep=""))
    return 0


def cmd_stats(args, extra) -> int:
    from diffmm.data.card import activity_distribution

    dataset = _load_data(args.data)
    print(dataset.stats().to_string())
    print()
    print(activity_distribution(dataset).to_string())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffmm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train and evaluate a model; writes a run directory",
                           epilog=_settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--model", help="diffmm, lightgcn, mf or popularity (default lightgcn)")
    train.add_argument("--data", default="synthetic", help="dataset directory or registered name")
    train.add_argument("--preset", help="paper hyperparameters for diffmm: tiktok, baby, sports")
    train.add_argument("--config", help="a config.json / .yaml (e.g. from an earlier run) to start from")
    train.add_argument("--out", help="run directory (default runs/<data>-<model>)")
    train.add_argument("--fresh", action="store_true", help="do not resume from <out>/last.pt")
    train.set_defaults(func=cmd_train)
    ev = sub.add_parser("evaluate", help="evaluate a run directory's best checkpoint")
    ev.add_argument("--run", required=True, help="run directory (holds config.json and best.pt)")
    ev.add_argument("--data", required=True, help="the dataset it was trained on: directory or registered name")
    ev.set_defaults(func=cmd_evaluate)
    quick = sub.add_parser("quickstart", help="train popularity, MF, LightGCN and DiffMM; table + figures")
    quick.add_argument("--data", default="synthetic", help="dataset directory or registered name")
    quick.add_argument("--epochs", type=int, default=10, help="epochs per model")
    quick.add_argument("--lr", type=float, default=5e-3, help="learning rate (higher than the paper's for a short run)")
    quick.add_argument("--out", default="runs/quickstart", help="parent of the run directories")
    quick.add_argument("--figures", default="figures/quickstart", help="where the figures go")
    quick.set_defaults(func=cmd_quickstart)
    stats = sub.add_parser("stats", help="print the dataset's Table-1 statistics")
    stats.add_argument("--data", required=True, help="dataset directory or registered name")
    stats.set_defaults(func=cmd_stats)
    summarize = sub.add_parser("summarize", help="table of finished runs (e.g. seeds) with mean and std")
    summarize.add_argument("runs", nargs="+", help="run directories")
    summarize.add_argument("--average-from", type=int, default=None, metavar="EPOCH",
                           help="also average each run's test metrics over epochs >= EPOCH (less selection noise)")
    summarize.set_defaults(func=cmd_summarize)
    for name, fn in _extra_commands().items():
        fn(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere on the line, before or after the command
    args, extra = parser.parse_known_args([a for a in argv if a != "--debug"])
    args.debug = debug
    if extra and args.command not in ("train", "quickstart"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args, extra)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume from the last finished epoch", file=sys.stderr)
        return 130
    except Exception as error:  # the one error boundary: a line naming the file and the fix, no traceback
        if args.debug:
            raise
        message = str(error) or type(error).__name__
        if not isinstance(error, (ValueError, OSError, RuntimeError)):
            message = f"{type(error).__name__}: {message}"
        print(f"error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2


def _extra_commands() -> dict:
    """Subcommands defined in other modules (bench, figures), registered if importable."""
    commands = {}
    try:
        from diffmm.bench import add_parser as bench
        commands["bench"] = bench
    except ImportError:
        pass
    from diffmm.experiments.reproduce import add_parser as reproduce
    commands["reproduce"] = reproduce
    try:
        from diffmm.viz.cli import add_parser as figures
        commands["figures"] = figures
    except ImportError:
        pass
    return commands


if __name__ == "__main__":
    sys.exit(main())

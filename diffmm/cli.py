"""Command line: ``python -m diffmm train | evaluate | stats | summarize | quickstart | reproduce | bench | figures``.

    python -m diffmm train --model lightgcn --data tiktok --epochs 3 --seed 7 --out runs/lgcn
    python -m diffmm train --model diffmm --data tiktok --preset tiktok --out runs/diffmm
    python -m diffmm stats --data ml100k
    python -m diffmm summarize runs/tiktok-diffmm-s*       # seeds: one row each, then mean and std
    python -m diffmm reproduce --status                     # the paper's analyses: stored / missing runs

Each command is registered by its module's ``add_parser(subparsers)`` (:func:`_command_registrars`).

``--data`` takes a directory (DiffMM pkl, MMRec .inter or RecBole format) or a registered name
('synthetic', 'synthetic-small', 'ml100k', 'tiktok', 'baby'). Any config field can be set with ``--<field> <value>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
import argparse
import sys
from pathlib import Path

if TYPE_CHECKING:  # pandas loads on first use: training never imports it (~33 MiB of RSS)
    import pandas as pd



def _load_data(spec: str):
    from diffmm.data import registry as datasets

    return datasets.load(spec)


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
    from diffmm.experiments import build_run_config, run
    from diffmm.experiments.runs import RunConfig, parse_settings

    base = RunConfig.load(args.config) if args.config else None
    model = args.model or (base.model if base else "lightgcn")
    config = build_run_config(model, args.preset, parse_settings(extra), base=base)
    dataset = _load_data(args.data)
    out = Path(args.out) if args.out else Path("runs") / f"{dataset.name}-{model}"
    result, _ = run(dataset, config, out, resume=not args.fresh)
    print(f"{model} on {dataset.name}: {result.summary(config.train.metric)} -> {out}")
    return 0


def cmd_evaluate(args, extra) -> int:
    import pandas as pd
    from diffmm.evaluate import evaluate
    from diffmm.experiments.runs import load_run

    dataset = _load_data(args.data)
    model, config = load_run(args.run, dataset)  # refused, naming both, if trained on other data
    rows = {split: evaluate(model.scorer(), dataset, split, config.train.ks).metrics for split in ("valid", "test")}
    if args.test_mask == "train":  # the authors' protocol: validation items stay candidates on test
        rows["test, training items masked"] = evaluate(model.scorer(), dataset, "test", config.train.ks,
                                                       mask_valid=False).metrics
    print(pd.DataFrame(rows).T.to_string(float_format=lambda v: f"{v:.4f}"))
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


def add_parser(sub) -> None:
    """The core commands: train, evaluate, stats, summarize."""
    train = sub.add_parser("train", help="train and evaluate a model; writes a run directory",
                           epilog=_settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    from diffmm.models import MODELS

    train.add_argument("--model", help=f"{', '.join(MODELS)} (default lightgcn)")
    train.add_argument("--data", default="synthetic", help="dataset directory or registered name")
    train.add_argument("--preset", help="the DiffMM authors' hyperparameters for a dataset: tiktok, baby, sports "
                       "(Amazon-Sports is not registered: --data <folder> in DiffMM's or MMRec's format)")
    train.add_argument("--config", help="a config.json / .yaml (e.g. from an earlier run) to start from")
    train.add_argument("--out", help="run directory (default runs/<data>-<model>)")
    train.add_argument("--fresh", action="store_true", help="do not resume from <out>/last.pt")
    train.set_defaults(func=cmd_train, accepts_settings=True)
    ev = sub.add_parser("evaluate", help="evaluate a run directory's best checkpoint")
    ev.add_argument("--run", required=True, help="run directory (holds config.json and best.pt)")
    ev.add_argument("--data", required=True, help="the dataset it was trained on: directory or registered name")
    ev.add_argument("--test-mask", choices=("train+valid", "train"), default="train+valid",
                    help="items the test ranking masks; 'train' adds a row with training items masked only, as "
                         "the authors' code (default: training and validation items)")
    ev.set_defaults(func=cmd_evaluate)
    stats = sub.add_parser("stats", help="print the dataset's Table-1 statistics")
    stats.add_argument("--data", required=True, help="dataset directory or registered name")
    stats.set_defaults(func=cmd_stats)
    summarize = sub.add_parser("summarize", help="table of finished runs (e.g. seeds) with mean and std")
    summarize.add_argument("runs", nargs="+", help="run directories")
    summarize.add_argument("--average-from", type=int, default=None, metavar="EPOCH",
                           help="also average each run's test metrics over epochs >= EPOCH (less selection noise)")
    summarize.set_defaults(func=cmd_summarize)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffmm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_parser in _command_registrars():
        add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere on the line, before or after the command
    args, extra = parser.parse_known_args([a for a in argv if a != "--debug"])
    args.debug = debug
    if extra and not getattr(args, "accepts_settings", False):
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


def _command_registrars() -> tuple:
    """Every subcommand is registered the same way: its module's ``add_parser(subparsers)``."""
    from diffmm import bench
    from diffmm.experiments import quickstart, reproduce
    from diffmm.viz import cli as figures

    return add_parser, quickstart.add_parser, reproduce.add_parser, bench.add_parser, figures.add_parser


if __name__ == "__main__":
    sys.exit(main())

"""A run: (dataset, RunConfig) -> trained model, metrics and files in a run directory.

Layout of a run directory::

    config.json        the full RunConfig (model, model_config, train)
    history.csv        one row per epoch (losses, phase times, valid/test metrics when evaluated)
    metrics.json       best_epoch, valid/test at best_epoch, optimistic best-test, wall time
    per_user_test.csv  per-user test metrics at best_epoch (group by n_train for the sparsity figure)
    topk_test.csv      each test user's top-K list (user, rank, item, score) from the best checkpoint
    best.pt, last.pt   best-validation weights; resumable last state

Grids of runs over the paper's analyses, cached by configuration, are :mod:`diffmm.experiments.reproduce`'s
job (one record per run in the results store).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from diffmm.config import ConfigBase, DiffMMConfig, TrainConfig, UnknownFieldError, coerce
from diffmm.data.dataset import RecDataset
from diffmm.evaluate import export_topk
from diffmm.models import MODELS, build_model
from diffmm.checkpoints import load_checkpoint
from diffmm.train import Callback, FitResult, Trainer
from diffmm.utils import atomic_path, atomic_write_text, exclusive_directory

if TYPE_CHECKING:  # pandas loads on first use: training never imports it (~33 MiB of RSS)
    import pandas as pd


@dataclass
class RunConfig:
    """Everything that determines a run: the model's registered name, its config and the training config.

    Typed end to end: ``model_config`` is the model's config dataclass (``MODELS[model][0]``) and
    ``train`` a :class:`TrainConfig`; dicts given to the constructor (read from JSON / YAML) are
    validated into them, so a field added later takes its default.
    """

    model: str = "lightgcn"
    model_config: ConfigBase | None = None  # None: the model's defaults
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"unknown model '{self.model}'; available: {sorted(MODELS)}")
        config_cls = MODELS[self.model][0]
        if self.model_config is None or isinstance(self.model_config, dict):
            self.model_config = config_cls.from_dict(self.model_config or {})
        elif not isinstance(self.model_config, config_cls):
            raise ValueError(f"model_config of '{self.model}' must be a {config_cls.__name__} or a dict, "
                             f"got {type(self.model_config).__name__}")
        if isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)
        elif not isinstance(self.train, TrainConfig):
            raise ValueError(f"train must be a TrainConfig or a dict, got {type(self.train).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "model_config": self.model_config.to_dict(), "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        unknown = sorted(set(values) - {"model", "model_config", "train"})
        if unknown:
            raise UnknownFieldError(f"RunConfig: unknown field(s) {unknown}; known fields: ['model', 'model_config', 'train']")
        return cls(**values)

    def setting(self, name: str) -> Any:
        """A setting by name, of the model's config or else of the training's (e.g. ``l2``, ``lr``)."""
        return getattr(self.model_config if hasattr(self.model_config, name) else self.train, name)

    def replace(self, **changes) -> "RunConfig":
        """A copy with fields replaced, e.g. ``config.replace(train=config.train.replace(seed=1))``."""
        return dataclasses.replace(self, **changes)

    def save(self, path: str | Path, run_id: str | None = None) -> None:
        values = {**({"run_id": run_id} if run_id else {}), **self.to_dict()}
        atomic_write_text(path, json.dumps(values, indent=2, default=list))

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        text = path.read_text()
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                values = yaml.safe_load(text)
            else:
                values = json.loads(text)
            if not isinstance(values, dict):
                raise ValueError(f"expected an object with 'model', 'model_config', 'train', got {type(values).__name__}")
            values.pop("run_id", None)  # which run wrote it, not part of the config
            return cls.from_dict(values)
        except Exception as error:  # the JSON / YAML parser's or from_dict's message, with the file named
            raise ValueError(f"{path}: {error}") from None


def build_run_config(model: str, preset: str | None = None, overrides: dict[str, Any] | None = None,
                     base: RunConfig | None = None) -> RunConfig:
    """Merge defaults, an optional paper preset, a base config and ``key=value`` overrides.

    Each override key is looked up in the model's config first, then in :class:`TrainConfig`;
    string values are parsed to the field's type. Unknown keys raise ``ValueError``.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model '{model}'; available: {sorted(MODELS)}")
    config_cls, _ = MODELS[model]
    if preset and base is not None:  # the base holds every setting: the preset would be silently overwritten
        raise ValueError(f"give a preset ('{preset}') or a base config, not both: a config file holds every setting "
                         "(apply a preset's values as overrides instead)")
    model_values = config_cls().to_dict()
    train_values = TrainConfig().to_dict()
    if preset:
        if config_cls is not DiffMMConfig:
            raise ValueError(f"presets are defined for the diffmm model, not '{model}'")
        model_values.update(DiffMMConfig.preset(preset).to_dict())
        train_values.update(DiffMMConfig.TRAIN_PRESETS.get(preset, {}))
    if base is not None:
        model_values.update(base.model_config.to_dict())
        train_values.update(base.train.to_dict())
    for key, value in (overrides or {}).items():
        key = key.replace("-", "_")
        for cls, values in ((config_cls, model_values), (TrainConfig, train_values)):
            if key in values:
                try:
                    value = coerce(typing.get_type_hints(cls)[key], value)
                except ValueError as error:
                    raise ValueError(f"--{key}: {error}") from None
                values[key] = value
                break
        else:
            raise ValueError(f"unknown setting '{key}': not a field of {config_cls.__name__} "
                             f"({sorted(model_values)}) nor of TrainConfig ({sorted(train_values)})")
    return RunConfig(model, config_cls.from_dict(model_values), TrainConfig.from_dict(train_values))


def parse_settings(extra: Sequence[str]) -> dict[str, str]:
    """Command-line settings: ['--epochs', '3', '--seed=7'] -> {'epochs': '3', 'seed': '7'}."""
    out, i = {}, 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--"):
            raise ValueError(f"expected --<setting> <value>, got '{token}'")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(extra):
                raise ValueError(f"setting --{key} needs a value")
            value, i = extra[i + 1], i + 1
        out[key] = value
        i += 1
    return out


RUN_FILES = ("config.json", "history.csv", "metrics.json", "per_user_test.csv", "topk_test.csv", "best.pt", "last.pt")
RESULT_FILES = ("metrics.json", "history.csv", "per_user_test.csv", "topk_test.csv")  # written when the run ends


def run(dataset: RecDataset, config: RunConfig, out_dir: str | Path | None = None, resume: bool = True,
        callbacks: Sequence[Callback] = ()) -> tuple[FitResult, torch.nn.Module]:
    """Train and evaluate one model; if ``out_dir`` is given, write the run directory there.

    The directory has one writer: its lock is held for the whole run (a second process on the same
    directory is refused; a killed one leaves no lock behind). ``resume=False`` first deletes the
    previous run's files, so none of them can be read beside the new run's. Every file carries the run's id.
    """
    if out_dir is None:
        return run_locked(dataset, config, None, resume, callbacks)
    with exclusive_directory(out_dir) as out:
        if not resume:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
        return run_locked(dataset, config, out, resume, callbacks)


def run_locked(dataset: RecDataset, config: RunConfig, out: Path | None, resume: bool = True,
               callbacks: Sequence[Callback] = ()) -> tuple[FitResult, torch.nn.Module]:
    """:func:`run` in a directory whose lock the caller holds (``utils.exclusive_directory``), e.g. for as
    long as it also writes what it derives from the run."""
    model = build_model(config.model, dataset, config.model_config, seed=config.train.seed)
    trainer = Trainer(model, dataset, config.train, out_dir=out, callbacks=callbacks, resume=resume)
    if out:  # after the trainer checked that a checkpoint it resumes is of this same run
        config.save(out / "config.json", run_id=trainer.run_id)
        for name in RESULT_FILES:  # an earlier end's results (e.g. before --epochs grew) are not this config's
            (out / name).unlink(missing_ok=True)
    result = trainer.fit()
    trainer.close()
    if out:
        with atomic_path(out / "history.csv") as tmp:
            result.history.assign(run_id=result.run_id).to_csv(tmp, index=False)
        payload = {"model": config.model, "dataset": dataset.name, **result.to_dict()}
        atomic_write_text(out / "metrics.json", json.dumps(payload, indent=2, allow_nan=False))
        test = result.test_result  # the selected epoch's test evaluation, per user and top-K
        if test is not None:
            with atomic_path(out / "per_user_test.csv") as tmp:
                test.per_user.assign(run_id=result.run_id).to_csv(tmp, index=False)
            export_topk(test, out / "topk_test.csv", dataset.item_names, run_id=result.run_id)
        if (out / "best.pt").exists():  # the returned model holds the best-validation weights
            model.load_state_dict(load_checkpoint(out / "best.pt")["model"])
    return result, model


def load_run(run_dir: str | Path, dataset: RecDataset) -> tuple[torch.nn.Module, RunConfig]:
    """A run directory's model with its best-validation weights (``best.pt``), and its config.

    The model is rebuilt from ``config.json`` for ``dataset``, which must be the data it was trained on
    (the checkpoint's data signature is checked; a mismatch names both). A DiffMM model comes back with
    the generated graphs of its selected epoch (``model.generated``). The checkpoint is read as data.
    """
    from diffmm.checkpoints import data_changes

    run_dir = Path(run_dir)
    config = RunConfig.load(run_dir / "config.json")
    best = load_checkpoint(run_dir / "best.pt")
    if "signature" in best:  # checkpoints of earlier versions have none: load_state_dict checks shapes
        changed = data_changes(best["signature"]["data"], dataset)
        if changed:
            raise ValueError(f"{run_dir / 'best.pt'} was trained on other data ({'; '.join(changed)}): "
                             "give the dataset it was trained on")
    model = build_model(config.model, dataset, config.model_config)
    model.load_state_dict(best["model"])
    return model.eval(), config


def run_dir_results(out_dir: str | Path, required: Sequence[str] = ("test",)) -> dict:
    """A finished run directory's metrics.json, checked to belong to the same run as its config.json."""
    out = Path(out_dir)
    found = read_json(out / "metrics.json")
    config = read_json(out / "config.json") if (out / "config.json").exists() else {}
    for name in required:
        if name not in found:
            raise ValueError(f"{out / 'metrics.json'}: field '{name}' is missing (is it a diffmm run's metrics.json?)")
    if found.get("run_id") and config.get("run_id") and found["run_id"] != config["run_id"]:
        raise ValueError(f"{out}: metrics.json (run {found['run_id']}) and config.json (run {config['run_id']}) "
                         "come from different runs; re-run it with --fresh")
    return found


def read_json(path: Path) -> dict:
    """A JSON object from a result file; a missing or malformed file raises an error naming it."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no finished run there (the run writes it at the end)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:  # nesting too deep
        raise ValueError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def summarize_runs(run_dirs: Sequence[str | Path], metrics: Sequence[str] = ("recall@20", "ndcg@20"),
                   average_from: int | None = None) -> pd.DataFrame:
    """One row per finished run directory (seed, best epoch, test and optimistic metrics), then mean and std.

    The std is the sample standard deviation over runs (ddof = 1), the spread a reader compares a
    reference number against ("within one standard deviation").
    ``average_from``: also the test metrics averaged over epochs >= this one (from ``history.csv``).
    Not a selection rule: a view of where a run's test metric sits with much less noise than the one
    epoch a small validation set picks (on TikTok, 3,051 validation interactions).
    """
    import pandas as pd
    rows = []
    for out in map(Path, run_dirs):
        found = run_dir_results(out, ("best_epoch", "epochs_run", "wall_s", "test", "optimistic_test"))
        seed = read_json(out / "config.json").get("train", {}).get("seed") if (out / "config.json").exists() else None
        row = {"run": out.name, "seed": seed, "best_epoch": found["best_epoch"], "epochs": found["epochs_run"],
               "wall_s": found["wall_s"]}
        row.update({f"test {m}": found["test"].get(m) for m in metrics})  # a run without that cut-off: blank
        row.update({f"optimistic {m}": found["optimistic_test"].get(m) for m in metrics})
        if average_from is not None:
            row.update(_late_average(out / "history.csv", metrics, average_from))
        rows.append(row)
    table = pd.DataFrame(rows).set_index("run")
    numeric = table.drop(columns=["seed"]).astype(float)
    stats = pd.DataFrame({"mean": numeric.mean(), "std": numeric.std(ddof=1)}).T
    out = pd.concat([table, stats])
    out["seed"] = out["seed"].astype("Int64")  # integers, blank on the mean / std rows
    return out


def _late_average(history_csv: Path, metrics: Sequence[str], first_epoch: int) -> dict[str, float]:
    import pandas as pd
    history = pd.read_csv(history_csv)
    late = history[history["epoch"] >= first_epoch]
    row = {}
    for m in metrics:
        column = f"test_{m}"
        values = late[column].dropna() if column in late else pd.Series(dtype=float)
        if values.empty:
            raise ValueError(f"{history_csv}: no '{column}' values at epochs >= {first_epoch} "
                             f"(the run has {int(history['epoch'].max())} epochs; test metrics are recorded at each validation)")
        row[f"mean test {m} (epochs >= {first_epoch})"] = float(values.mean())
    return row

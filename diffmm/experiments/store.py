"""The results store: one small JSON record per finished run, committed under ``figures/results/``.

A record holds what a figure or a reader needs and nothing heavy (no checkpoints): the full config,
the data fingerprint, the code version, seed, device, wall time, peak memory (host RSS; on CUDA also the
device's; records from 2026-12-01 on), the validation-selected test
metrics, the optimistic (best-test-epoch) ones, the late-epoch mean, the per-epoch history and the
test metrics summed per number of training interactions (any activity grouping of the sparsity
figure is a sum over those rows; these two, the bulk of a record, are rounded to :data:`STORED_DIGITS`
significant digits). Layout::

    figures/results/<dataset>/<model>-<key>.json

One file per run, written atomically: stores from several machines and days merge by copying files
(or by git), and a killed write leaves nothing. ``key`` hashes what determines the run (dataset name
and the config, without the settings that do not change results: device, threads, progress,
evaluation batch size). Records are read as data (JSON), never as code.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import platform
import subprocess
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from diffmm.config import UnknownFieldError
from diffmm.experiments.runs import RunConfig
from diffmm.models import MODELS

if TYPE_CHECKING:  # pandas loads on first use: training never imports it (~33 MiB of RSS)
    import pandas as pd

# settings that change where or how fast a run goes, not what it computes
RUNTIME_SETTINGS = ("device", "threads", "progress", "eval_batch_size")
# the late-epoch mean averages test metrics over epochs LATE_FROM..LATE_TO, one window for every run: a run
# stopped early on validation (or trained longer) is compared over the same epochs as a fixed-length one;
# a run that did not reach LATE_TO has none
LATE_FROM, LATE_TO = 20, 50
HISTORY_METRICS = ("recall@20", "ndcg@20", "precision@20", "hit@20")
RECORD_VERSION = 1
# significant digits kept of the per-epoch history and the per-activity sums (float32 carries ~7): the bulk of
# a record, half its size at full float64 repr, with no figure or table moving in the digits it prints
STORED_DIGITS = 7
# Config fields added after records were written, whose default is not what the older records ran with:
# a record without the field is read with this value, so its key (and what it says it trained) stays its own
# (BM3 and LATTICE trained fixed features until 2026-12-01)
LEGACY_VALUES = {"bm3": {"fine_tune_features": False}, "lattice": {"fine_tune_features": False}}


def normalized(config: RunConfig) -> dict:
    """The config (typed: fields added later hold their defaults) without :data:`RUNTIME_SETTINGS`: what
    :func:`run_key` hashes."""
    values = config.to_dict()
    values["train"] = {k: v for k, v in values["train"].items() if k not in RUNTIME_SETTINGS}
    return values


def run_key(dataset: str, config: RunConfig) -> str:
    """12 hex digits identifying a run: the dataset's name and its normalised config."""
    blob = json.dumps({"data": dataset, "config": normalized(config)}, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def record_path(root: str | Path, dataset: str, config: RunConfig) -> Path:
    return Path(root) / dataset / f"{config.model}-{run_key(dataset, config)}.json"


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """The package version, its random stream (``diffmm.RANDOM_STREAM``) and, when running from a git checkout,
    its commit (and whether ``diffmm/`` had changes). Read once per process (the first call, before a sweep
    trains): the code that runs."""
    import diffmm

    version = {"version": getattr(diffmm, "__version__", "unknown"), "random_stream": diffmm.RANDOM_STREAM,
               "commit": None, "dirty": None}
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            version["commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no",
                                     "--", "diffmm"], capture_output=True, text=True, timeout=10)
            version["dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def compact(value: Any, digits: int | None = STORED_DIGITS) -> Any:
    """``value`` with every float rounded to ``digits`` significant digits (None: as it is), lists and dicts
    recursively; JSON has no NaN, so a non-finite float becomes None (history cells of epochs without
    evaluation)."""
    if isinstance(value, float):
        return (float(f"{value:.{digits}g}") if digits else value) if np.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [compact(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: compact(v, digits) for k, v in value.items()}
    return value


def by_activity(per_user: pd.DataFrame, metrics: Iterable[str]) -> dict[str, list]:
    """Per number of training interactions: test users and the sum of each per-user metric."""
    groups = per_user.groupby("n_train")
    table = {"n_train": [int(n) for n in groups.size().index], "users": [int(c) for c in groups.size()]}
    for m in metrics:
        table[m] = [float(v) for v in groups[m].sum()]
    return table


def make_record(dataset, config: RunConfig, result, device: str, threads: int, code: dict | None = None) -> dict:
    """The store's record of a finished run (``result``: a :class:`~diffmm.train.FitResult` whose
    ``test_result`` is the selected epoch's test evaluation; ``code``: the version that trained it, by default
    :func:`code_version` of this process)."""
    import pandas as pd
    history = result.history
    keep = [c for c in history.columns if not c.startswith(("valid_", "test_"))
            or c.split("_", 1)[1] in HISTORY_METRICS]
    metrics = [c for c in result.test_result.per_user.columns if "@" in c]
    stored_history = compact({c: history[c].tolist() for c in keep})
    timed = [c for c in ("before_epoch_s", "rec_s") if c in history]  # training time per epoch, without evaluation
    epoch_times = history[timed].sum(axis=1) if timed else pd.Series(dtype=float)
    return {
        "record_version": RECORD_VERSION,
        "key": run_key(dataset.name, config),
        "dataset": dataset.name,
        "data": {"fingerprint": dataset.fingerprint(), "users": dataset.n_users, "items": dataset.n_items,
                 "train": int(dataset.train.nnz), "modalities": sorted(dataset.item_features)},
        "model": config.model,
        "seed": config.train.seed,
        "config": config.to_dict(),
        "code": code if code is not None else code_version(),
        "device": device, "threads": threads,
        "python": platform.python_version(), "torch": __import__("torch").__version__,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": result.wall_s, "cpu_s": result.cpu_s,
        "peak_rss_mib": result.peak_rss_mib, "peak_gpu_mib": result.peak_gpu_mib,
        "epoch_s": float(epoch_times.median()) if len(epoch_times) else None,
        "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
        "valid": result.valid, "test": result.test,
        "optimistic_test": result.optimistic_test, "optimistic_epoch": result.optimistic_epoch,
        "history": stored_history,
        "late_mean": late_mean(stored_history),
        "by_n_train": compact(by_activity(result.test_result.per_user, metrics)),
    }


def late_mean(history: dict[str, list]) -> dict:
    """The test metrics of ``history`` (a record's) averaged over epochs :data:`LATE_FROM`..:data:`LATE_TO`;
    only the window's bounds when the run has no test values at all of those epochs or stopped before
    ``LATE_TO``."""
    out = {"from_epoch": LATE_FROM, "to_epoch": LATE_TO}
    epochs = history.get("epoch") or []
    if not epochs or max(epochs) < LATE_TO:
        return out
    for m in HISTORY_METRICS:
        values = [v for e, v in zip(epochs, history.get(f"test_{m}") or []) if LATE_FROM <= e <= LATE_TO and v is not None]
        if values:
            out[m] = float(np.mean(values))
    return out


class RecordError(ValueError):
    """A result file that is not a record of this store; the message names the file and the field."""


REQUIRED = {"key": str, "dataset": str, "model": str, "seed": int, "best_epoch": int, "config": dict, "test": dict,
            "valid": dict, "history": dict, "by_n_train": dict, "late_mean": dict, "optimistic_test": dict}
NUMBERS = ("test", "valid", "optimistic_test", "late_mean")  # name -> number (or null)
COLUMNS = ("history", "by_n_train")  # name -> a list per column, all of one length


def _no_constant(name: str):
    raise ValueError(f"'{name}' is not JSON (records hold null where a value is missing)")


def read_record(path: str | Path) -> dict:
    """Read and check one record (JSON only; a malformed file raises :class:`RecordError` naming it)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(), parse_constant=_no_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:  # ValueError: JSON's; too deep
        raise RecordError(f"{path}: not a readable JSON results record ({error})") from None
    if not isinstance(record, dict):
        raise RecordError(f"{path}: expected a JSON object, found {type(record).__name__}")
    for name, kind in REQUIRED.items():
        if not isinstance(record.get(name), kind):
            raise RecordError(f"{path}: field '{name}' should be {kind.__name__}, found "
                              f"{type(record.get(name)).__name__}")
    number = (int, float, type(None))
    for name in NUMBERS:
        for key, value in record[name].items():
            if isinstance(value, bool) or not isinstance(value, number):
                raise RecordError(f"{path}: field '{name}.{key}' should be a number, found {type(value).__name__}")
    for name in COLUMNS:
        lengths = set()
        for key, column in record[name].items():
            if not isinstance(column, list) or not all(isinstance(v, number) and not isinstance(v, bool)
                                                        for v in column):
                raise RecordError(f"{path}: field '{name}.{key}' should be a list of numbers")
            lengths.add(len(column))
        if len(lengths) > 1:
            raise RecordError(f"{path}: the columns of field '{name}' should be of one length, found {sorted(lengths)}")
    return record


def _commit(record: dict) -> str:
    code = record.get("code")
    return str(code.get("commit", "unknown"))[:12] if isinstance(code, dict) else "unknown"


def write_record(root: str | Path, record: dict) -> Path:
    from diffmm.utils import atomic_write_text

    path = Path(root) / record["dataset"] / f"{record['model']}-{record['key']}.json"
    safe = {k: v if k == "config" else compact(v, None) for k, v in record.items()}  # standard JSON: no NaN
    atomic_write_text(path, json.dumps(safe, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n")
    return path


def load_records(root: str | Path, dataset: str | None = None) -> dict[str, dict]:
    """Every record under ``root`` (or ``root/<dataset>``), by key; the key is recomputed from the stored
    config, so a record stays found when the config classes gain fields (whose defaults keep old
    behaviour, or whose old value :data:`LEGACY_VALUES` names)."""
    folder = Path(root) / dataset if dataset else Path(root)
    records, paths = {}, {}
    for path in sorted(folder.rglob("*.json")) if folder.exists() else []:
        record = read_record(path)
        if record["model"] not in MODELS or record["config"].get("model") != record["model"]:
            if record["config"].get("model") == record["model"]:  # a model of newer code: not an error
                warnings.warn(f"{path}: left out; its model '{record['model']}' is not one this version of diffmm "
                              f"has; it was written by newer code (commit {_commit(record)})", stacklevel=2)
                continue
            raise RecordError(f"{path}: field 'model' is '{record['model']}' but its config trains "
                              f"'{record['config'].get('model')}'")
        legacy = LEGACY_VALUES.get(record["model"])
        if legacy and isinstance(record["config"].get("model_config"), dict):
            record["config"]["model_config"] = {**legacy, **record["config"]["model_config"]}
        try:
            key = run_key(record["dataset"], RunConfig.from_dict(record["config"]))
        except UnknownFieldError as error:  # a run of newer code (merged from another machine): not an error
            warnings.warn(f"{path}: left out; its config has settings this version of diffmm does not know "
                          f"({error}); it was written by newer code (commit {_commit(record)})", stacklevel=2)
            continue
        except (ValueError, KeyError, TypeError) as error:
            raise RecordError(f"{path}: field 'config' is not a valid run config ({error})") from None
        if key in paths:  # two files of one run (e.g. copied in under another name): one is kept, said so
            warnings.warn(f"{path}: the same run as {paths[key]}; only {path.name} is kept", stacklevel=2)
        records[key], paths[key] = record, path
    return records

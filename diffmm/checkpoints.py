"""Checkpoints as data: reading one safely, and what it must match to be resumed or evaluated (the run's
settings and the data's signature)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffmm.data.dataset import RecDataset


def data_signature(dataset: RecDataset) -> dict:
    """What identifies the data a model was trained on: its sizes and a fingerprint of its splits and features
    (a re-split or other features give another)."""
    return {"name": dataset.name, "users": dataset.n_users, "items": dataset.n_items,
            "train interactions": int(dataset.train.nnz), "fingerprint": dataset.fingerprint()}


def data_changes(saved: dict | None, dataset: RecDataset) -> list[str]:
    """'data.field: old -> new' where ``dataset`` is not the data of a checkpoint's signature ``saved``
    (checkpoints written before 2026-12-02 hold no fingerprint: their sizes are compared)."""
    current = data_signature(dataset)
    if saved is not None and "fingerprint" not in saved:
        current.pop("fingerprint")
    return changed_settings(None if saved is None else {"data": saved}, {"data": current})


def changed_settings(saved: dict | None, current: dict) -> list[str]:
    """'section.field: old -> new' for each difference between two :meth:`Trainer.run_signature` dicts
    (or parts of them); none when ``saved`` is None (a checkpoint written before they had one)."""
    if saved is None:
        return []

    def same(a, b) -> bool:  # tuples and lists alike
        return json.dumps(a, sort_keys=True, default=list) == json.dumps(b, sort_keys=True, default=list)

    changed = []
    for section, value in current.items():
        old = saved.get(section)
        if isinstance(value, dict) and isinstance(old, dict):
            changed += [f"{section}.{key}: {old.get(key)!r} -> {value.get(key)!r}"
                        for key in sorted(set(old) | set(value)) if not same(old.get(key), value.get(key))]
        elif not same(old, value):
            changed.append(f"{section}: {old!r} -> {value!r}")
    return changed


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, truncated, of another run, or holding more than data."""


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """A checkpoint as data: tensors and plain values only (``torch.load(weights_only=True)``), on the CPU.

    Anything else in the file (a pickled object, i.e. code it could run) is refused, as is a truncated
    or corrupt file; the error names the file. ``mmap``: tensors are mapped from the file and read only
    when used (for reading a small entry of a large checkpoint).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            detail = ("it holds objects other than tensors and plain values; refused, since loading them "
                      "could run code (checkpoints of diffmm 0.1.0 and later hold data only)")
        raise CheckpointError(f"{path}: not a readable diffmm checkpoint ({detail})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a diffmm checkpoint (expected a dict with a 'model' entry)")
    return state

"""Small shared helpers: atomic file writes, one writer per directory, seeding, device selection."""

from __future__ import annotations

import contextlib
import functools
import os
import random
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds.

    An interrupted write never leaves a partial file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; the final file gets the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


class DirectoryBusyError(RuntimeError):
    """Another live process holds the directory's lock; ``holder`` is its pid (as the lock file says)."""

    def __init__(self, message: str, holder: str = "unknown"):
        super().__init__(message)
        self.holder = holder


@contextlib.contextmanager
def exclusive_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold ``<directory>/.lock`` (an OS file lock) while the block runs: one writer per directory.

    The lock dies with its process, so a crashed or killed run never blocks the next one. On entry,
    temporary files that a killed atomic write left behind (``.<name>.*.tmp``) are removed.
    Raises :class:`DirectoryBusyError` naming the holder's pid if another process has the lock.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / ".lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no OS lock; the run goes on unguarded
            pass
        except BlockingIOError:
            holder = lock.read_text().strip() or "unknown"
            raise DirectoryBusyError(f"{directory} is being written by another process (pid {holder}); wait for it "
                                     "to finish, or write to another directory", holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        for stale in directory.glob(".*.tmp"):  # no other writer exists: these are a killed write's leftovers
            stale.unlink(missing_ok=True)
        yield directory
    finally:
        os.close(fd)  # releases the lock


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA if available, else CPU; anything else is passed to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device '{device}' was asked for, but this torch ({torch.__version__}) sees no CUDA "
                             "GPU: use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device '{device}' was asked for, but only {torch.cuda.device_count()} GPU(s) exist")
    return device

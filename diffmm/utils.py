"""Small shared helpers: atomic file writes, seeding, device selection, the heap policy."""

from __future__ import annotations

import contextlib
import functools
import ctypes
import os
import sys
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


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA if available, else CPU; anything else is passed to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@functools.lru_cache(maxsize=None)
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def trim_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Called between an epoch's phases: each phase leaves freed blocks of its own sizes on the heap,
    and without a trim the next phase's peak sits on top of them (TikTok: ~100 MB of peak RSS).
    """
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


# Below the denoisers' (rows x items) blocks of up to 16 MiB (models.diffmm.GENERATOR_CHUNK_BYTES), so
# those leave the process when freed; at 16 MiB a full chunk's blocks fell just under it and stayed on
# the heap (synthetic 5,000 / 10,000 items: peak RSS 990 / 1,433 -> 834 / 1,266 MB; TikTok unchanged).
# Above TikTok's (nodes x 128) float32 embeddings (8.2 MB): those are reused every step.
MMAP_THRESHOLD_BYTES = 12 << 20


def return_large_buffers_to_os(threshold_bytes: int | None = None) -> bool:
    """Serve heap allocations >= ``threshold_bytes`` with mmap, so freed large buffers leave the process.

    glibc raises its mmap threshold after the first large free and then keeps freed (batch x items)
    buffers on a fragmented heap: on TikTok that is ~400 MB of peak RSS for nothing. A fixed
    threshold (:data:`MMAP_THRESHOLD_BYTES` by default, ``$DIFFMM_MMAP_THRESHOLD`` to change, 0 to
    keep glibc's policy) returns each large tensor's pages when it is freed, at the cost of page
    faults when one is allocated; smaller temporaries (cache-sized chunks, (nodes, d) embeddings)
    stay on the heap. Returns whether the policy was applied (glibc on Linux only).
    """
    if threshold_bytes is None:
        threshold_bytes = int(os.environ.get("DIFFMM_MMAP_THRESHOLD", MMAP_THRESHOLD_BYTES))
    libc = _glibc()
    if threshold_bytes <= 0 or libc is None:
        return False
    M_MMAP_THRESHOLD = -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))

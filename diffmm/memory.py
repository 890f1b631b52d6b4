"""The process's memory and thread policy, in one module.

The entry point (``python -m diffmm``, the benchmarks) calls :func:`configure` once, before torch loads;
library code only says where a phase ends (:func:`phase_end`) and how many threads a run asks for
(:func:`set_threads`). What each setting buys is measured in docs/performance.md.

* Transparent huge pages for torch's CPU allocator (``THP_MEM_ALLOC_ENABLE``, torch's own opt-in, read
  when torch loads): large heap blocks fragment less.
* A fixed glibc mmap threshold: freed large buffers (the denoisers' (rows x items) blocks) leave the
  process instead of staying on a fragmented heap; and a trim threshold high enough that freeing the
  BPR step's buffers does not hand their pages back, to be faulted in again by the next step.
* Heap trims (``malloc_trim``) where a phase ends, so a phase's peak does not sit on the previous
  phase's freed blocks.
* How many runs a sweep trains at once and with how many threads (:func:`default_jobs`,
  :func:`threads_per_run`, :func:`cores_used`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

# The largest dense (rows x items) float32 block of one denoiser chunk (models.diffmm splits its batches so).
GENERATOR_CHUNK_BYTES = 16 << 20
# Allocations of at least this size are mmap-ed. Below the generator chunks' blocks, which
# :func:`chunk_count` keeps at about half the budget or more (TikTok: 512 rows, 13.7 MB; kept on
# the heap they fragment it: a 4-epoch run peaked at 886 against 796 MiB); above the (nodes x 128)
# float32 embeddings of TikTok (8.2 MB), which every BPR step reuses.
MMAP_THRESHOLD_BYTES = GENERATOR_CHUNK_BYTES // 2
# Free memory the heap's top may hold before glibc returns it. Setting the mmap threshold leaves glibc's
# 128 KiB here, so every BPR step gave back and re-faulted its (nodes x 128) buffers (~5,700 page faults
# a step); at 64 MiB a TikTok BPR step takes 0.84-0.93x the time
# (two in-process interleaved runs, 2 threads) for ~30 MiB more peak RSS; the generator phase is unchanged.
TRIM_THRESHOLD_BYTES = 64 << 20
# On a GPU, chunks exist only to bound memory: there is no cache to stay in, and each chunk costs a dozen
# kernel launches, which a step of small kernels is bound by. Chunked loops (InfoNCE's log-sum-exp, the
# denoisers' batches) take this budget there instead of their CPU one. ``DIFFMM_DEVICE_CHUNK_BYTES``
# overrides it; 0 gives every device the CPU's chunks (to time the difference).
DEVICE_CHUNK_BYTES = int(os.environ.get("DIFFMM_DEVICE_CHUNK_BYTES", 1 << 30))


def chunk_bytes(device_type: str, cpu_bytes: int) -> int:
    """The size of a chunked loop's blocks on a device of ``device_type`` ('cpu', 'cuda', ...)."""
    return cpu_bytes if device_type == "cpu" or DEVICE_CHUNK_BYTES <= 0 else DEVICE_CHUNK_BYTES


def chunk_count(rows: int, row_bytes: int, budget_bytes: int) -> int:
    """How many chunks of equal size (within a row: ``tensor_split``) ``rows`` rows of ``row_bytes`` each
    take so that a chunk stays within ``budget_bytes``: as few as fit. Equal chunks make alike blocks,
    each (when there are several) about half the budget or more (within a row), so none is a small
    remainder left on the heap."""
    per_chunk = max(1, budget_bytes // max(1, row_bytes))
    return max(1, -(-rows // per_chunk))


def configure() -> None:
    """Apply the policy to this process: call before torch is imported (THP is read when it loads).

    ``THP_MEM_ALLOC_ENABLE=0`` and ``DIFFMM_MMAP_THRESHOLD=0`` switch the two allocator settings off.
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return_large_buffers_to_os()


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window for this process: Linux resets ``VmHWM`` when 5 is written to
    ``/proc/self/clear_refs`` (nothing else is cleared). False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_mib(field: str) -> float | None:
    """A size from Linux's ``/proc/self/status`` (e.g. ``VmRSS``), in MiB; None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB since :func:`reset_peak_rss` (Linux ``VmHWM``), or
    over its whole life where the kernel has no such window (``ru_maxrss``)."""
    peak = _status_mib("VmHWM")
    if peak is not None:
        return peak
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def rss_mib() -> float | None:
    """This process's resident set size now, in MiB (Linux ``VmRSS``; None elsewhere)."""
    return _status_mib("VmRSS")


def available_bytes() -> int | None:
    """Memory the machine can give new processes without swapping (Linux ``MemAvailable``); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


RUN_MEMORY_BYTES = 1 << 30  # what --jobs leaves per run: TikTok DiffMM runs peak at 742-860 MiB in a worker


def default_jobs(device: str = "cpu") -> int:
    """Runs at a time when ``--jobs`` is not given. On CPU one single-threaded run per core, as many as the
    available memory holds at :data:`RUN_MEMORY_BYTES` each: on a 2-core machine two one-thread runs side
    by side finish 1.14-1.21x the runs an hour of one two-thread run (``bench --sweep``, TikTok DiffMM,
    2026-12-02), a run's small operators scaling poorly over threads. On a GPU one
    (``bench --sweep --device cuda`` measures how many share it best)."""
    if not device.startswith("cpu"):
        return 1
    cores = os.cpu_count() or 1
    available = available_bytes()
    return max(1, min(cores, cores if available is None else available // RUN_MEMORY_BYTES))


def threads_per_run(jobs: int, device: str = "cpu") -> int:
    """torch threads of each of ``jobs`` concurrent runs when not given: on CPU the cores split between
    them, on a GPU 1 (the device does the work)."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs)) if device.startswith("cpu") else 1


def cores_used(jobs: int | None = None, threads: int | None = None) -> int:
    """CPU cores ``jobs`` runs of ``threads`` threads keep busy (jobs default: :func:`default_jobs`; threads
    default: :func:`threads_per_run`)."""
    jobs = default_jobs() if jobs is None else max(1, int(jobs))
    return max(1, min(os.cpu_count() or 1, jobs * (threads or threads_per_run(jobs))))


def set_threads(threads: int) -> None:
    """torch's CPU threads for this process (0: leave torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def trim_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere)."""
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def phase_end() -> None:
    """A phase of work ended (generator training, graph generation, the BPR steps, training itself):
    the next one starts without this one's freed blocks."""
    trim_heap()


def return_large_buffers_to_os(threshold_bytes: int | None = None) -> bool:
    """Serve heap allocations >= ``threshold_bytes`` with mmap, so freed large buffers leave the process.

    glibc raises its mmap threshold after the first large free and then keeps freed (batch x items)
    buffers on a fragmented heap. A fixed threshold (:data:`MMAP_THRESHOLD_BYTES` by default,
    ``$DIFFMM_MMAP_THRESHOLD`` to change, 0 to keep glibc's policy) returns each large tensor's pages
    when it is freed, at the cost of page faults when one is allocated. With it goes the trim threshold
    (:data:`TRIM_THRESHOLD_BYTES`, ``$DIFFMM_TRIM_THRESHOLD``), which a fixed mmap threshold would
    otherwise leave at glibc's 128 KiB. Returns whether it was applied (glibc on Linux only).
    """
    if threshold_bytes is None:
        threshold_bytes = int(os.environ.get("DIFFMM_MMAP_THRESHOLD", MMAP_THRESHOLD_BYTES))
    libc = _glibc()
    if threshold_bytes <= 0 or libc is None:
        return False
    M_MMAP_THRESHOLD, M_TRIM_THRESHOLD = -3, -1
    applied = bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))
    trim = int(os.environ.get("DIFFMM_TRIM_THRESHOLD", TRIM_THRESHOLD_BYTES))
    if applied and trim > 0:
        libc.mallopt(M_TRIM_THRESHOLD, trim)
    return applied

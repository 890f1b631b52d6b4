"""The process's memory policy (diffmm.memory)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from diffmm.memory import return_large_buffers_to_os


def test_return_large_buffers_to_os_can_be_switched_off(monkeypatch):
    assert return_large_buffers_to_os(0) is False
    monkeypatch.setenv("DIFFMM_MMAP_THRESHOLD", "0")
    assert return_large_buffers_to_os() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_large_tensors_leave_the_process():
    """With the policy, 40 freed 8 MB tensors allocated between live small ones do not stay resident;
    with the threshold glibc's dynamic policy drifts to after large frees (up to 32 MiB) they do.

    Both thresholds are set explicitly: where glibc's own threshold stands depends on what the
    imports before it happened to free, which varies with the code that was imported."""
    script = textwrap.dedent("""
        import sys, torch
        from diffmm.memory import return_large_buffers_to_os
        assert return_large_buffers_to_os((1 << 20) if sys.argv[1] == "on" else (32 << 20))
        def rss_mb():
            return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
        base = rss_mb()
        big, small = [], []
        for _ in range(40):
            big.append(torch.ones(2 << 20))  # 8 MB, touched
            small.append(torch.ones(64 << 10))  # 256 KB, on the heap right above each big buffer: pins it
        big.clear()
        print(rss_mb() - base)
    """)
    grown = {mode: float(subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                                        check=True).stdout) for mode in ("on", "off")}
    assert grown["on"] < 40, grown  # MB still resident after freeing 320 MB
    assert grown["off"] > 200, grown  # a high threshold keeps them: the measurement sees retention


def test_console_script_is_python_dash_m_diffmm():
    """The `diffmm` script runs diffmm.__main__, which sets the allocator option before torch loads."""
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["diffmm"] == "diffmm.__main__:entry"
    code = "import os, diffmm.__main__, torch; print(os.environ['THP_MEM_ALLOC_ENABLE'])"
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "1"


def test_generator_chunks_are_equal_and_leave_the_heap():
    """A generator batch splits into equal row chunks within the budget, whose dense (rows x items) blocks
    all sit above the mmap threshold, so they are returned when freed (a 399-row remainder of TikTok's
    1,024-user batches stayed on the heap and fragmented it)."""
    import torch
    from diffmm.memory import GENERATOR_CHUNK_BYTES, MMAP_THRESHOLD_BYTES, chunk_count

    assert chunk_count(1024, 4 * 6_710, GENERATOR_CHUNK_BYTES) == 2  # TikTok: 512 + 512 rows
    assert chunk_count(1024, 4 * 1_682, GENERATOR_CHUNK_BYTES) == 1  # MovieLens-100k: the whole batch
    assert chunk_count(5, 10**9, GENERATOR_CHUNK_BYTES) == 5  # a row over the budget is a chunk of its own
    for items in (2_000, 5_000, 6_710, 10_000, 18_357, 40_000, 100_000):
        for batch in (1024, 100, 1):
            count = chunk_count(batch, 4 * items, GENERATOR_CHUNK_BYTES)
            sizes = [len(c) for c in torch.arange(batch).tensor_split(count)]
            assert sum(sizes) == batch and max(sizes) - min(sizes) <= 1, (items, batch)
            assert max(sizes) * 4 * items <= GENERATOR_CHUNK_BYTES or max(sizes) == 1, (items, batch)
            if len(sizes) > 1:
                assert min(sizes) * 4 * items >= MMAP_THRESHOLD_BYTES, (items, batch)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_step_buffers_stay_until_the_explicit_trim():
    """Buffers below the mmap threshold, freed at the heap's top, stay mapped (the next BPR step reuses
    them without page faults) until :func:`trim_heap`; glibc's 128 KiB trim threshold would drop them."""
    script = textwrap.dedent("""
        from diffmm.memory import return_large_buffers_to_os, trim_heap
        assert return_large_buffers_to_os()  # before torch loads, as diffmm.memory.configure does
        import torch
        def rss_mb():
            return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
        base = rss_mb()
        buffers = [torch.ones(1 << 20) for _ in range(6)]  # 4 MB each, on the heap, touched
        buffers.clear()
        kept = rss_mb() - base
        trim_heap()
        print(kept, rss_mb() - base)
    """)
    kept, after_trim = map(float, subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                                 check=True).stdout.split())
    assert kept > 20 and after_trim < kept - 16, (kept, after_trim)  # 24 MB freed; 128 KiB: ~10 MB kept


def test_chunked_loops_take_cpu_sized_chunks_on_cpu_only(monkeypatch):
    from diffmm import memory

    assert memory.chunk_bytes("cpu", 4 << 20) == 4 << 20  # cache-sized
    assert memory.chunk_bytes("cuda", 4 << 20) == memory.DEVICE_CHUNK_BYTES >= 256 << 20  # memory-sized
    monkeypatch.setattr(memory, "DEVICE_CHUNK_BYTES", 0)  # DIFFMM_DEVICE_CHUNK_BYTES=0: the CPU's everywhere
    assert memory.chunk_bytes("cuda", 4 << 20) == 4 << 20

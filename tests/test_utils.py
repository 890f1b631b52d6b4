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


def test_full_generator_chunks_leave_the_heap():
    """A full chunk's dense (rows x items) blocks sit above the mmap threshold, so they are returned
    when freed (at a 16 MiB threshold they fell just under it: +120-160 MB peak at 5,000-10,000 items)."""
    from diffmm.memory import GENERATOR_CHUNK_BYTES, MMAP_THRESHOLD_BYTES

    for items in (5_000, 6_710, 10_000, 18_357, 40_000, 100_000):
        rows = GENERATOR_CHUNK_BYTES // (4 * items)
        assert rows * items * 4 > MMAP_THRESHOLD_BYTES, items


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

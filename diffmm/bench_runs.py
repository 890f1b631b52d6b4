"""Benches that run in child processes (``python -m diffmm bench --repeat`` and ``--sweep``).

:func:`run_repeated_bench` runs the same bench several times, one after another, and takes the medians:
on a shared machine one bench does not settle a ratio. :func:`run_sweep_bench` measures what a sweep of
many runs gets from the machine: for every way of splitting the cores between concurrent runs, or for
several runs sharing a GPU, that many benches at once, as runs per hour of a full-length run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Mapping, Sequence


GPU_RUNS = (1, 4, 8, 16)  # concurrent runs sharing one GPU that --sweep tries by default


def sweep_layouts(cores: int, runs: Sequence[int] = ()) -> list[tuple[int, int]]:
    """(concurrent runs, threads each): ``runs`` with the cores shared among them (at least 1 thread each),
    or by default every split of ``cores`` into equal shares."""
    if runs:
        return [(jobs, max(1, cores // jobs)) for jobs in runs]
    return [(jobs, cores // jobs) for jobs in range(1, cores + 1) if cores % jobs == 0]


def run_sweep_bench(data: str, preset: str, epochs: int, run_epochs: int, cores: int | None = None,
                    device: str = "cpu", runs: Sequence[int] = ()) -> list[dict]:
    """For each layout of :func:`sweep_layouts`, ``jobs`` child processes bench ``epochs`` DiffMM epochs at
    once on ``device`` (``threads`` each, no probes; on a GPU they share it); runs/hour = 3600 jobs /
    (median child epoch x ``run_epochs``). ``runs`` defaults to :data:`GPU_RUNS` on a GPU."""
    cores = cores or os.cpu_count() or 1
    runs = tuple(runs) or (GPU_RUNS if device.startswith("cuda") else ())
    rows = []
    for jobs, threads in sweep_layouts(cores, runs):
        command = [sys.executable, "-m", "diffmm", "bench", "--data", data, "--preset", preset, "--epochs",
                   str(epochs), "--threads", str(threads), "--device", device, "--no-probe"]
        children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(jobs)]
        outputs = [child.communicate()[0] for child in children]
        if any(child.returncode for child in children):
            raise RuntimeError(f"bench --sweep: a child failed ({' '.join(command)})")
        epochs_s = [json.loads(out.strip().splitlines()[-1])["run_epoch_s"] for out in outputs]
        epoch_s = statistics.median(epochs_s)
        rows.append({"device": device, "jobs": jobs, "threads": threads, "epoch_s": epoch_s, "epochs_s": epochs_s,
                     "runs_per_hour": 3600 * jobs / (epoch_s * run_epochs), "run_epochs": run_epochs})
    best = max(r["runs_per_hour"] for r in rows)
    for r in rows:
        r["relative"] = r["runs_per_hour"] / best
    return rows


def run_repeated_bench(bench_args: Sequence[str], repeat: int, echo: bool = True) -> dict:
    """``repeat`` benches one after another, each in its own child process (``python -m diffmm bench`` with
    ``bench_args``), and their medians: a shared machine's speed moves between benches (2026-12-03: a ratio of
    1.23-1.37 for the same code within 10 minutes), so one bench does not settle a ratio. ``echo`` prints each
    child's table as it finishes."""
    results = []
    for _ in range(repeat):
        command = [sys.executable, "-m", "diffmm", "bench", *bench_args, "--repeat", "1"]
        out = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        if out.returncode:
            raise RuntimeError(f"bench --repeat: a child failed ({' '.join(command)})")
        lines = out.stdout.strip().splitlines()
        if echo:
            print("\n".join(lines[:-1]), flush=True)
        results.append(json.loads(lines[-1]))

    def median(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    phases = list(results[0]["phase_over_floor"])
    keys = ("epoch_s", "floor_s", "epoch_over_floor", "onednn_floor_s", "epoch_over_onednn_floor",
            *(f"{k}_s" for k in phases))
    summary = {k: median(r.get(k) for r in results) for k in keys}
    summary["phase_over_floor"] = {k: median(r["phase_over_floor"][k] for r in results) for k in phases}
    summary["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results)
    return {"repeat": repeat, "median": summary, "benches": results}


def format_repeated(r: dict, labels: Mapping[str, str] | None = None) -> str:
    """One line: the medians of :func:`run_repeated_bench`; ``labels`` names the phases (default: their keys)."""
    m, benches = r["median"], r["benches"]
    each = " / ".join(f"{b['epoch_over_floor']:.2f}" for b in benches)
    phases = ", ".join(f"{(labels or {}).get(k, k)} {x:.2f}x" for k, x in m["phase_over_floor"].items() if x is not None)
    return (f"median of {r['repeat']} benches: epoch {m['epoch_s']:.2f} s, epoch / floor {m['epoch_over_floor']:.2f} "
            f"(each: {each}); phases against their floors: {phases}; peak RSS (the highest) {m['peak_rss_mb']:.0f} MiB")

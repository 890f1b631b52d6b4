"""Run what the results store is missing for a set of analyses, then draw their figures from the store.

    python -m diffmm reproduce --status                  # done / missing per analysis, hours left
    python -m diffmm reproduce --only tiktok             # train what is missing (resumable), render
    python -m diffmm reproduce --render-only             # redraw every figure from the committed store

Each missing run trains in its own work directory (``runs/reproduce/<dataset>/<model>-<key>/``, with
``last.pt`` saved every epoch), so a killed sweep restarted with the same command resumes each
unfinished run from its last epoch and redoes nothing that is stored. A finished run's record goes into
the store (``figures/results/``) atomically, and its work directory is removed.

Executors: ``local`` runs ``--jobs`` worker processes on this machine (by default on CPU one
single-threaded run per core, memory permitting: ``diffmm.memory.default_jobs``), the CPU threads
split between them (on CUDA, several processes share one GPU); ``ray`` hands the same runs to a Ray cluster. Every
run trains in a fresh process, so its memory (and the peak its record reports) is its own: nothing of
the runs before it, or of the figures redrawn between runs, stays behind.
"""

from __future__ import annotations

import functools
import json
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from tqdm.auto import tqdm

from diffmm import memory
from diffmm.experiments.runs import RunConfig
from diffmm.experiments.analyses import Analysis
from diffmm.utils import DirectoryBusyError, exclusive_directory
from diffmm.experiments.store import code_version, load_records, make_record, read_record, run_key, write_record

if TYPE_CHECKING:  # pandas loads on first use: training never imports it (~33 MiB of RSS)
    import pandas as pd

STORE = Path("figures/results")
WORK = Path("runs/reproduce")
# CPU core-seconds per run (one run with 2 threads on this project's 2-core machine: twice its wall time),
# used until the store holds runs of the same dataset and model to estimate from.
DEFAULT_COST_S = {("tiktok", "diffmm"): 3000.0, ("tiktok", "lightgcn"): 860.0, ("tiktok", "mf"): 520.0,
                  ("ml100k", "diffmm"): 2400.0, ("ml100k", "lightgcn"): 740.0, ("ml100k", "mf"): 160.0,
                  **{(d, m): 1200.0 for d in ("tiktok", "ml100k") for m in ("vbpr", "lightgcn-m", "lattice", "bm3")}}


@dataclass
class Job:
    """One run the store is missing."""

    dataset: str
    config: RunConfig
    key: str
    analyses: list[str]
    cost_s: float = 0.0  # estimated CPU core-seconds
    seed_pass: int = 0  # the seed's place in its point's seeds (first analysis declaring it): 0 for the first seed

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.config.model}-{self.key}"


def plan(analyses: Sequence[Analysis], store: str | Path = STORE) -> tuple[pd.DataFrame, list[Job]]:
    """Per analysis: runs declared, done and missing; and the missing runs, each once (shared points merged)."""
    import pandas as pd
    records = {}
    for dataset in {a.dataset for a in analyses}:
        records.update(load_records(store, dataset))
    jobs: dict[str, Job] = {}
    rows = []
    for analysis in analyses:
        keys = []
        for point, seed, config in analysis.runs():
            key = run_key(analysis.dataset, config)
            keys.append(key)
            if key not in records:
                seed_pass = (point.seeds or analysis.seeds).index(seed)
                job = jobs.setdefault(key, Job(analysis.dataset, config, key, [], seed_pass=seed_pass))
                job.analyses.append(analysis.id)
        unique = set(keys)
        rows.append({"analysis": analysis.id, "runs": len(unique), "done": len(unique & set(records)),
                     "missing": len(unique - set(records))})
    for job in jobs.values():
        job.cost_s = cost_s(job.dataset, job.config.model, records.values())
    table = pd.DataFrame(rows, columns=["analysis", "runs", "done", "missing"])
    # analyses in declaration order; within one, every point's first seed before any point's second (the whole
    # curve or table shows soonest), and within a seed's pass the cheapest runs first
    first = {a.id: i for i, a in enumerate(analyses)}
    return table, sorted(jobs.values(), key=lambda j: (first[j.analyses[0]], j.seed_pass, j.cost_s))


def cost_s(dataset: str, model: str, records) -> float:
    """CPU core-seconds of one run: the median over stored CPU runs of this dataset and model, else
    :data:`DEFAULT_COST_S`.

    A record's cost is the process CPU time it trained for (``cpu_s``, recorded from 2026-12-01 on), which
    does not grow when other runs share the cores, as wall time does; only where no record has it, wall time
    x threads (an overestimate when runs shared the cores).
    """
    mine = [r for r in records if r["dataset"] == dataset and r["model"] == model
            and str(r.get("device", "cpu")).startswith("cpu") and r.get("wall_s")]
    costs = ([r["cpu_s"] for r in mine if r.get("cpu_s")]
             or [r["wall_s"] * (r.get("threads") or 1) for r in mine])
    if costs:
        return float(statistics.median(costs))
    return DEFAULT_COST_S.get((dataset, model), 120.0)


def estimated_hours(missing: Sequence[Job], jobs: int | None = None, threads: int | None = None) -> float:
    """Wall-clock hours to train ``missing`` here: their core-seconds (:func:`cost_s`) over the cores that
    ``jobs`` runs of ``threads`` threads keep busy."""
    return sum(j.cost_s for j in missing) / 3600 / memory.cores_used(jobs, threads)


def status(analyses: Sequence[Analysis], store: str | Path = STORE, jobs: int | None = None,
           threads: int | None = None) -> tuple[pd.DataFrame, dict]:
    """The per-analysis table and the summary line {done, missing, estimated_hours} (runs counted once).

    The hours: the missing runs' core-seconds (:func:`cost_s`) over the cores the sweep keeps busy, so
    ``--jobs`` and ``--threads`` change the estimate as they change the sweep.
    """
    table, missing = plan(analyses, store)
    all_keys = {run_key(a.dataset, c) for a in analyses for _, _, c in a.runs()}
    hours = estimated_hours(missing, jobs, threads)
    summary = {"done": len(all_keys) - len(missing), "missing": len(missing), "estimated_hours": round(hours, 2)}
    return table, summary


# ------------------------------------------------------------------------------------- one run
_DATA: dict = {}


def load_data(name: str, data_root: str | None = None):
    """A dataset by registered name (``<data_root>/<name>`` when given), cached per process."""
    from diffmm.data import registry as datasets

    if (name, data_root) not in _DATA:
        generated = datasets.DATASETS[name].format == "synthetic" if name in datasets.DATASETS else False
        _DATA[(name, data_root)] = datasets.load(name, root=data_root) if data_root and not generated \
            else datasets.load(name)
    return _DATA[(name, data_root)]


def execute(job: Job, store: str | Path | None = STORE, work: str | Path = WORK, device: str = "cpu",
            threads: int = 0, data_root: str | None = None, keep: bool = False,
            callbacks: Sequence = (), code: dict | None = None) -> dict:
    """Train one run in its work directory (resuming it) and return its record, also written to ``store``
    unless that is None (a remote worker hands the record back to the process that owns the store).
    ``code``: the code version the record names (the sweep's, read when it started; default this process's)."""
    from diffmm.experiments.runs import run_locked

    done_elsewhere = stored(job, store)
    if done_elsewhere is not None:  # another sweep on this store finished it since this one planned
        return done_elsewhere
    out = Path(work) / job.dataset / f"{job.config.model}-{job.key}"
    # one process per run from here to its record: a second sweep asking meanwhile is refused (and leaves the run
    # to this one), and one asking after it sees the record
    with exclusive_directory(out):
        done_elsewhere = stored(job, store)
        if done_elsewhere is not None:
            return done_elsewhere
        dataset = load_data(job.dataset, data_root)
        config = job.config.replace(train=job.config.train.replace(device=device, threads=threads, progress=False))
        result, model = run_locked(dataset, config, out, resume=True, callbacks=callbacks)
        import torch

        record = make_record(dataset, config, result, device=str(device),
                             threads=threads or torch.get_num_threads(), code=code)
        if isinstance(getattr(model, "generated", None), dict):  # DiffMM: what the selected epoch's A^m hold
            from diffmm.casestudy import generation_measures

            record["generation"] = generation_measures(model, dataset, seed=0)
        if store is not None:
            write_record(store, record)
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
    return record


def stored(job: Job, store: str | Path | None) -> dict | None:
    """The job's record if ``store`` holds it already, else None."""
    path = Path(store) / job.dataset / f"{job.config.model}-{job.key}.json" if store is not None else None
    return read_record(path) if path is not None and path.exists() else None


def _attempt(name: str, action: Callable[[], dict | None]) -> tuple[str, float, str | None, dict | None, str | None]:
    """Run one job's ``action``: (run name, seconds, error or None, its result or None, why it was left
    to another process or None). A failure is reported, not raised: the other runs go on."""
    start = time.perf_counter()
    try:
        result = action()
        return name, time.perf_counter() - start, None, result, None
    except DirectoryBusyError as busy:  # another sweep on this work folder is training it
        return name, time.perf_counter() - start, None, None, f"pid {busy.holder}"
    except Exception as error:
        return name, time.perf_counter() - start, f"{type(error).__name__}: {error}", None, None


def _worker(args: tuple, local: bool = False) -> tuple[str, float, str | None, dict | None, str | None]:
    """One run in a worker process (:func:`_attempt`'s outcome). A ``local`` worker writes the record into
    the store itself, so a run that finishes after its sweep was killed is kept; a remote one hands it
    back to the parent (it may not see the store)."""
    from diffmm import memory

    memory.configure()  # the allocator settings of ``python -m diffmm``, in this process too
    job, store, work, device, threads, data_root, keep, code = args
    if local:
        name, seconds, error, _, busy = _attempt(job.name, lambda: execute(job, store, work, device, threads,
                                                                           data_root, keep, code=code))
        return name, seconds, error, None, busy
    return _attempt(job.name, lambda: stored(job, store) or execute(job, None, work, device, threads, data_root, keep,
                                                                    code=code))


def worker_processes():
    """Where fresh worker processes come from: forked from a server process that has imported torch and
    diffmm's training code (starting one takes milliseconds, and it holds nothing of earlier runs) where
    the platform has one (Linux, macOS), else spawned (a new interpreter: ~3 s each)."""
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["torch", "diffmm.experiments.runs"])
    return context


# ------------------------------------------------------------------------------------ executors
def run_jobs(missing: Sequence[Job], store: str | Path = STORE, work: str | Path = WORK, jobs: int | None = None,
             device: str = "cpu", threads: int | None = None, data_root: str | None = None,
             engine: str = "local", address: str | None = None, keep: bool = False, progress: bool = True,
             callbacks: Sequence = (), on_done: Callable[[str], None] | None = None) -> list[str]:
    """Train every job; returns the errors ('<run>: <message>'). The progress bar counts estimated
    core-seconds, so its time-left estimate weighs a DiffMM run more than a popularity run.

    A run whose work directory another live process holds (a second sweep on the same folders) is left
    to that process, with a line saying so: not an error, and not trained twice."""
    if not missing:
        return []
    code = code_version()  # the code that trains, read before any run; every record names it (workers too)
    jobs = memory.default_jobs(device) if jobs is None else max(1, int(jobs))
    threads = memory.threads_per_run(jobs, device) if threads is None else threads
    bar = tqdm(total=round(sum(j.cost_s for j in missing)), unit="s", disable=not progress,
               desc=f"{len(missing)} runs", bar_format="{desc}{percentage:3.0f}%|{bar}| "
               "[{elapsed}<{remaining}, est. {total_fmt} core-s of runs]")
    errors: list[str] = []
    estimates = {j.name: j.cost_s for j in missing}
    finished = 0

    def done(name: str, seconds: float, error: str | None, record: dict | None = None,
             busy: str | None = None) -> None:
        nonlocal finished
        finished += 1
        if record is not None:  # from a worker: this process owns the store
            write_record(store, record)
        bar.set_description(f"{finished}/{len(missing)} runs")
        bar.update(round(estimates[name]))
        if error:
            errors.append(f"{name}: {error}")
            bar.write(f"failed {name}: {error}")
        elif busy:
            bar.write(f"left {name} to the process training it ({busy})")
        else:
            bar.write(f"stored {name} ({seconds:.0f} s)")
            if on_done:
                on_done(name)

    args = [(j, str(store), str(work), device, threads, data_root, keep, code) for j in missing]
    if engine == "ray":
        from diffmm.experiments.ray_engine import run_on_ray

        for outcome in run_on_ray(args, _worker, address=address, jobs=jobs, device=device, threads=threads):
            done(*outcome)
    elif engine != "local":
        raise ValueError(f"--engine must be 'local' or 'ray', got '{engine}'")
    elif callbacks:  # they must reach the Trainer: one run after another in this process
        for job in missing:  # execute writes the record itself: none goes to done()
            name, seconds, error, _, busy = _attempt(
                job.name, lambda: execute(job, store, work, device, threads, data_root, keep, callbacks, code))
            done(name, seconds, error, busy=busy)
    else:  # a fresh process per run; a failed run is reported, the rest go on
        with worker_processes().Pool(jobs, maxtasksperchild=1) as pool:
            for outcome in pool.imap_unordered(functools.partial(_worker, local=True), args):
                done(*outcome)
    bar.close()
    return errors


def unplanned(analyses: Sequence[Analysis], store: str | Path, datasets: set[str]) -> list[str]:
    """'<dataset>/<model>-<key>' of the stored runs of ``datasets`` that none of ``analyses`` declares."""
    declared_keys = {run_key(a.dataset, c) for a in analyses for _, _, c in a.runs()}
    return [f"{r['dataset']}/{r['model']}-{key}" for dataset in datasets
            for key, r in load_records(store, dataset).items() if key not in declared_keys]


def summary_line(analyses: Sequence[Analysis], store: str | Path = STORE, jobs: int | None = None,
                 threads: int | None = None) -> str:
    return json.dumps(status(analyses, store, jobs, threads)[1])


# ------------------------------------------------------------------------------------------ CLI
def add_parser(sub) -> None:
    p = sub.add_parser("reproduce", help="train what the results store lacks for the paper's analyses; draw figures",
                       description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--only", help="comma-separated analyses, names or datasets (default: all); e.g. "
                                  "tiktok, table3_ablation, ml100k/fig4_fusion_ratio")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs at a time (local: worker processes; default on CPU: one single-threaded run per core, "
                        "as many as the free memory holds at 1 GiB each; on a GPU: 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    p.add_argument("--engine", default="local", choices=("local", "ray"))
    p.add_argument("--address", help="Ray cluster address (--engine ray; default: start a local Ray)")
    p.add_argument("--status", action="store_true", help="print done / missing per analysis and the hours left "
                                                            "with --jobs and --threads")
    p.add_argument("--render-only", action="store_true", help="draw the figures from the store, train nothing")
    p.add_argument("--train-only", action="store_true",
                   help="train what is missing, draw nothing (a machine that only trains, e.g. a GPU node whose "
                        "records are merged into the store later; plotly and seaborn are then not needed)")
    p.add_argument("--quick", action="store_true",
                   help="the quick variants (synthetic data, few epochs, one seed) into runs/quick/")
    p.add_argument("--store", default=None, help=f"results store (default {STORE}; --quick: runs/quick/results)")
    p.add_argument("--out", default=None, help="figures root (default figures/; --quick: runs/quick/figures)")
    p.add_argument("--work", default=None, help=f"work directories of unfinished runs (default {WORK})")
    p.add_argument("--data-root", default=None,
                   help="folder holding <dataset>/ copies (default: the dataset cache, fetched if needed)")
    p.add_argument("--keep-runs", action="store_true", help="keep each finished run's directory (checkpoints)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def main(args, extra=()) -> int:
    from diffmm.experiments import analyses as declared

    if args.render_only and args.train_only:
        raise SystemExit("reproduce: --render-only and --train-only exclude each other")
    if args.jobs is None:
        args.jobs = memory.default_jobs(args.device)
    pool = declared.quick_analyses() if args.quick else declared.ANALYSES
    chosen = declared.select(args.only, pool)
    store = Path(args.store or ("runs/quick/results" if args.quick else STORE))
    out = Path(args.out or ("runs/quick/figures" if args.quick else "figures"))
    work = Path(args.work or ("runs/quick/work" if args.quick else WORK))
    table, missing = plan(chosen, store)
    if args.status:
        print(table.to_string(index=False))
        kept = unplanned(list(pool.values()), store, {a.dataset for a in chosen})
        if kept:
            print(f"{len(kept)} stored runs belong to no declared analysis (earlier protocols; kept for the "
                  f"record, never drawn): {', '.join(sorted(kept)[:3])}{', ...' if len(kept) > 3 else ''}")
        print(summary_line(chosen, store, args.jobs, args.threads))
        return 0
    errors: list[str] = []
    if not args.render_only and missing:
        by_id = {a.id: a for a in chosen}

        last_drawn = time.monotonic()

        def redraw(name: str) -> None:  # figures follow the store as runs land (at most once a minute)
            nonlocal last_drawn
            if time.monotonic() - last_drawn < 60:
                return
            from diffmm.viz.reproduction import render

            job = next(j for j in missing if j.name == name)
            try:  # a figure that fails to draw must not stop the runs: they are what takes the hours
                render([by_id[i] for i in job.analyses], load_records(store), out)
            except Exception as error:
                print(f"warning: redrawing {', '.join(job.analyses)} failed ({type(error).__name__}: {error}); "
                      "the sweep goes on", flush=True)
            last_drawn = time.monotonic()

        errors = run_jobs(missing, store, work, args.jobs, args.device, args.threads, args.data_root, args.engine,
                          args.address, args.keep_runs, progress=not args.no_progress,
                          on_done=None if args.train_only else redraw)
        if errors:
            print("\n".join(f"error: {e}" for e in errors))
    if args.train_only:
        print(summary_line(chosen, store, args.jobs, args.threads))
        return 1 if errors else 0
    from diffmm.viz.reproduction import render

    records = load_records(store)
    written = render(chosen, records, out)
    if not args.only:  # the gallery lists every analysis
        from diffmm.utils import atomic_write_text
        from diffmm.viz.gallery import gallery_markdown

        atomic_write_text(out / "README.md", gallery_markdown(chosen, records))
        written.append(out / "README.md")
    print(f"{len(written)} files under {out}/ from {store}/")
    print(summary_line(chosen, store, args.jobs, args.threads))
    return 1 if errors else 0

"""``python -m diffmm bench``: time one DiffMM epoch by phase and compare it with this machine's floor.

In one run it (1) measures the matmul rate of this machine in float32 and bfloat16 (and, on CPU, that of
oneDNN's float32 products, which torch bundles besides MKL), (2) counts
the floating-point work of one epoch from the data sizes and the config, (3) trains a few epochs
timing each phase (generator training, graph generation, recommender training, evaluation),
and (4) records peak memory. ``floor_s`` = FLOPs / matmul rate at the chosen precision (the median of the rates
measured before training and after each epoch, each in a child process: the machine may be shared).
The last line printed is JSON, for scripts.

``--sweep`` measures what a sweep of many runs gets from the machine instead: for every way of
splitting the cores between concurrent runs (1 run x 2 threads, 2 runs x 1 thread on 2 cores), or on a
GPU for 1, 4, 8 and 16 runs sharing it (``--runs`` chooses), it trains that many runs at once in child
processes and reports runs per hour of a full-length run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from diffmm import memory
from diffmm.config import DiffMMConfig, TrainConfig
from diffmm.contrastive import ROW_MULTIPLE
from diffmm.data.dataset import RecDataset


# the phases of an epoch the bench times, with their labels
PHASES = {"generator_train": "generator training", "graph_generation": "graph generation",
          "recommender": "recommender (BPR+CL)", "evaluation": "evaluation"}


def matmul_rate(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 7, device="cpu",
                backend: str = "torch") -> float:
    """Median FLOP/s of an (n x n) @ (n x n) product.

    ``backend``: 'torch' is ``a @ b`` (on CPU: MKL for float32, what this package's products run on);
    'onednn' the same product by oneDNN, which torch bundles (``torch.ops.mkldnn._linear_pointwise``, the
    weight converted to its layout in every call), float32 on CPU only: the rate the machine offers besides.
    """
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    if backend == "onednn":
        def product():
            return torch.ops.mkldnn._linear_pointwise(a, b.to_mkldnn(), None, "none", [], "")  # a @ b^T
    else:
        def product():
            return a @ b
    product()  # warm-up
    times = []
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        product()
        if device != "cpu":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def onednn_rate_or_none(n: int = 2048) -> float | None:
    """:func:`matmul_rate` by oneDNN in float32, or None where this torch or CPU has no oneDNN path."""
    try:
        return matmul_rate(torch.float32, n, backend="onednn") if torch.backends.mkldnn.is_available() else None
    except (RuntimeError, AttributeError, NotImplementedError):
        return None


def matmul_rates_in_child(device: str, threads: int, precisions: tuple[str, ...] = ("fp32", "bf16")) -> dict[str, float]:
    """:func:`matmul_rate` for each precision ('fp32', 'bf16'; 'fp32_onednn': float32 by oneDNN, left out where
    there is none), measured in a child process on the same machine (CPUs without bf16 instructions emulate it:
    minutes for the probe, so measure it only when it is used).

    The probe's 2048 x 2048 products leave BLAS / oneDNN buffers behind (~60-80 MB on CPU); run here,
    they would count toward the peak RSS that the bench reports for training.
    """
    code = ("import json, sys, torch; from diffmm.bench import matmul_rate, onednn_rate_or_none; "
            "torch.set_num_threads(int(sys.argv[2])); wanted = sys.argv[3].split(','); "
            "rates = {k: matmul_rate(getattr(torch, d), device=sys.argv[1]) "
            "for k, d in (('fp32', 'float32'), ('bf16', 'bfloat16')) if k in wanted}; "
            "rates.update(fp32_onednn=onednn_rate_or_none() if 'fp32_onednn' in wanted else None); "
            "print(json.dumps({k: v for k, v in rates.items() if v is not None}))")
    out = subprocess.run([sys.executable, "-c", code, device, str(threads), ",".join(precisions)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@dataclass
class EpochFlops:
    generator_train: float
    graph_generation: float
    recommender: float
    evaluation: float
    # the same epoch done the straightforward way: the reverse loop over item-wide vectors, and one
    # log-sum-exp per drawn node (the reference code's work, the count the speed goal uses)
    plain_generator_train: float = 0.0
    plain_graph_generation: float = 0.0
    plain_recommender: float = 0.0

    @property
    def total(self) -> float:
        return self.generator_train + self.graph_generation + self.recommender + self.evaluation

    @property
    def plain_total(self) -> float:
        return self.plain_generator_train + self.plain_graph_generation + self.plain_recommender + self.evaluation


def expected_distinct(degrees: np.ndarray, draws: int) -> float:
    """Expected number of distinct nodes among ``draws`` of the ``nnz`` training pairs drawn without replacement.

    A node of degree d is absent with probability C(nnz - d, draws) / C(nnz, draws) (hypergeometric).
    """
    nnz = float(degrees.sum())
    draws = min(draws, int(nnz))
    rest = nnz - degrees

    def gammaln(x):  # log Gamma by torch: scipy.special would add ~5 MiB to the measured process
        return torch.lgamma(torch.as_tensor(x, dtype=torch.float64)).numpy()

    log_absent = (gammaln(rest + 1) - gammaln(np.maximum(rest - draws, 0) + 1)
                  - gammaln(nnz + 1) + gammaln(nnz - draws + 1))
    absent = np.where(rest >= draws, np.exp(log_absent), 0.0)
    return float((1 - absent).sum())


def epoch_flops(dataset: RecDataset, cfg: DiffMMConfig, train: TrainConfig) -> EpochFlops:
    """Dense matmul FLOPs of one DiffMM epoch (sparse products and elementwise work are ignored).

    Denoiser (per user and modality): layers (I + t_dim) -> hidden... -> I, plus the step embedding's
    (t_dim x t_dim) projection. Training costs each product's forward, weight gradient and input
    gradient (3x), except where the input is data: layer 0's items block (alpha_t) and the step
    projection (emb(t)) get no input gradient; MSI's x0_hat @ e_m costs a forward and x0_hat's
    gradient (e_m is detached). Generation runs in the hidden space (:meth:`GaussianDiffusion.reverse`):
    per modality one W_0 W_L product, then per user T passes through the step embedding and the middle
    layers, T - 1 (H_L x H_0) recursion products and one output product. Trans(f^m) (Eq. 15) is
    computed once per generator pass and per graph generation, and per BPR step with its weight
    gradient. Contrastive: per BPR step and per InfoNCE term, (B' x d) @ (d x N) forward plus 2 such
    backward, with B' the expected number of distinct users (positive items) among the batch's B draws,
    padded to a multiple of ROW_MULTIPLE.
    Evaluation: one full-ranking pass (the mean of the validation and test users; the bench times one).
    """
    U, I, M, d, t = dataset.n_users, dataset.n_items, len(dataset.item_features), cfg.dim, cfg.time_dim
    h0, hl = cfg.denoiser_hidden[0], cfg.denoiser_hidden[-1]
    sizes = [I + t, *cfg.denoiser_hidden, I]
    forward = 2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:])) + 2 * t * t  # per user
    msi = 2 * I * d if cfg.msi_weight else 0  # x0_hat @ e_m (the observed side is sparse)
    train_per_user = 3 * forward - 2 * I * h0 - 2 * t * t + 2 * msi  # no input gradient for data inputs
    projections = sum(2 * I * f.shape[1] * d for f in dataset.item_features.values())  # Trans(f^m), Eq. 15
    diffusion = cfg.generator == "diffusion"
    generator_train = U * M * train_per_user + projections if diffusion else 0
    middle = 2 * sum(a * b for a, b in zip(cfg.denoiser_hidden[:-1], cfg.denoiser_hidden[1:]))
    per_user = cfg.steps * (2 * t * t + 2 * t * h0 + middle) + (cfg.steps - 1) * 2 * hl * h0 + 2 * hl * I
    graph_generation = M * (2 * h0 * I * (hl + 1) + U * per_user) + projections if diffusion else 0
    full, last = divmod(dataset.train.nnz, train.batch_size)  # full batches, and the last one's draws
    steps = full + (last > 0)
    n_terms = M if cfg.cl_anchor == "main" else M * (M - 1) // 2
    degrees = np.diff(dataset.train.indptr), np.diff(dataset.train.T.tocsr().indptr)  # users, items
    pad = (ROW_MULTIPLE - 1) / 2  # InfoNCE pads its anchors to a multiple of ROW_MULTIPLE rows: on average

    def cl_step(draws: int) -> float:
        distinct_users, distinct_items = (expected_distinct(deg, draws) + pad for deg in degrees)
        return n_terms * 3 * 2 * d * (distinct_users * U + distinct_items * I)

    cl = (full * cl_step(train.batch_size) + (cl_step(last) if last else 0)) if cfg.cl_weight else 0
    step_projections = steps * 2 * projections  # Trans(f^m) forward + weight gradient per BPR step
    recommender = step_projections + cl
    n_eval = int((dataset.valid.getnnz(axis=1) > 0).sum() + (dataset.test.getnnz(axis=1) > 0).sum()) / 2
    evaluation = 2 * n_eval * d * I + projections  # the final embeddings (Eq. 20-23) include Trans(f^m)
    # The plain way (the reference code): layer 0 on [alpha_t, emb(t)] needs its input gradient, MSI
    # multiplies the observed vectors as dense, the reverse loop runs item-wide, one log-sum-exp per draw.
    plain_generator_train = U * M * (3 * forward + 3 * msi) + projections if diffusion else 0
    plain_graph_generation = U * M * cfg.steps * forward + projections if diffusion else 0
    plain_cl = n_terms * 3 * 2 * dataset.train.nnz * d * (U + I) if cfg.cl_weight else 0  # every draw
    return EpochFlops(generator_train, graph_generation, recommender, evaluation, plain_generator_train,
                      plain_graph_generation, step_projections + plain_cl)


def run_bench(dataset: RecDataset, cfg: DiffMMConfig, train: TrainConfig, epochs: int = 2,
              precision: str = "fp32", probe: bool = True) -> dict:
    """Train ``epochs`` epochs and return the measurements. Phase times are medians over the epochs after the
    first when there are several: the first also allocates the optimisers' state and first touches the
    buffers (on CUDA: loads kernels, creates handles), one-time costs of a run; it is reported on its own
    (``first_epoch_s``). ``probe=False`` skips the matmul-rate probes (and the floor)."""
    from diffmm.models import build_model
    from diffmm.train import Callback, Trainer
    from diffmm.utils import resolve_device

    device = str(resolve_device(train.device))

    def rates_now() -> dict[str, float]:
        if not probe:
            return {"fp32": math.nan, precision: math.nan}
        extra = ("fp32_onednn",) if device == "cpu" else ()
        return matmul_rates_in_child(device, torch.get_num_threads(), tuple(dict.fromkeys(("fp32", precision, *extra))))

    class ProbeAfterEachEpoch(Callback):  # outside the timed phases: after the epoch's evaluation
        def on_epoch_end(self, trainer, record):
            probes.append(rates_now())

    probes = [rates_now()]
    flops = epoch_flops(dataset, cfg, train)
    model = build_model("diffmm", dataset, cfg.replace(precision=precision), seed=train.seed)
    trainer = Trainer(model, dataset, train.replace(epochs=epochs, eval_every=1, patience=0, progress=False),
                      callbacks=[ProbeAfterEachEpoch()])
    result = trainer.fit()
    h = result.history
    phases = {"generator_train_s": "generator_train_s", "graph_generation_s": "graph_rebuild_s",
              "recommender_s": "rec_s", "evaluation_s": "eval_s"}
    # the first epoch is not a steady one: Adam's state is allocated and buffers are first touched (on CUDA,
    # kernels load and the cuBLAS / cuSPARSE handles are created)
    timed = h.iloc[1:] if len(h) > 1 else h
    out = {name: float(timed[col].median()) for name, col in phases.items()}
    first = h.iloc[0]
    out["first_epoch_s"] = float(sum(first[col] for col in phases.values()) - first["eval_s"] / 2)
    out["timed_epochs"] = len(timed)
    out["run_epoch_s"] = float(timed[list(phases.values())].sum(axis=1).median())  # a run's epoch: both evaluations
    out["evaluation_s"] /= 2  # the trainer evaluates valid and test; one full-ranking pass is half
    epoch_s = out["generator_train_s"] + out["graph_generation_s"] + out["recommender_s"] + out["evaluation_s"]
    # a shared machine's speed drifts within minutes (2026-12-03: 174 then 111 GFLOP/s around one bench's
    # epochs): the floor uses the median of the rates probed before training and after every epoch
    series = {k: [p[k] for p in probes if k in p] for k in probes[0]}
    rates = {k: statistics.median(v) for k, v in series.items()}
    rate = rates[precision]
    out.update(epoch_s=epoch_s, floor_s=flops.total / rate, tflop_per_epoch=flops.total / 1e12,
               gflops_fp32=rates["fp32"] / 1e9, gflops_bf16=rates["bf16"] / 1e9 if "bf16" in rates else None,
               precision=precision,
               gflops_probes={k: [x / 1e9 for x in v] for k, v in series.items()},
               peak_rss_mb=memory.peak_rss_mib(),  # since training started (Trainer.fit)
               threads=torch.get_num_threads(), device=device,
               valid_recall20=float(h["valid_recall@20"].iloc[-1]), epochs=epochs,
               flops={k: v / 1e12 for k, v in vars(flops).items()})
    out["epoch_over_floor"] = out["epoch_s"] / out["floor_s"]
    # the same work at oneDNN's float32 rate, where the CPU runs it faster than torch's products (MKL): the
    # headroom a move of the products to oneDNN would have (AMD EPYC, 2026-12-03: 1.1-1.4x)
    onednn = rates.get("fp32_onednn") if precision == "fp32" else None
    out["gflops_fp32_onednn"] = onednn / 1e9 if onednn else None
    out["onednn_floor_s"] = flops.total / onednn if onednn else None
    out["epoch_over_onednn_floor"] = out["epoch_s"] / out["onednn_floor_s"] if onednn else None
    # per phase: the rate it reached and its time over its own floor (where it does dense work)
    out["phase_gflops"] = {k: getattr(flops, k) / out[f"{k}_s"] / 1e9 if out[f"{k}_s"] else None for k in PHASES}
    out["phase_over_floor"] = {k: out[f"{k}_s"] * rate / getattr(flops, k) if getattr(flops, k) else None
                               for k in PHASES}
    out["plain_tflop_per_epoch"] = flops.plain_total / 1e12
    out["plain_floor_s"] = flops.plain_total / rate
    out["epoch_over_plain_floor"] = out["epoch_s"] / out["plain_floor_s"]
    return out


def format_table(r: dict) -> str:
    f = r["flops"]
    probes = ", ".join(f"{k} {'/'.join(f'{x:.0f}' for x in v)}" for k, v in r["gflops_probes"].items())
    lines = [f"matmul rate ({r['threads']} threads, {r['device']}; GFLOP/s before training and after each epoch; "
             f"the floor takes the median): {probes}",
             f"{'phase':<20}{'time s':>10}{'TFLOP':>10}{'GFLOP/s':>10}{'x floor':>10}",
             *(f"{label:<20}{r[f'{k}_s']:>10.2f}{f[k]:>10.3f}{r['phase_gflops'][k] or 0:>10.0f}"
               f"{r['phase_over_floor'][k] or 0:>10.2f}" for k, label in PHASES.items()),
             f"{'epoch':<20}{r['epoch_s']:>10.2f}{r['tflop_per_epoch']:>10.3f}"
             + (f"   (median of epochs 2-{r['timed_epochs'] + 1}; the first: {r['first_epoch_s']:.2f} s)"
                if r["epochs"] > 1 else "   (one epoch: the first, with a run's one-time costs)"),
             f"floor ({r['precision']}): {r['floor_s']:.2f} s -> epoch / floor = {r['epoch_over_floor']:.2f}; "
             f"peak RSS {r['peak_rss_mb']:.0f} MiB",
             *([f"floor at oneDNN's fp32 rate ({r['gflops_fp32_onednn']:.0f} GFLOP/s): {r['onednn_floor_s']:.2f} s "
                f"-> epoch / that = {r['epoch_over_onednn_floor']:.2f}"] if r.get("onednn_floor_s") else []),
             f"floor of the same epoch done the plain way ({r['plain_tflop_per_epoch']:.2f} TFLOP: item-wide reverse "
             f"loop, a log-sum-exp per draw): {r['plain_floor_s']:.2f} s -> epoch / that = {r['epoch_over_plain_floor']:.2f}"]
    return "\n".join(lines)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="time one DiffMM epoch by phase against the machine's floor")
    p.add_argument("--data", required=True, help="dataset directory or registered name")
    p.add_argument("--preset", default="tiktok", choices=sorted(DiffMMConfig.PRESETS))
    p.add_argument("--epochs", type=int, default=3,
                   help="epochs to train; the phase times are medians over all but the first (default 3)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--repeat", type=int, default=1,
                   help="benches to run one after another, each in its own process; prints their medians (default 1)")
    p.add_argument("--sweep", action="store_true",
                   help="runs per hour for each number of concurrent runs (CPU: each split of the cores; "
                        "GPU: runs sharing it)")
    p.add_argument("--runs", default="", help="--sweep: comma-separated numbers of concurrent runs to try "
                                              "(default: every even split of the cores on CPU, 1,4,8,16 on a GPU)")
    p.add_argument("--run-epochs", type=int, default=50, help="--sweep: epochs of the run whose rate is reported")
    p.add_argument("--no-probe", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd)


def _cmd(args, extra) -> int:
    from diffmm.bench_runs import format_repeated, run_repeated_bench, run_sweep_bench
    from diffmm.data import registry as datasets
    from diffmm.utils import resolve_device

    if args.sweep:
        device = str(resolve_device(args.device))
        runs = tuple(int(n) for n in args.runs.split(",") if n.strip())
        rows = run_sweep_bench(args.data, args.preset, args.epochs, args.run_epochs, device=device, runs=runs)
        for r in rows:
            print(f"{r['device']}: {r['jobs']} run(s) x {r['threads']} thread(s): {r['epoch_s']:.1f} s per epoch "
                  f"each -> {r['runs_per_hour']:.2f} runs/hour of {r['run_epochs']} epochs "
                  f"({r['relative']:.2f}x the best)")
        print(json.dumps({"sweep": rows}))
        return 0
    if args.repeat > 1 and not args.no_probe:
        bench_args = ["--data", args.data, "--preset", args.preset, "--epochs", str(args.epochs), "--precision",
                      args.precision, "--threads", str(args.threads), "--device", args.device]
        result = run_repeated_bench(bench_args, args.repeat)
        print(format_repeated(result, PHASES))
        print(json.dumps(result))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = datasets.load(args.data)
    cfg = DiffMMConfig.preset(args.preset)
    train = TrainConfig(**DiffMMConfig.TRAIN_PRESETS.get(args.preset, {}), device=args.device)
    result = run_bench(dataset, cfg, train, args.epochs, args.precision, probe=not args.no_probe)
    if args.no_probe:
        print(json.dumps(result))
        return 0
    print(format_table(result))
    print(json.dumps(result))
    return 0

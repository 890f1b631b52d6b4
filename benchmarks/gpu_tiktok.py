"""GPU check: the tiktok preset for N epochs in fp32, TF32 and bf16; prints epoch time and metrics.

    python benchmarks/gpu_tiktok.py --data tiktok --epochs 50 --seeds 421,422,423   # on an NVIDIA GPU
    python benchmarks/gpu_tiktok.py --data synthetic --epochs 1 --device cpu       # smoke test

One command, sized for ~8 minutes on an H200: ``--budget-s`` is shared by the modes still to run, and a
mode that would overrun its share stops early (the epochs it ran are printed, never hidden).
Each mode reports: median epoch seconds and its phases, best-validation epoch, its test Recall@20 /
NDCG@20, and peak GPU memory. One JSON line per mode, and ``--out`` gets them all after each mode.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from diffmm.data import registry as datasets
from diffmm.config import DiffMMConfig, TrainConfig
from diffmm.models import DiffMM
from diffmm.train import Callback, Trainer
from diffmm.utils import atomic_path, resolve_device, seed_everything


class Deadline(Callback):
    """Stop a run once its wall-clock share is spent."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.perf_counter()

    def on_epoch_end(self, trainer, record) -> bool:
        return time.perf_counter() - self.start > self.seconds


parser = argparse.ArgumentParser()
parser.add_argument("--data", default="tiktok")
parser.add_argument("--epochs", type=int, default=50)
parser.add_argument("--device", default="auto")
parser.add_argument("--modes", default="fp32,tf32,bf16")
parser.add_argument("--seeds", default="421", help="comma-separated; every mode runs every seed")
parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock seconds for all modes together")
parser.add_argument("--out", default=None, help="write the results as JSON here")
args = parser.parse_args()

began = time.perf_counter()
device = resolve_device(args.device)
data = datasets.load(args.data)
print(f"{data} on {device}" + (f" ({torch.cuda.get_device_name(device)}, torch {torch.__version__})"
                               if device.type == "cuda" else ""), flush=True)
runs = [(mode, int(seed)) for mode in args.modes.split(",") for seed in args.seeds.split(",")]
results = {}
for i, (mode, seed) in enumerate(runs):
    share = (args.budget_s - (time.perf_counter() - began)) / (len(runs) - i)
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = mode == "tf32"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seed_everything(seed)
    cfg = DiffMMConfig.preset("tiktok", precision="bf16" if mode == "bf16" else "fp32")
    model = DiffMM(data, cfg)
    train = TrainConfig(**{**DiffMMConfig.TRAIN_PRESETS["tiktok"], "epochs": args.epochs}, patience=0,
                        progress=False, device=str(device), seed=seed)
    start = time.perf_counter()
    fit = Trainer(model, data, train, callbacks=[Deadline(share)]).fit()
    total = time.perf_counter() - start
    h = fit.history
    epoch_s = statistics.median((h["before_epoch_s"] + h["rec_s"] + h["eval_s"].fillna(0)).tolist())
    phases = {c: float(h[c].median()) for c in h.columns if c.endswith("_s") and c != "elapsed_s"}
    results[f"{mode}/{seed}"] = {"epochs_run": fit.epochs_run, "epoch_s": epoch_s, "phases_s": phases, "total_s": total,
                     "best_epoch": fit.best_epoch,
                     "test_recall@20": fit.test["recall@20"], "test_ndcg@20": fit.test["ndcg@20"],
                     "valid_recall@20": fit.valid["recall@20"],
                     "optimistic_test_recall@20": fit.optimistic_test["recall@20"],
                     "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}
    print(f"{mode:>5} seed {seed}: {fit.epochs_run} epochs, median epoch {epoch_s:.2f} s "
          f"({', '.join(f'{k} {v:.2f}' for k, v in phases.items())}), total {total:.0f} s, "
          f"best epoch {fit.best_epoch}, test R@20 {fit.test['recall@20']:.4f} N@20 {fit.test['ndcg@20']:.4f}",
          flush=True)
    print(json.dumps({f"{mode}/{seed}": results[f"{mode}/{seed}"]}), flush=True)
    if args.out:
        with atomic_path(Path(args.out)) as tmp:
            Path(tmp).write_text(json.dumps(results, indent=1))

"""GPU check: the tiktok preset for N epochs in fp32, TF32 and bf16; prints epoch time and metrics.

    python benchmarks/gpu_tiktok.py --data ../shared/datasets/tiktok --epochs 50   # on an NVIDIA GPU
    python benchmarks/gpu_tiktok.py --data synthetic --epochs 1 --device cpu       # smoke test

One command, sized for ~8 minutes on an H200 (the denoiser and InfoNCE products dominate).
Each mode reports: median epoch seconds, best-validation epoch, its test Recall@20 / NDCG@20,
and peak GPU memory. The last line is JSON.
"""

import argparse
import json
import statistics
import time

import torch

from diffmm import datasets
from diffmm.config import DiffMMConfig, TrainConfig
from diffmm.models import DiffMM
from diffmm.train import Trainer
from diffmm.utils import resolve_device, seed_everything

parser = argparse.ArgumentParser()
parser.add_argument("--data", default="../shared/datasets/tiktok")
parser.add_argument("--epochs", type=int, default=50)
parser.add_argument("--device", default="auto")
parser.add_argument("--modes", default="fp32,tf32,bf16")
parser.add_argument("--seed", type=int, default=421)
args = parser.parse_args()

device = resolve_device(args.device)
data = datasets.load(args.data)
print(f"{data} on {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
results = {}
for mode in args.modes.split(","):
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = mode == "tf32"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seed_everything(args.seed)
    cfg = DiffMMConfig.preset("tiktok", precision="bf16" if mode == "bf16" else "fp32")
    model = DiffMM(data, cfg)
    train = TrainConfig(**{**DiffMMConfig.TRAIN_PRESETS["tiktok"], "epochs": args.epochs}, patience=0,
                        progress=False, device=str(device), seed=args.seed)
    start = time.perf_counter()
    fit = Trainer(model, data, train).fit()
    total = time.perf_counter() - start
    epoch_s = statistics.median((fit.history["before_epoch_s"] + fit.history["rec_s"]).tolist())
    results[mode] = {"epoch_s": epoch_s, "total_s": total, "best_epoch": fit.best_epoch,
                     "test_recall@20": fit.test["recall@20"], "test_ndcg@20": fit.test["ndcg@20"],
                     "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}
    print(f"{mode:>5}: epoch {epoch_s:.2f} s, total {total:.0f} s, best epoch {fit.best_epoch}, "
          f"test R@20 {fit.test['recall@20']:.4f} N@20 {fit.test['ndcg@20']:.4f}", flush=True)
print(json.dumps(results))

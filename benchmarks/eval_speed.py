"""Time full-ranking evaluation of every TikTok test user (9308 x 6710, K = 10, 20, 50 in one pass).

    python benchmarks/eval_speed.py [--data tiktok] [--repeats 7]

Scores come from a LightGCN's final embeddings (computed once, as in training-time evaluation).
Prints the median and each repeat; the design target is <= 0.4 s on a 2-core CPU (docs/performance.md).
"""

import argparse
import statistics
import time

import torch

from diffmm.data import registry as datasets
from diffmm.evaluate import evaluate
from diffmm.models import build_model

parser = argparse.ArgumentParser()
parser.add_argument("--data", default="tiktok", help="a registered name or a folder")
parser.add_argument("--repeats", type=int, default=7)
parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

data = datasets.load(args.data)
torch.manual_seed(0)
model = build_model("lightgcn", data)
score_fn = model.scorer()
evaluate(score_fn, data, "test")  # warm-up
times = []
for _ in range(args.repeats):
    t0 = time.perf_counter()
    result = evaluate(score_fn, data, "test", ks=(10, 20, 50))
    times.append(time.perf_counter() - t0)
n_users = len(result.per_user)
print(f"evaluated {n_users} test users x {data.n_items} items, K = 10, 20, 50, {torch.get_num_threads()} threads")
print("times s: " + " ".join(f"{t:.3f}" for t in times))
print(f"median {statistics.median(times):.3f} s (target <= 0.4 s)")

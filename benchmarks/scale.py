"""How one DiffMM epoch scales with the number of items (synthetic data, one subprocess per size).

    python benchmarks/scale.py --items 5000,10000,20000,40000 [--users 35598] [--threads 2]
    python benchmarks/scale.py --sports          # one epoch at Amazon-Sports size (35,598 x 18,357,
                                                 # ~256k train interactions, 4096-d + 1024-d features)

Each size runs in a fresh process, so its peak RSS (ru_maxrss) is its own. Prints a table and a
final JSON line: items, users, train interactions, epoch seconds by phase, peak RSS in MB.
"""

import argparse
import json
import subprocess
import sys

CHILD = r"""
from diffmm import memory
memory.configure()  # as python -m diffmm does, before torch loads
import json, resource, sys, time, torch
from diffmm.data.synthetic import make_synthetic
from diffmm.config import DiffMMConfig, TrainConfig
from diffmm.models import DiffMM
from diffmm.train import Trainer
users, items, activity, threads, dims, precision = json.loads(sys.argv[1])
memory.set_threads(threads)
data = make_synthetic(n_users=users, n_items=items, mean_activity=activity, seed=0,
                      modalities={"image": (dims[0], 1.0), "text": (dims[1], 0.5)})
model = DiffMM(data, DiffMMConfig.preset("sports", precision=precision))
fit = Trainer(model, data, TrainConfig(epochs=1, batch_size=1024, progress=False, patience=0)).fit()
h = fit.history.iloc[-1]
print(json.dumps({"items": items, "users": users, "train": int(data.train.nnz),
                  "generator_train_s": h["generator_train_s"], "graph_rebuild_s": h["graph_rebuild_s"],
                  "rec_s": h["rec_s"], "eval_s": h["eval_s"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

parser = argparse.ArgumentParser()
parser.add_argument("--items", default="5000,10000,20000,40000")
parser.add_argument("--users", type=int, default=35598)
parser.add_argument("--activity", type=float, default=None,
                    help="mean interactions per user (default 7.2, Sports' all-splits density; with --sports "
                         "10.3, so that the 70%% train split holds ~256k interactions as in Sports' training set)")
parser.add_argument("--dims", default="4096,1024", help="feature sizes of the two modalities")
parser.add_argument("--threads", type=int, default=0)
parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
parser.add_argument("--sports", action="store_true", help="only the Amazon-Sports size (18,357 items)")
args = parser.parse_args()

sizes = [18357] if args.sports else [int(x) for x in args.items.split(",")]
if args.activity is None:
    args.activity = 10.3 if args.sports else 7.2
dims = [int(x) for x in args.dims.split(",")]
rows = []
for items in sizes:
    spec = json.dumps([args.users, items, args.activity, args.threads, dims, args.precision])
    out = subprocess.run([sys.executable, "-c", CHILD, spec], capture_output=True, text=True)
    if out.returncode:
        print(out.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"size {items} failed")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["epoch_s"] = row["generator_train_s"] + row["graph_rebuild_s"] + row["rec_s"] + row["eval_s"]
    rows.append(row)
    print(f"items {items:>6}  users {row['users']}  train {row['train']:>7}  epoch {row['epoch_s']:8.1f} s "
          f"(gen {row['generator_train_s']:.1f}, graphs {row['graph_rebuild_s']:.1f}, rec {row['rec_s']:.1f}, "
          f"eval {row['eval_s']:.1f})  peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)
print(json.dumps(rows))

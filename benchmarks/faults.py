"""Feed the CLI bad inputs and faults, one by one, and print what happens as a Markdown table.

    python benchmarks/faults.py [--keep DIR]

Each case builds its input in a scratch folder (small synthetic data), runs ``python -m diffmm ...``
in a child process and records the exit code, the first line of stderr, whether a Python traceback
was printed, and the case's own check that nothing was lost or executed (a marker file that crafted
input would create, files of an earlier run that must survive). The table is the evidence behind
"every failure named, nothing run from a data file, nothing lost".
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffmm.data import write_diffmm_dir, write_mmrec
from diffmm.data.synthetic import make_synthetic


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def cli(*args: str, cwd: Path, wait: bool = True):
    command = [sys.executable, "-m", "diffmm", *args]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def train(out: str, *extra: str) -> list[str]:
    return ["train", "--model", "mf", "--data", "good", "--epochs", "2", "--progress", "false", "--out", out, *extra]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", help="scratch folder to keep (default: a temporary one, removed)")
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="diffmm-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    data = make_synthetic(n_users=120, n_items=60, seed=3)
    write_diffmm_dir(data, root / "good")
    rows = []

    def case(name: str, argv: list[str], check=lambda: "", setup=lambda: None) -> None:
        setup()
        start = time.perf_counter()
        done = cli(*argv, cwd=root)
        err = done.stderr.strip().splitlines()
        message = next((line for line in err if line.startswith("error:")),
                       next((line for line in err if "Warning:" in line), err[-1] if err else ""))
        rows.append({"case": name, "exit": done.returncode, "message": message[:160],
                     "traceback": "Traceback" in done.stderr, "check": check(),
                     "s": round(time.perf_counter() - start, 1)})

    marker = root / "PWNED"

    def not_run() -> str:
        return "marker absent: nothing ran" if not marker.exists() else "MARKER CREATED"

    # ------------------------------------------------------------------ code in data files
    def crafted_pickle():
        shutil.copytree(root / "good", root / "crafted", dirs_exist_ok=True)
        with open(root / "crafted" / "trnMat.pkl", "wb") as f:
            pickle.dump(Payload(marker), f)
    case("crafted trnMat.pkl (runs a command when unpickled)", ["stats", "--data", "crafted"], not_run, crafted_pickle)
    case("the same through train", train("runs/crafted", "--data", "crafted"), not_run)
    assert cli(*train("runs/ok"), cwd=root).returncode == 0

    def crafted_best():
        state = torch.load(root / "runs/ok/best.pt", weights_only=True)
        torch.save({**state, "valid": Payload(marker)}, root / "runs/ok/best.pt")
    case("crafted best.pt through evaluate", ["evaluate", "--run", "runs/ok", "--data", "good"], not_run, crafted_best)

    def crafted_last():
        state = torch.load(root / "runs/ok/last.pt", weights_only=True)
        torch.save({**state, "history": Payload(marker)}, root / "runs/ok/last.pt")
    case("crafted last.pt through resume", train("runs/ok", "--epochs", "3"), not_run, crafted_last)

    def truncated():
        assert cli(*train("runs/trunc"), cwd=root).returncode == 0
        blob = (root / "runs/trunc/last.pt").read_bytes()
        (root / "runs/trunc/last.pt").write_bytes(blob[: len(blob) // 3])
    case("truncated last.pt, resumed", train("runs/trunc", "--epochs", "3"), setup=truncated)
    case("truncated best.pt, evaluated", ["evaluate", "--run", "runs/trunc", "--data", "good"],
         setup=lambda: (root / "runs/trunc/best.pt").write_bytes(b"\x80\x02}q"))

    def changed_copy():
        folder = root / "ml100k"
        shutil.copytree(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml100k", folder,
                        dirs_exist_ok=True)
        os.chmod(folder / "items.csv", 0o644)
        with open(folder / "items.csv", "a") as f:
            f.write("\n")
    if (Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml100k").exists():
        case("a registered dataset's local copy with a changed file", ["stats", "--data", "./ml100k"],
             setup=changed_copy)

    # ------------------------------------------------------------------ one writer, nothing stale
    holder = {}

    def start_first():
        holder["p"] = cli(*train("runs/shared", "--epochs", "100000", "--seed", "1"), cwd=root, wait=False)
        deadline = time.time() + 120
        while not (root / "runs/shared/last.pt").exists() and time.time() < deadline:
            time.sleep(0.2)

    def first_intact() -> str:
        still_running = holder["p"].poll() is None
        config = json.loads((root / "runs/shared/config.json").read_text())
        last = torch.load(root / "runs/shared/last.pt", weights_only=True)
        holder["p"].kill()
        holder["p"].wait()
        ok = still_running and config["train"]["seed"] == 1 and last["run_id"] == config["run_id"]
        return "first run untouched and still training (seed 1, one run id)" if ok else "FIRST RUN DAMAGED"
    case("a second train on the same --out while the first runs", train("runs/shared", "--seed", "2", "--fresh"),
         first_intact, start_first)

    def fresh_killed():
        assert cli(*train("runs/fresh", "--seed", "1"), cwd=root).returncode == 0
        p = cli(*train("runs/fresh", "--seed", "2", "--fresh", "--epochs", "100000"), cwd=root, wait=False)
        deadline = time.time() + 120
        while time.time() < deadline:  # until the new run has written its config and a checkpoint
            try:
                seed = json.loads((root / "runs/fresh/config.json").read_text())["train"]["seed"]
            except (OSError, ValueError):
                seed = None
            if seed == 2 and (root / "runs/fresh/last.pt").exists():
                break
            time.sleep(0.1)
        p.kill()
        p.wait()
    case("summarize after a --fresh run killed mid-training (SIGKILL)", ["summarize", "runs/fresh"],
         lambda: "no stale metrics beside the new config" if not (root / "runs/fresh/metrics.json").exists()
         else "STALE METRICS LEFT", fresh_killed)
    case("the killed --fresh run, run again (resumes it)", train("runs/fresh", "--seed", "2", "--epochs", "3"),
         lambda: "finished, run id " + json.loads((root / "runs/fresh/metrics.json").read_text())["run_id"])

    def leftover_tmp():
        (root / "runs/tmpfiles").mkdir(parents=True, exist_ok=True)
        (root / "runs/tmpfiles/.metrics.json.x1y2.tmp").write_text("half a file")
    case("a temporary file left by a killed write", train("runs/tmpfiles"),
         lambda: "removed" if not list((root / "runs/tmpfiles").glob(".*.tmp")) else "LEFT BEHIND", leftover_tmp)

    # ------------------------------------------------------------------ settings, checked before work
    for name, extra in [("--lr inf", ["--lr", "inf"]), ("--lr 1e30 (diverges)", ["--lr", "1e30"]),
                        ("--ks 0,20", ["--ks", "0,20"]), ("--ks -5,20", ["--ks", "-5,20"]),
                        ("--epochs abc", ["--epochs", "abc"]), ("--threads -1", ["--threads", "-1"]),
                        ("--device gpu7", ["--device", "gpu7"]), ("--device cuda on a machine without one",
                                                                  ["--device", "cuda"]),
                        ("--model diffmm --rebuild_k 1000 (60 items)", ["--model", "diffmm", "--rebuild_k", "1000"]),
                        ("an unknown setting --foo 1", ["--foo", "1"])]:
        case(name, train(f"runs/bad-{len(rows)}", *extra),
             lambda out=f"runs/bad-{len(rows)}": "no checkpoint written" if not (root / out / "last.pt").exists()
             else "last good checkpoint kept")

    def no_valid():
        ds = make_synthetic(n_users=120, n_items=60, seed=3)
        ds.valid = ds.valid.multiply(0).tocsr()
        ds.valid.eliminate_zeros()
        write_diffmm_dir(ds, root / "novalid")
    case("a dataset without validation interactions", train("runs/novalid", "--data", "novalid"), setup=no_valid)

    def full_user():
        ds = make_synthetic(n_users=120, n_items=60, seed=3)
        train_ = ds.train.tolil()
        train_[0, :] = 1
        ds.train = train_.tocsr()
        ds.valid = (ds.valid - ds.valid.multiply(ds.train)).tocsr()
        ds.test = (ds.test - ds.test.multiply(ds.train)).tocsr()
        write_diffmm_dir(ds, root / "fulluser")
    case("one user holding every item", train("runs/fulluser", "--data", "fulluser"), setup=full_user)

    def bad_features():
        write_mmrec(data, root / "mmrec")
        np.save(root / "mmrec" / "text_feat.npy", np.zeros((59, 4), np.float32))
    case("MMRec feature file with a missing row", ["stats", "--data", "mmrec"], setup=bad_features)

    def nan_features():
        shutil.copytree(root / "good", root / "nanfeat", dirs_exist_ok=True)
        features = np.load(root / "nanfeat" / "image_feat.npy")
        features[3, 1] = np.nan
        np.save(root / "nanfeat" / "image_feat.npy", features)
    case("NaN in a feature file", ["stats", "--data", "nanfeat"], setup=nan_features)
    case("a file given as --data", ["stats", "--data", "good/trnMat.pkl"])
    case("a path that does not exist as --data", ["stats", "--data", "nowhere"])
    case("--out under a file (cannot be a directory)", train("good/trnMat.pkl/run"))

    # ------------------------------------------------------------------ result files
    def bad_metrics():
        assert cli(*train("runs/badjson"), cwd=root).returncode == 0
        (root / "runs/badjson/metrics.json").write_text("{not json")
    case("malformed metrics.json given to summarize", ["summarize", "runs/badjson"], setup=bad_metrics)

    def mixed():
        assert cli(*train("runs/mixed"), cwd=root).returncode == 0
        metrics = json.loads((root / "runs/mixed/metrics.json").read_text())
        (root / "runs/mixed/metrics.json").write_text(json.dumps({**metrics, "run_id": "0" * 12}))
    case("metrics.json of another run beside config.json", ["summarize", "runs/mixed"], setup=mixed)

    def bad_record():
        (root / "store/tiktok").mkdir(parents=True, exist_ok=True)
        (root / "store/tiktok/diffmm-000000000000.json").write_text('{"key": 1}')
    case("a malformed record in the results store", ["reproduce", "--status", "--store", "store"], setup=bad_record)
    def no_history():
        assert cli(*train("runs/nohistory"), cwd=root).returncode == 0
        (root / "runs/nohistory/history.csv").unlink()
    case("figures from a run directory without history.csv", ["figures", "--run", "runs/nohistory", "--out", "figs"],
         setup=no_history)
    case("figures from a run directory with a malformed metrics.json", ["figures", "--run", "runs/badjson",
                                                                        "--out", "figs"])

    print("| # | bad input or fault | exit | what the user sees (stderr) | traceback | nothing lost / run |")
    print("|---|---|---|---|---|---|")
    for i, r in enumerate(rows, 1):
        print(f"| {i} | {r['case']} | {r['exit']} | {r['message'].replace('|', '/')} | "
              f"{'yes' if r['traceback'] else 'no'} | {r['check']} |")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""In-process A/B of a module-level setting: the default and a changed value alternated in rounds, in one process.

    DIFFMM_DATA=<datasets> python benchmarks/ab.py --set diffmm.contrastive.MAX_UNSHIFTED=-1
    DIFFMM_DATA=<datasets> python benchmarks/ab.py --set diffmm.memory.GENERATOR_CHUNK_BYTES=8388608 --phase generator

A round times ``--steps`` BPR + contrastive steps (``--phase rec``) or one pass of generator training
(``--phase generator``) with each arm, the arms' order flipping every round, so the drift of a shared
machine hits both alike; comparing whole benches in separate processes cannot see a few percent. Prints
each arm's median, the median per-round ratio (changed / default) and how many rounds the change was
faster; the last line is JSON. The allocator policy of ``python -m diffmm`` is applied first, as in a run.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import statistics
import sys
import time

from diffmm import memory

memory.configure()  # before torch loads, as python -m diffmm does

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffmm.config import DiffMMConfig, TrainConfig  # noqa: E402
from diffmm.data import registry as datasets  # noqa: E402
from diffmm.models import build_model  # noqa: E402
from diffmm.train import Trainer  # noqa: E402


def setting(text: str):
    """'package.module.NAME=value' -> (module, NAME, value); the value is a Python literal."""
    target, _, value = text.partition("=")
    module_name, _, attr = target.rpartition(".")
    if not value or not module_name:
        raise SystemExit(f"--set wants module.NAME=value, got '{text}'")
    module = importlib.import_module(module_name)
    if not hasattr(module, attr):
        raise SystemExit(f"--set: {module_name} has no '{attr}'")
    return module, attr, ast.literal_eval(value)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", required=True, action="append", help="module.NAME=value for the changed arm (repeatable)")
    p.add_argument("--phase", choices=("rec", "generator"), default="rec")
    p.add_argument("--data", default="tiktok")
    p.add_argument("--preset", default="tiktok")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps", type=int, default=8, help="BPR steps per round and arm (--phase rec)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    changes = [setting(s) for s in args.set]
    defaults = [(module, attr, getattr(module, attr)) for module, attr, _ in changes]

    torch.set_num_threads(args.threads)
    dataset = datasets.load(args.data)
    train = TrainConfig(**DiffMMConfig.TRAIN_PRESETS.get(args.preset, {}), threads=args.threads, progress=False)
    model = build_model("diffmm", dataset, DiffMMConfig.preset(args.preset), seed=train.seed)
    trainer = Trainer(model, dataset, train)
    model.train()
    model.rebuild_graphs()
    triples = torch.from_numpy(np.stack(trainer.sampler.epoch_triples(trainer.rng)))
    batches = list(triples.split(train.batch_size, dim=1))
    taken = 0

    def work() -> None:
        nonlocal taken
        if args.phase == "generator":
            model.train_generators(trainer.optimizers["generator"])
            memory.phase_end()
            return
        optimizer = trainer.optimizers["rec"]
        for _ in range(args.steps):
            losses = model.loss(*batches[taken % len(batches)])
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()
            taken += 1

    def timed(arm: list) -> float:
        for module, attr, value in arm:
            setattr(module, attr, value)
        t0 = time.perf_counter()
        work()
        return (time.perf_counter() - t0) / (args.steps if args.phase == "rec" else 1)

    work()  # warm-up: Adam's state, the allocator's first blocks
    times = {"default": [], "changed": []}
    ratios = []
    for r in range(args.rounds):
        order = ("default", "changed") if r % 2 == 0 else ("changed", "default")
        this = {name: timed(defaults if name == "default" else changes) for name in order}
        for name, seconds in this.items():
            times[name].append(seconds)
        ratios.append(this["changed"] / this["default"])
    for module, attr, value in defaults:
        setattr(module, attr, value)
    unit = "step" if args.phase == "rec" else "generator pass"
    result = {"phase": args.phase, "set": args.set, "rounds": args.rounds, "threads": args.threads,
              "default_ms": 1000 * statistics.median(times["default"]),
              "changed_ms": 1000 * statistics.median(times["changed"]),
              "ratio_median": statistics.median(ratios), "changed_faster_rounds": sum(x < 1 for x in ratios)}
    print(f"median {unit}: default {result['default_ms']:.1f} ms, {', '.join(args.set)} {result['changed_ms']:.1f} ms; "
          f"per-round ratio {result['ratio_median']:.3f}, faster in {result['changed_faster_rounds']} of {args.rounds}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

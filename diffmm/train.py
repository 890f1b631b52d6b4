"""The Trainer: epochs of BPR steps, validation-selected early stopping, checkpoints, resume.

The reported test metrics are those of the epoch with the best *validation* metric. Beside
them, the best test value over all evaluated epochs is kept and labelled optimistic: it is
what selecting on the test set (as the reference code does) would report.
"""

from __future__ import annotations

import copy
import math
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from diffmm.config import TrainConfig
from diffmm.data.dataset import RecDataset
from diffmm.data.sampling import NegativeSampler
from diffmm.evaluate import EvalResult, evaluate
from diffmm.models.base import Recommender
from diffmm import memory
from diffmm.utils import atomic_path, resolve_device, seed_everything
from diffmm.checkpoints import CheckpointError, changed_settings, data_changes, data_signature, load_checkpoint

if TYPE_CHECKING:  # pandas loads on first use: training never imports it (~33 MiB of RSS)
    import pandas as pd

# settings a resumed run may change: they do not alter what was computed up to the checkpoint
RESUMABLE_SETTINGS = ("epochs", "patience", "progress", "threads", "device", "eval_batch_size")


class TrainingDivergedError(RuntimeError):
    """A loss term became NaN or infinite; the message names the term, its modality and the epoch."""


def _eval_state(result: EvalResult) -> dict:
    """An evaluation as checkpoint data (tensors and plain values: loadable with ``weights_only``)."""
    return {"metrics": dict(result.metrics), "n_skipped": int(result.n_skipped),
            "columns": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in result.columns.items()},
            "topk": None if result.topk is None else [torch.from_numpy(np.ascontiguousarray(a)) for a in result.topk]}


def _eval_result(state: dict, path: Path) -> EvalResult:
    try:
        return EvalResult({k: float(v) for k, v in state["metrics"].items()},
                          {k: v.numpy() for k, v in state["columns"].items()}, int(state["n_skipped"]),
                          None if state["topk"] is None else tuple(a.numpy() for a in state["topk"]))
    except (KeyError, AttributeError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: entry 'test_result' is not a stored evaluation ({error!r})") from None


class Callback:
    """Hooks called by the Trainer; override what you need. Return True from
    ``on_epoch_end`` to stop training."""

    def on_fit_start(self, trainer: "Trainer") -> None: ...

    def on_epoch_end(self, trainer: "Trainer", record: dict) -> bool | None: ...

    def on_fit_end(self, trainer: "Trainer", result: "FitResult") -> None: ...


@dataclass
class FitResult:
    """What a training run produced."""

    best_epoch: int
    valid: dict[str, float]  # validation metrics at best_epoch
    test: dict[str, float]  # test metrics at best_epoch (the honest number)
    optimistic_test: dict[str, float]  # best test value per metric over evaluated epochs
    optimistic_epoch: dict[str, int]  # the epoch each optimistic value came from
    history: pd.DataFrame
    epochs_run: int
    wall_s: float
    test_result: EvalResult | None = field(default=None, repr=False)  # per-user table at best_epoch
    run_id: str = ""  # the same in every file of a run directory (a resumed run keeps its id)
    peak_rss_mib: float | None = None  # peak RSS while it trained (a resumed run: the highest of its processes')
    peak_gpu_mib: float | None = None  # on CUDA: the most memory torch held allocated on the device
    cpu_s: float | None = None  # process CPU time (all threads) spent training, over every (re)start of the run

    def summary(self, metric: str = "recall@20", other: str | None = None) -> str:
        """One line: ``metric`` (the selection metric, say) and ``other`` (default: NDCG, or Recall for an NDCG
        metric, at the same cut-off) of the selected epoch, and the optimistic value."""
        cut_off = metric.split("@")[-1]
        other = other or (f"recall@{cut_off}" if metric.startswith("ndcg") else f"ndcg@{cut_off}")
        return (f"best epoch {self.best_epoch} (of {self.epochs_run}, selected on valid {metric}) | "
                f"test {metric} {self.test[metric]:.4f}"
                + (f" {other} {self.test[other]:.4f}" if other in self.test else "") + " | "
                f"optimistic best-test {metric} {self.optimistic_test[metric]:.4f} "
                f"(epoch {self.optimistic_epoch[metric]}) | {self.wall_s:.0f}s"
                + (f" | peak RSS {self.peak_rss_mib:.0f} MiB" if self.peak_rss_mib else "")
                + (f", GPU {self.peak_gpu_mib:.0f} MiB" if self.peak_gpu_mib else ""))

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "best_epoch": self.best_epoch, "epochs_run": self.epochs_run,
                "wall_s": self.wall_s, "cpu_s": self.cpu_s, "peak_rss_mib": self.peak_rss_mib, "peak_gpu_mib": self.peak_gpu_mib,
                "valid": self.valid, "test": self.test,
                "optimistic_test": self.optimistic_test, "optimistic_epoch": self.optimistic_epoch}


class Trainer:
    """Trains a :class:`Recommender` on a :class:`RecDataset`.

    Args:
        model: the recommender (moved to the configured device).
        dataset: train/valid/test interactions.
        config: :class:`TrainConfig`.
        out_dir: if given, ``best.pt`` (best validation epoch) and ``last.pt`` (resumable state)
            are written there atomically every evaluation / epoch.
        callbacks: :class:`Callback` objects.
        resume: continue from ``out_dir/last.pt`` if it exists.
    """

    def __init__(self, model: Recommender, dataset: RecDataset, config: TrainConfig | None = None,
                 out_dir: str | Path | None = None, callbacks: Sequence[Callback] = (), resume: bool = False):
        self.config = config or TrainConfig()
        memory.set_threads(self.config.threads)
        seed_everything(self.config.seed)
        self.device = resolve_device(self.config.device)
        for split in ("valid", "test"):  # checked before any work: selection and the report need both
            if model.trainable and dataset.split(split).nnz == 0:
                raise ValueError(f"dataset '{dataset.name}' has no {split} interactions: training selects the "
                                 f"epoch on validation and reports test metrics, so both splits need some")
        self.model = model.to(self.device)
        self.dataset = dataset
        self.out_dir = Path(out_dir) if out_dir else None
        self.callbacks = list(callbacks)
        self.rng = np.random.default_rng(self.config.seed)
        self.sampler = NegativeSampler(dataset.train) if model.trainable else None
        self.optimizers = model.configure_optimizers(self.config.lr) if model.trainable else {}
        self.history: list[dict] = []
        self.epoch = 0
        self.best: dict = {"epoch": 0, "value": -math.inf, "valid": {}, "test": {}}
        self._data_signature: dict | None = None  # see run_signature
        self.run_id = uuid.uuid4().hex[:12]
        if resume and self.out_dir and (self.out_dir / "last.pt").exists():
            self.load_state(self.out_dir / "last.pt")
            self._complete_best()

    # ----------------------------------------------------------- evaluation
    def evaluate(self, split: str, return_topk: bool = False) -> EvalResult:
        return evaluate(self.model.scorer(), self.dataset, split, self.config.ks,
                        self.config.eval_batch_size, self.device, return_topk=return_topk)

    # ------------------------------------------------------------- training
    def train_epoch(self) -> dict[str, float]:
        """One epoch: the model's per-epoch work, then one pass of BPR steps over every training pair."""
        model, cfg = self.model, self.config
        model.train()
        t0 = time.perf_counter()
        memory.phase_end()
        record = dict(model.before_epoch(self.epoch, self.optimizers, progress=cfg.progress))
        memory.phase_end()
        record["hwm_before_epoch_mib"] = memory.peak_rss_mib()  # the run's peak RSS so far, phase by phase
        t1 = time.perf_counter()
        totals: dict[str, float] = {}
        n_batches = self.sampler.n_batches(cfg.batch_size)
        # the epoch's triples go to the device once; batches are views of them
        triples = torch.from_numpy(np.stack(self.sampler.epoch_triples(self.rng))).to(self.device)  # (3, nnz)
        steps = tqdm(triples.split(cfg.batch_size, dim=1), total=n_batches, disable=not cfg.progress,
                     desc=f"epoch {self.epoch}", leave=False)
        optimizer = self.optimizers["rec"]
        for users, positives, negatives in steps:
            losses = model.loss(users, positives, negatives)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + value.detach()
        totals = {name: float(value) for name, value in totals.items()}  # one device sync per epoch
        terms = {**{f"train_{k}": v for k, v in totals.items()}, **{k: v for k, v in record.items() if k.startswith("gen_")}}
        bad = {name: value for name, value in terms.items() if not math.isfinite(value)}
        if bad:
            kept = (f"the last good state is kept in last.pt (epoch {self.epoch - 1})" if self.epoch > 1
                    else "no epoch had finished, so nothing was saved")
            raise TrainingDivergedError(
                f"epoch {self.epoch}: loss term(s) {', '.join(f'{k} = {v}' for k, v in bad.items())} (gen_<modality>_* "
                f"are the denoisers'); the weights are no longer usable; {kept}. Lower --lr (now {cfg.lr}) "
                "or the weight of the term")
        record.update({f"train_{name}": value / n_batches for name, value in totals.items()})
        record.update(before_epoch_s=t1 - t0, rec_s=time.perf_counter() - t1)
        memory.phase_end()
        record["hwm_rec_mib"] = memory.peak_rss_mib()
        return record

    def close(self) -> None:
        """Training is over: free the optimisers' state (DiffMM's denoisers: ~200 MB on TikTok)."""
        self.optimizers = {}
        memory.phase_end()

    def fit(self) -> FitResult:
        """Train until ``epochs`` or early stopping; return validation-selected results."""
        cfg = self.config
        start = time.perf_counter() - (self.history[-1]["elapsed_s"] if self.history else 0.0)
        # CPU time counts what the run used, however many other processes shared the cores
        cpu_start = time.process_time() - ((self.history[-1].get("cpu_s") or 0.0) if self.history else 0.0)
        for cb in self.callbacks:
            cb.on_fit_start(self)
        memory.reset_peak_rss()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        best_test_result = None
        stop = self._patience_exhausted()  # a run resumed after it stopped early trains no further epoch
        while self.model.trainable and self.epoch < cfg.epochs and not stop:
            self.epoch += 1
            record = {"epoch": self.epoch, **self.train_epoch()}
            new_best = None
            if self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs:
                new_best = self._validate(record)
                best_test_result = new_best or best_test_result
            record["elapsed_s"] = time.perf_counter() - start
            record["cpu_s"] = time.process_time() - cpu_start
            record.update(hwm_eval_mib=memory.peak_rss_mib(), rss_mib=memory.rss_mib())
            self.history.append(record)
            stop = self._patience_exhausted()
            for cb in self.callbacks:
                stop = bool(cb.on_epoch_end(self, record)) or stop
            if self.out_dir:
                self.save_state(self.out_dir / "last.pt")
                if new_best is not None:  # after last.pt: a run stopped between the two is completed on resume
                    self._save_best(new_best)
        if not self.model.trainable:  # nothing to train: one evaluation is the result
            record = {"epoch": 0}
            best_test_result = self._validate(record)
            record["elapsed_s"] = time.perf_counter() - start
            record["cpu_s"] = time.process_time() - cpu_start
            self.history.append(record)
        if best_test_result is None:  # resumed after the best epoch: rebuild its table
            best_test_result = self._best_test_from_checkpoint()
        # over the whole run: a resumed run's earlier processes left their peaks in the history
        earlier = [r["hwm_eval_mib"] for r in self.history if r.get("hwm_eval_mib") is not None]
        peaks = (max([memory.peak_rss_mib(), *earlier]),
                 torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None)
        result = self._result(time.perf_counter() - start, best_test_result, *peaks, time.process_time() - cpu_start)
        for cb in self.callbacks:
            cb.on_fit_end(self, result)
        return result

    def _validate(self, record: dict) -> EvalResult | None:
        t0 = time.perf_counter()
        valid = self.evaluate("valid")
        test = self.evaluate("test", return_topk=True)  # kept whole if this epoch is the best: no re-evaluation
        record["eval_s"] = time.perf_counter() - t0
        record.update({f"valid_{k}": v for k, v in valid.metrics.items()})
        record.update({f"test_{k}": v for k, v in test.metrics.items()})
        value = valid.metrics[self.config.metric]
        if value > self.best["value"]:
            self.best = {"epoch": record["epoch"], "value": value, "valid": valid.metrics, "test": test.metrics}
            return test
        return None

    def _save_best(self, test: EvalResult) -> None:
        """best.pt: the weights of the best epoch so far (the current ones) and its test evaluation."""
        self._save(self.out_dir / "best.pt", {"model": self.model.state_dict(), "epoch": self.best["epoch"],
                                              "valid": self.best["valid"], "test": self.best["test"],
                                              "test_result": _eval_state(test),
                                              "signature": self.run_signature(), "run_id": self.run_id})

    def _complete_best(self) -> None:
        """On resume: write best.pt if the run stopped after last.pt and before best.pt of its best epoch.

        best.pt is written after last.pt, so the only gap a stop can leave is a best epoch that last.pt
        ends on; last.pt then holds that epoch's weights, and its test evaluation is redone (it draws no
        random numbers, so the resumed run continues exactly).
        """
        path = self.out_dir / "best.pt"
        if self.best["epoch"] == 0 or self.best["epoch"] != self.epoch:
            return
        if path.exists() and load_checkpoint(path, mmap=True).get("epoch") == self.epoch:
            return
        self._save_best(self.evaluate("test", return_topk=True))

    def _patience_exhausted(self) -> bool:
        cfg = self.config
        if not cfg.patience:
            return False
        evaluations = [r for r in self.history if f"valid_{cfg.metric}" in r]
        since_best = sum(1 for r in evaluations if r["epoch"] > self.best["epoch"])
        return since_best >= cfg.patience

    def _best_test_from_checkpoint(self) -> EvalResult | None:
        """The best epoch's test evaluation, for a run resumed after it: stored in best.pt (tensors only),
        else (checkpoints written before 2026-12-01) re-evaluated with the best weights swapped in."""
        if not (self.out_dir and (self.out_dir / "best.pt").exists()):
            return None
        state = load_checkpoint(self.out_dir / "best.pt", mmap=True)  # the weights stay unread
        if state.get("epoch") != self.best["epoch"]:  # written before best.pt followed last.pt (2026-12-02)
            raise CheckpointError(
                f"{self.out_dir / 'best.pt'}: holds epoch {state.get('epoch')}, but this run's best validation epoch "
                f"is {self.best['epoch']} (the run was stopped between writing best.pt and last.pt, and its "
                "resumed epochs took another course); start over with --fresh")
        stored = state.get("test_result")
        if stored is not None:
            return _eval_result(stored, self.out_dir / "best.pt")
        current = copy.deepcopy(self.model.state_dict())  # tensors, and any extra state (DiffMM's graphs)
        self.model.load_state_dict(load_checkpoint(self.out_dir / "best.pt")["model"])
        result = self.evaluate("test", return_topk=True)
        self.model.load_state_dict(current)
        return result

    def _result(self, wall_s: float, test_result: EvalResult | None, peak_rss_mib: float | None = None,
                peak_gpu_mib: float | None = None, cpu_s: float | None = None) -> FitResult:
        import pandas as pd
        history = pd.DataFrame(self.history)
        optimistic, optimistic_epoch = {}, {}
        for column in history.columns:
            if column.startswith("test_") and history[column].notna().any():
                idx = history[column].idxmax()
                optimistic[column[5:]] = float(history.loc[idx, column])
                optimistic_epoch[column[5:]] = int(history.loc[idx, "epoch"])
        return FitResult(self.best["epoch"], self.best["valid"], self.best["test"], optimistic, optimistic_epoch,
                         history, self.epoch, wall_s, test_result, self.run_id, peak_rss_mib, peak_gpu_mib, cpu_s)

    # ---------------------------------------------------------- checkpoints
    def run_signature(self) -> dict:
        """What a checkpoint must match to be resumed: model, its config, the data, and the training
        settings except :data:`RESUMABLE_SETTINGS`."""
        if self._data_signature is None:  # hashed once: the data does not change under a trainer
            self._data_signature = data_signature(self.dataset)
        return {"model": type(self.model).__name__, "model_config": self.model.config.to_dict(),
                "train": {k: v for k, v in self.config.to_dict().items() if k not in RESUMABLE_SETTINGS},
                "data": self._data_signature}

    @staticmethod
    def _save(path: Path, payload: dict) -> None:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    def save_state(self, path: str | Path) -> None:
        """Everything needed to continue exactly: weights, optimisers, RNGs, history, best so far."""
        self._save(Path(path), {
            "model": self.model.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "epoch": self.epoch, "history": self.history, "best": self.best,
            "rng": {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state(),
                    "python": random.getstate(),
                    # the training device's generator only: querying every visible GPU would start a
                    # CUDA context on each (host memory) even for a CPU run, and tie resume to the GPU count
                    "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None},
            "config": self.config.to_dict(), "signature": self.run_signature(), "run_id": self.run_id,
        })

    def load_state(self, path: str | Path) -> None:
        # on the CPU: the RNG states must stay there; weights and optimiser states are copied to the
        # device of the parameters they are loaded into
        state = load_checkpoint(path)
        saved = state.get("signature")
        changed = [] if saved is None else (  # the data apart: a checkpoint without a fingerprint
            changed_settings(saved, {k: v for k, v in self.run_signature().items() if k != "data"})
            + data_changes(saved.get("data"), self.dataset))
        if changed:  # resuming would report the old run under the new settings
            raise CheckpointError(f"{path}: this run directory holds a run with other settings ({'; '.join(changed)}); "
                             f"only {', '.join(RESUMABLE_SETTINGS)} may change on resume. Start over with --fresh "
                             "(resume=False) or write to another --out")
        self.model.load_state_dict(state["model"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.epoch, self.history, self.best = state["epoch"], state["history"], state["best"]
        self.run_id = state.get("run_id", self.run_id)
        self.rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        cuda_state = state["rng"]["cuda"]
        if cuda_state is not None and self.device.type == "cuda":
            if isinstance(cuda_state, list):  # older checkpoints: one state per visible GPU
                cuda_state = cuda_state[torch.cuda.current_device() if self.device.index is None else self.device.index]
            torch.cuda.set_rng_state(cuda_state, self.device)

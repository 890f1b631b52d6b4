"""The ``ray`` executor: the same runs as the local one, handed to a Ray cluster (``pip install ray``).

Each run is one Ray task that trains in a work directory on the node that runs it and returns its
record; the process that called ``reproduce`` writes the records into its store. Every node needs the
datasets (its cache, ``$DIFFMM_DATA`` or ``--data-root``) and this package. On CUDA a task asks for
``1 / jobs`` of a GPU, so ``jobs`` runs share each GPU.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence


def run_on_ray(args: Sequence[tuple], worker: Callable, address: str | None = None, jobs: int = 1,
               device: str = "cpu", threads: int = 1) -> Iterator[tuple]:
    """Run ``worker(a)`` for each ``a`` as Ray tasks (at most ``jobs`` at a time); yield outcomes as they finish.

    ``address``: an existing cluster ('auto', 'ray://host:10001', ...); None starts a local Ray for the
    duration of the call, sized to ``jobs`` tasks of ``threads`` CPUs each.
    """
    try:
        import ray
    except ImportError:
        raise ValueError("--engine ray needs Ray: pip install 'ray>=2.9' (or pip install -e .[ray])") from None
    started = not ray.is_initialized()
    if started:
        local = {} if address else {"num_cpus": max(1, jobs * threads), "num_gpus": None}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 **{k: v for k, v in local.items() if v is not None})
    try:
        gpu_share = 1.0 / jobs if device.startswith("cuda") else 0
        task = ray.remote(num_cpus=threads, num_gpus=gpu_share, max_retries=0)(worker)
        pending, waiting = [], list(args)
        while waiting or pending:
            while waiting and len(pending) < jobs:
                pending.append(task.remote(waiting.pop(0)))
            finished, pending = ray.wait(pending, num_returns=1)
            yield ray.get(finished[0])
    finally:
        if started:
            ray.shutdown()

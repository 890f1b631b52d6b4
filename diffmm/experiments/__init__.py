"""Experiments: one run -> a run directory; declared sweeps -> a results table (cached per run)."""

from diffmm.experiments.runs import build_run_config, load_run, run, run_dir_results, summarize_runs

__all__ = ["build_run_config", "load_run", "run", "run_dir_results", "summarize_runs"]

"""Benchmark targets and latency statistics.

A target measures one .tflite with a thread count and returns raw timings; the
statistics are computed here, the same way for every target. The host target
runs LiteRT in this process; device targets (ADB) implement the same `measure`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from core.errors import UserError
from pipelines.config import BenchmarkConfig
from tflite.runtime import measure_host

STAT_FIELDS = ("init_ms", "first_ms", "mean_ms", "std_ms", "p50_ms", "p90_ms", "p99_ms")


class BenchmarkTarget(Protocol):
    name: str

    def measure(self, model_path: Path, threads: int, settings: BenchmarkConfig) -> dict:
        """Return {"init_ms", "first_ms", "runs_ms": [...]} for one model and thread count."""


class HostTarget:
    """This machine, through the LiteRT interpreter."""

    name = "host"

    def measure(self, model_path: Path, threads: int, settings: BenchmarkConfig) -> dict:
        return measure_host(model_path, num_threads=threads, warmup_runs=settings.warmup_runs,
                            num_runs=settings.num_runs, min_secs=settings.min_secs)


def targets_from_names(names: list[str]) -> list[BenchmarkTarget]:
    targets: list[BenchmarkTarget] = []
    for name in names:
        if name != "host":
            raise UserError(f"benchmark target {name!r} is not available; this version "
                            "benchmarks on 'host' only.")
        targets.append(HostTarget())
    return targets


def summarize(raw: dict, target: str, threads: int) -> dict:
    """Latency statistics in milliseconds over the steady-state runs."""
    runs = np.asarray(raw["runs_ms"], dtype=np.float64)
    if runs.size == 0:
        raise UserError(f"benchmark on {target}: no timed runs; set benchmark.num_runs >= 1.")
    return {
        "target": target, "threads": threads, "runs": int(runs.size),
        "init_ms": float(raw["init_ms"]), "first_ms": float(raw["first_ms"]),
        "mean_ms": float(runs.mean()), "std_ms": float(runs.std(ddof=1)) if runs.size > 1 else 0.0,
        "p50_ms": float(np.percentile(runs, 50)), "p90_ms": float(np.percentile(runs, 90)),
        "p99_ms": float(np.percentile(runs, 99)),
    }

"""Benchmark targets: the host and Android devices over ADB.

Both run the same native runner (`litert_bench`), append every finished
measurement to a JSON Lines journal (so an interrupted benchmark resumes where
it stopped), and come back as results.json benchmark records, one per target and
thread count, so the report treats them alike.
"""
from __future__ import annotations

from pathlib import Path

from android_bench.runner import (RunSettings, benchmark_on_host, litert_library,
                                  runner_binary, to_benchmark_record)
from pipelines.config import BenchmarkConfig

STAT_FIELDS = ("init_ms", "first_ms", "mean_ms", "std_ms", "p50_ms", "p90_ms", "p99_ms")


def run_settings(settings: BenchmarkConfig) -> RunSettings:
    """Everything of the config that shapes a measurement (and is recorded with it)."""
    return RunSettings(warmup_runs=settings.warmup_runs,
                       warmup_min_secs=settings.warmup_min_secs, num_runs=settings.num_runs,
                       min_secs=settings.min_secs, affinity=settings.affinity,
                       input_layer=settings.input_layer,
                       input_layer_shape=settings.input_layer_shape,
                       max_tensor_bytes=settings.max_tensor_bytes)


def _device_files(settings: BenchmarkConfig) -> tuple[Path, list[Path]]:
    """The runner and libraries pushed to devices of the ABI they are built for: by
    default the host build (x86_64 emulators); arm64-v8a phones get setup's arm64
    bundle unless this runner is an arm64 build (android_bench/adb_harness.py)."""
    runner = Path(settings.device_runner) if settings.device_runner else runner_binary()
    libraries = ([Path(p) for p in settings.device_libraries] if settings.device_libraries
                 else [litert_library()])
    return runner, libraries


def measure(target: str, model_path: Path, settings: BenchmarkConfig, journal: Path) -> list[dict]:
    """Benchmark records of `model_path` on `target` ("host", a device serial, or
    "all" devices) for every configured thread count."""
    if target == "host":
        measurements = benchmark_on_host(model_path, results_path=journal,
                                         threads=settings.threads, settings=run_settings(settings))
    else:
        from android_bench.adb_harness import benchmark_on_devices

        runner, libraries = _device_files(settings)
        measurements = benchmark_on_devices(model_path, runner, results_path=journal,
                                            targets="all" if target == "all" else [target],
                                            threads=settings.threads,
                                            libraries=libraries, settings=run_settings(settings),
                                            benchmark_model=settings.benchmark_model)
    return [to_benchmark_record(m) for m in measurements]

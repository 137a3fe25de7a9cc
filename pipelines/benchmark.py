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
from core.errors import UserError
from pipelines.config import BenchmarkConfig
from tflite.runner_io import parse_input_layers

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
    """The runner and libraries pushed to devices: by default the host build, which
    only runs on a device of the same ABI (build for arm64 as in RUNNER.md)."""
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
                                            libraries=libraries, settings=run_settings(settings))
    return [to_benchmark_record(m) for m in measurements]


def check_run_settings(settings: RunSettings) -> None:
    """Refuse what the runner would refuse, before anything is trained or converted."""
    if settings.warmup_runs < 0:
        raise UserError(f"warmup_runs must be 0 or more, got {settings.warmup_runs}.")
    if settings.warmup_min_secs < 0:
        raise UserError(f"warmup_min_secs must be 0 or more seconds, got "
                        f"{settings.warmup_min_secs}.")
    if settings.num_runs < 1:
        raise UserError(f"num_runs must be at least 1, got {settings.num_runs}.")
    if settings.min_secs < 0:
        raise UserError(f"min_secs must be 0 or more seconds, got {settings.min_secs}.")
    if settings.max_tensor_bytes < 0:
        raise UserError(f"max_tensor_bytes must be 0 (the runtime's default) or a byte count, "
                        f"got {settings.max_tensor_bytes}.")
    parse_input_layers(settings.input_layer, settings.input_layer_shape)


def check_benchmark(settings: BenchmarkConfig) -> None:
    """The benchmark section, checked before a run starts."""
    targets = settings.targets
    if not targets:
        raise UserError("benchmark.targets is empty: use host, a device serial, or all.")
    if "all" in targets and len(targets) > 1 and set(targets) - {"all", "host"}:
        raise UserError(f"benchmark.targets {targets}: 'all' already means every device; "
                        "list serials or all, not both.")
    if not settings.threads or min(settings.threads) < 1:
        raise UserError(f"benchmark.threads must list thread counts of at least 1, got "
                        f"{settings.threads}.")
    check_run_settings(run_settings(settings))

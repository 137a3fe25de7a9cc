"""Every setting that shapes a measurement: one set of defaults (RunSettings), each
passed to the runner, and recorded with every benchmark record."""
from __future__ import annotations

import dataclasses

from absl import flags

from android_bench.runner import RunSettings, runner_command, to_benchmark_record
from pipelines import cli  # noqa: F401  (defines the flags read below)
from pipelines.benchmark import run_settings
from pipelines.config import BenchmarkConfig, load_config


def test_one_set_of_defaults():
    defaults = RunSettings()
    assert run_settings(BenchmarkConfig()) == defaults
    assert run_settings(load_config().benchmark) == defaults  # the default run's config
    for field in dataclasses.fields(RunSettings):
        if field.name != "extra_args":  # `edgepipe bench`'s flags
            assert flags.FLAGS[field.name].default == getattr(defaults, field.name), field.name


def test_every_setting_reaches_the_runner():
    settings = RunSettings(warmup_runs=3, warmup_min_secs=0.25, num_runs=7, min_secs=1.5,
                           affinity="f0", input_layer="a,b", input_layer_shape="1,4:1,2",
                           max_tensor_bytes=1 << 20, extra_args=("--max_secs=9",))
    argv = runner_command("/bin/litert_bench", "/m.tflite", 2, settings, "/out.json")
    assert argv[:3] == ["taskset", "f0", "/bin/litert_bench"]
    assert set(argv[3:]) == {
        "--graph=/m.tflite", "--num_threads=2", "--warmup_runs=3", "--warmup_min_secs=0.25",
        "--num_runs=7", "--min_secs=1.5", "--report_peak_memory_footprint=true",
        "--input_layer=a,b", "--input_layer_shape=1,4:1,2", "--max_tensor_bytes=1048576",
        "--json_output=/out.json", "--max_secs=9"}


def test_unset_shapes_and_cap_are_left_to_the_runner():
    argv = runner_command("litert_bench", "m.tflite", 1, RunSettings(), "out.json")
    assert "--warmup_min_secs=0.5" in argv
    assert not [a for a in argv if a.startswith(("--input_layer", "--max_tensor_bytes"))]


def test_config_settings_are_what_the_runner_gets():
    config = BenchmarkConfig(warmup_runs=2, warmup_min_secs=0.0, num_runs=9, min_secs=0.5,
                             affinity="3", input_layer="x", input_layer_shape="2,4",
                             max_tensor_bytes=4096)
    assert dataclasses.asdict(run_settings(config)) == {
        "warmup_runs": 2, "warmup_min_secs": 0.0, "num_runs": 9, "min_secs": 0.5,
        "affinity": "3", "input_layer": "x", "input_layer_shape": "2,4",
        "max_tensor_bytes": 4096, "extra_args": ()}


def test_benchmark_record_carries_the_settings():
    settings = {**dataclasses.asdict(RunSettings(num_runs=3)), "extra_args": []}
    steady = {f"{name}_us": 1000.0 for name in
              ("mean", "std", "min", "max", "p5", "p50", "p90", "p95", "p99")}
    measurement = {"target": "host", "threads": 1, "device": {"kind": "host"},
                   "settings": settings,
                   "runner": {"steady_state": {"count": 3, **steady}, "init": {"total_us": 5.0},
                              "first_inference_us": 2.0, "warmup": {"mean_us": None},
                              "memory": None}}
    record = to_benchmark_record(measurement)
    assert record["settings"] == settings and record["mean_ms"] == 1.0

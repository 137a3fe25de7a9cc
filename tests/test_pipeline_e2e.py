"""The whole pipeline through the `edgepipe` command on a small config, twice."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from android_bench.runner import RunSettings
from pipelines.benchmark import STAT_FIELDS
from pipelines.report import SCHEMA_VERSION

TINY = Path(__file__).parent / "data" / "tiny.yaml"
VARIANT_FIELDS = {"model", "name", "path", "file_bytes", "gzip_bytes", "sparsity", "accuracy",
                  "keras_accuracy", "max_abs_error", "top1_agreement", "benchmarks"}
BENCHMARK_FIELDS = {"target", "threads", "settings", *STAT_FIELDS}


def edgepipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    result = edgepipe("run", "--config", str(TINY), "--output_dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stage times:" in result.stdout
    return out


def test_results_json_schema(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    assert results["schema_version"] == SCHEMA_VERSION
    names = [(v["model"], v["name"]) for v in results["variants"]]
    assert names == [("cnn", "float32"), ("cnn", "int8"), ("cnn", "float16"),
                     ("cnn", "pruned_float32"), ("cnn", "pqat_int8"), ("rnn", "float32"),
                     ("rnn", "dynamic_range"), ("rnn", "pruned_dynamic_range")]
    for variant in results["variants"]:
        assert VARIANT_FIELDS <= set(variant)
        assert (run_dir / variant["path"]).stat().st_size == variant["file_bytes"]
        assert 0 < variant["gzip_bytes"]
        assert [(b["target"], b["threads"]) for b in variant["benchmarks"]] == [("host", 1),
                                                                               ("host", 2)]
        for bench in variant["benchmarks"]:
            assert BENCHMARK_FIELDS <= set(bench)
            assert 0 < bench["p50_ms"] <= bench["p99_ms"]
            # tiny.yaml's warmup_runs and num_runs, RunSettings' defaults for the rest
            assert bench["settings"] == {**dataclasses.asdict(
                RunSettings(warmup_runs=1, num_runs=5)), "extra_args": []}
    for model in results["models"]:
        assert model["params"] > 0 and model["mult_adds"] > 0


def test_float32_matches_keras_and_pruning_is_measured(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    by_name = {(v["model"], v["name"]): v for v in results["variants"]}
    for model in ("cnn", "rnn"):
        float32 = by_name[(model, "float32")]
        assert float32["max_abs_error"] <= 1e-4
        assert float32["top1_agreement"] == 1.0
        assert float32["accuracy"] == pytest.approx(float32["keras_accuracy"])
    assert by_name[("cnn", "pruned_float32")]["sparsity"] > 0.3
    assert by_name[("rnn", "pruned_dynamic_range")]["sparsity"] > 0.3
    assert by_name[("cnn", "float32")]["sparsity"] < 0.05
    models = {m["name"]: m for m in results["models"]}
    assert models["cnn"]["pruning"]["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert models["cnn"]["pqat"]["sparsity"] >= models["cnn"]["pruning"]["sparsity"] - 1e-6
    assert {r["weight"] for r in models["rnn"]["pruning"]["layers"]} == {"kernel",
                                                                         "recurrent_kernel"}


def test_report_and_plots(run_dir):
    report = (run_dir / "report.md").read_text()
    assert "| cnn | pqat_int8 |" in report and "| rnn | float32 | 2 |" in report
    # Every variant's speed against its model's float32 variant; float32 is 1.00x itself.
    assert report.count("| 1.00x |") >= 2
    # The pruned variants went through `auto`: each decision is listed with its reason.
    assert "### cnn · pruned_float32" in report and "### rnn · pruned_dynamic_range" in report
    for plot in ("accuracy_vs_size.png", "accuracy_vs_latency.png"):
        assert (run_dir / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run_dir / "cnn" / "logs" / "pruned").rglob("events.out.tfevents.*"))


def test_second_run_reuses_every_stage(run_dir):
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.tflite")}
    journals = {p: p.read_text() for p in run_dir.rglob("benchmarks/*.jsonl")}
    assert len(journals) == 8
    first = json.loads((run_dir / "results.json").read_text())
    result = edgepipe("run", "--config", str(TINY), "--output_dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "float is up to date" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.tflite")} == before
    second = json.loads((run_dir / "results.json").read_text())
    assert second["variants"] == first["variants"]
    assert set(second["stage_seconds"]) <= {"data", "benchmark"}
    assert {p: p.read_text() for p in run_dir.rglob("benchmarks/*.jsonl")} == journals

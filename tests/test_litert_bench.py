"""The native benchmark runner (.native/litert_bench, built by scripts/setup.sh)
on real converted models: JSON schema and sane values, and its refusals."""
import json
import subprocess

import numpy as np
import pytest

from core.keras_env import keras
from models.gru import gru_classifier
from models.mobilenet import mobilenet_v1
from tflite.convert import convert_model
from tflite.runtime.binding import REPO_ROOT, LiteRtRunner

RUNNER = REPO_ROOT / ".native" / "litert_bench"
FAST = ["--num_runs=5", "--min_secs=0", "--warmup_runs=2", "--warmup_min_secs=0"]
STATS = ("count", "mean_us", "std_us", "min_us", "max_us", "p5_us", "p50_us", "p90_us",
         "p95_us", "p99_us")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    if not RUNNER.is_file():
        pytest.fail(f"{RUNNER} is missing: scripts/setup.sh builds it")
    folder = tmp_path_factory.mktemp("bench_models")
    keras.utils.set_random_seed(0)
    mobilenet = mobilenet_v1((32, 32, 1), 10, alpha=0.25)
    images = np.random.default_rng(0).random((16, 32, 32, 1), dtype=np.float32)
    gru = gru_classifier((8, 8), 10, units=(16,))
    paths = {}
    for name, model, quantization, data in [
        ("mobilenet_float", mobilenet, "none", None),
        ("mobilenet_int8", mobilenet, "int8", images),
        ("gru_float", gru, "none", None),
    ]:
        paths[name] = folder / f"{name}.tflite"
        paths[name].write_bytes(convert_model(model, quantization, data))
    return paths


def run(*args, check=True):
    result = subprocess.run([str(RUNNER), *map(str, args)], capture_output=True, text=True,
                            timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize("name,dtype", [("mobilenet_float", "float32"),
                                        ("mobilenet_int8", "int8"), ("gru_float", "float32")])
def test_json_schema_and_values(models, name, dtype):
    path = models[name]
    result = run(f"--graph={path}", "--report_peak_memory_footprint=true", *FAST)
    report = json.loads(result.stdout)
    assert report["schema_version"] == 1
    assert report["model"]["size_bytes"] == path.stat().st_size
    assert report["model"]["inputs"][0]["dtype"] == dtype
    assert report["model"]["outputs"][0]["shape"] == [1, 10]
    stats = report["steady_state"]
    assert set(stats) == set(STATS)
    assert stats["count"] >= 5
    assert 0 < stats["min_us"] <= stats["p5_us"] <= stats["p50_us"] <= stats["p90_us"] \
        <= stats["p95_us"] <= stats["p99_us"] <= stats["max_us"]
    assert stats["min_us"] <= stats["mean_us"] <= stats["max_us"]
    assert report["init"]["total_us"] >= report["init"]["compile_us"] > 0
    assert report["first_inference_us"] > 0 and report["warmup"]["count"] >= 2
    memory = report["memory"]
    assert memory["peak_rss_kib"] >= memory["rss_after_init_kib"] > 0
    assert report["device"]["kind"] == "host" and report["device"]["cpu_count"] >= 1
    assert report["settings"]["num_threads"] == 1
    assert "Inference timings in us: Init: " in result.stderr


def test_json_output_file_and_input_values(models, tmp_path):
    values = tmp_path / "x.raw"
    np.random.default_rng(0).random((1, 32, 32, 1), dtype=np.float32).tofile(values)
    out = tmp_path / "result.json"
    result = run(f"--graph={models['mobilenet_float']}", "--num_threads=2", f"--json_output={out}",
                 f"--input_layer_value_files=input:{values}", *FAST)
    assert result.stdout == ""
    report = json.loads(out.read_text())
    assert report["settings"]["num_threads"] == 2 and report["memory"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "x.raw"]  # no temp left


@pytest.mark.parametrize("name", ["mobilenet_int8", "gru_float"])
def test_output_filepath_holds_the_last_outputs(models, name, tmp_path):
    """--output_filepath writes the output's raw bytes; the Python binding runs the
    same runtime on the same input, so they must agree bit for bit."""
    runner = LiteRtRunner(models[name])
    detail, array = runner.inputs[0]
    rng = np.random.default_rng(1)
    value = (rng.integers(-128, 128, array.shape).astype(np.int8) if array.dtype == np.int8
             else rng.random(array.shape, dtype=np.float32))
    runner.set_input(value)
    runner.invoke_timed()
    values = tmp_path / "x.raw"
    value.tofile(values)
    out = tmp_path / "out.raw"
    run(f"--graph={models[name]}", f"--input_layer_value_files={detail['name']}:{values}",
        f"--output_filepath={out}", *FAST)
    assert out.read_bytes() == runner.output().tobytes()


def test_refusals(models, tmp_path, tiny_tflite_bytes, with_custom_op):
    custom = tmp_path / "custom.tflite"
    custom.write_bytes(with_custom_op(tiny_tflite_bytes, "FULLY_CONNECTED", "SparseGRU"))
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"garbage" * 20)
    short = tmp_path / "short.raw"
    short.write_bytes(b"\0" * 3)
    cases = [
        ([f"--graph={custom}"], 1, "custom op 'SparseGRU'"),
        ([f"--graph={garbage}"], 1, "not a TFLite model"),
        ([f"--graph={tmp_path / 'none.tflite'}"], 1, "cannot open model file"),
        ([], 2, "--graph is required"),
        ([f"--graph={models['gru_float']}", "--num_threads=0"], 2, "--num_threads"),
        ([f"--graph={models['gru_float']}", "--frobnicate=1"], 2, "unknown flag --frobnicate"),
        ([f"--graph={models['gru_float']}", "--accelerator=tpu"], 2, "--accelerator"),
        ([f"--graph={models['gru_float']}", f"--input_layer_value_files=input:{short}"], 2,
         "needs"),
        ([f"--graph={models['gru_float']}", f"--output_filepath={tmp_path / 'no' / 'out.raw'}"], 1,
         "cannot write"),
    ]
    for args, code, message in cases:
        result = run(*args, *FAST, check=False)
        assert result.returncode == code, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert result.stdout == ""

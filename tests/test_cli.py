"""The `edgepipe` command's user mistakes: one clear line, exit 1, nothing written
(in-process, as tests/fixtures/cli.py runs it)."""
import dataclasses
import json

import pytest

from android_bench.runner import RunSettings
from fixtures.cli import assert_user_error, edgepipe


def test_unknown_command_prints_usage():
    result = edgepipe("train")
    assert result.returncode == 2 and "commands:" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["run", "--config", "/no/such.yaml"], "config file '/no/such.yaml' does not exist"),
    (["run", "--set", "models.nope.train.epochs=1"], "no model named 'nope'"),
    (["run", "--set", "models.mobilenet.train.epoch=1"], "unknown key 'epoch'"),
    (["run", "--models", "resnet"], "--models: no model named 'resnet'"),
    (["run", "--threads", "one"], "--threads takes comma-separated integers"),
    (["inspect"], "usage: edgepipe inspect MODEL.tflite"),
    (["bench"], "bench needs --model"),
    (["bench", "--model", "/no/model.tflite"], "--model '/no/model.tflite' does not exist"),
    (["summary", "--builder", "resnet50"], "resnet50"),
    (["run", "--set", "benchmark.num_runs=0"],
     "config: benchmark.num_runs: input should be greater than or equal to 1 (got 0)."),
    (["run", "--set", "benchmark.threads=[0]"],
     "benchmark.threads[0]: input should be greater than or equal to 1 (got 0)"),
    (["bench", "--model", __file__, "--warmup_runs", "-1"],
     "edgepipe bench: error: --warmup_runs: input should be greater than or equal to 0 (got -1)."),
    (["bench-ops", "--min_secs", "-2"], "--min_secs: input should be greater than or equal to 0 "
     "(got -2.0)."),
    (["bench-ops", "--steps", "0"], "--steps must be at least 1, got 0"),
    (["bench", "--model", __file__, "--warmup_min_secs", "-1"],
     "--warmup_min_secs: input should be greater than or equal to 0 (got -1.0)."),
    (["bench", "--model", __file__, "--max_tensor_bytes", "-1"],
     "--max_tensor_bytes: input should be greater than or equal to 0 (got -1)."),
    (["bench", "--model", __file__, "--affinity", "zz"],
     "--affinity: 'zz' is not a CPU mask in hex as taskset takes it, e.g. f0"),
    (["bench", "--model", __file__, "--input_layer", "x"],
     "input_layer is set but input_layer_shape is not: give both, one shape per input name"),
    (["bench", "--model", __file__, "--input_layer", "x", "--input_layer_shape", "1,four"],
     "input_layer_shape '1,four': each shape is comma-separated integers of at least 1, "
     "shapes are separated by ':'"),
    (["bench", "--model", __file__, "--input_layer", "a,b", "--input_layer_shape", "1,4"],
     "input_layer names 2 input(s) (a, b) but input_layer_shape gives 1 shape(s)"),
    (["run", "--set", "benchmark.input_layer_shape=1,4"],
     "input_layer_shape is set but input_layer is not"),
])
def test_user_mistakes(args, message, tmp_path):
    result = edgepipe(*args, "--output_dir", str(tmp_path / "out")) if args[0] == "run" \
        else edgepipe(*args)
    assert_user_error(result, message)
    assert not (tmp_path / "out").exists()


def test_inspect_rejects_a_file_that_is_not_tflite(tmp_path):
    bogus = tmp_path / "model.tflite"
    bogus.write_bytes(b"PK\x03\x04 definitely a zip")
    assert_user_error(edgepipe("inspect", str(bogus)), "not a TFLite flatbuffer")


def test_inspect_and_bench_a_real_model(tmp_path, tiny_tflite_bytes):
    model = tmp_path / "tiny.tflite"
    model.write_bytes(tiny_tflite_bytes)
    shown = edgepipe("inspect", str(model))
    assert shown.returncode == 0 and "FULLY_CONNECTED" in shown.stdout
    out = tmp_path / "bench.json"
    bench = edgepipe("bench", "--model", str(model), "--threads", "1,2", "--num_runs", "5",
                     "--json_output", str(out))
    assert bench.returncode == 0, bench.stderr[-2000:]
    assert "| host |" in bench.stdout and "| tiny | tiny.tflite | 2 |" in bench.stdout
    rows = json.loads(out.read_text())["benchmarks"]
    assert [r["threads"] for r in rows] == [1, 2] and all(r["mean_ms"] > 0 for r in rows)
    # Every setting that shaped the numbers is recorded with them, defaults included.
    recorded = {**dataclasses.asdict(RunSettings(num_runs=5)), "extra_args": []}
    assert all(r["settings"] == recorded for r in rows)


def test_summary_reports_mobilenet_cost():
    result = edgepipe("summary", "--builder", "mobilenet_v1", "--option", "alpha=0.25",
                      "--input_shape", "128,128,3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "conv_pw_13" in result.stdout


def test_bench_ops_measures_sparse_gru_against_builtin(tmp_path):
    out = tmp_path / "ops.json"
    result = edgepipe("bench-ops", "--op", "sparse_gru", "--hidden", "16", "--steps", "5",
                      "--sparsities", "0,0.9", "--num_runs", "3", "--warmup_runs", "1",
                      "--rounds", "3", "--threads", "1,2", "--json_output", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert len(rows) == 12 and {(r["impl"], r["precision"], r["sparsity"], r["threads"])
                                for r in rows} == {
        (impl, precision, sparsity, threads) for threads in (1, 2)
        for impl, precision, sparsity in (
            ("builtin_while", "float32", 0.0), ("builtin_unrolled", "float32", 0.0),
            ("sparse_gru", "float32", 0.0), ("sparse_gru", "int8", 0.0),
            ("sparse_gru", "float32", 0.9), ("sparse_gru", "int8", 0.9))}
    assert all(r["op"] == "sparse_gru" and r["hidden"] == 16 and r["mean_us"] > 0
               and r["file_bytes"] > 0 for r in rows)
    sizes = {(r["impl"], r["precision"], r["sparsity"]): r["file_bytes"] for r in rows
             if r["threads"] == 1}
    assert sizes[("sparse_gru", "float32", 0.9)] < sizes[("sparse_gru", "float32", 0.0)]
    assert "speed-up vs WHILE" in result.stdout and "int8 vs float32" in result.stdout


def test_bench_ops_rejects_bad_arguments():
    assert_user_error(edgepipe("bench-ops", "--op", "sparse_lstm"), "custom ops with a benchmark")
    assert_user_error(edgepipe("bench-ops", "--sparsities", "0.5,1.5"), "fractions in [0, 1)")
    assert_user_error(edgepipe("bench-ops", "--rounds", "0"), "--rounds must be at least 1")
    assert_user_error(edgepipe("bench-ops", "--hidden", "256,0"),
                      "--hidden takes comma-separated integers of at least 1")


def test_unwritable_outputs_are_refused_before_any_work(tmp_path):
    """A result that could not be written at the end is refused at the start, where
    nothing has been trained or measured yet."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("a file, not a folder")
    assert_user_error(edgepipe("run", "--output_dir", str(a_file / "out")),
                      f"output_dir: cannot write in '{a_file / 'out'}'")
    assert_user_error(edgepipe("bench", "--model", __file__, "--json_output",
                               str(a_file / "bench.json")),
                      f"--json_output: cannot write in '{a_file}'")
    assert_user_error(edgepipe("bench-ops", "--json_output", str(a_file / "ops.json")),
                      f"--json_output: cannot write in '{a_file}'")
    assert_user_error(edgepipe("bench-ops", "--json_output", str(tmp_path)),
                      f"--json_output {str(tmp_path)!r} is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_bench_ops_hands_on_each_layer_size_as_it_finishes():
    """What the CLI saves after each size: an interrupted benchmark keeps the sizes done."""
    from android_bench.runner import RunSettings
    from pipelines.benchmarks.bench_ops import bench_sparse_gru

    snapshots = []
    rows = bench_sparse_gru([8, 12], [0.9], steps=3, threads=[1],
                    settings=RunSettings(warmup_runs=0, num_runs=1, min_secs=0),
                    rounds=1, on_rows=lambda so_far: snapshots.append(list(so_far)))
    sizes_saved = [[r["hidden"] for r in snapshot] for snapshot in snapshots]
    assert sizes_saved == [[8] * 4, [8] * 4 + [12] * 4]
    assert snapshots[-1] == rows


def test_bench_ops_measures_sparse_separable_against_builtin(tmp_path):
    out = tmp_path / "separable.json"
    result = edgepipe("bench-ops", "--op", "sparse_separable", "--workloads", "block_56x56x128",
                      "--sparsities", "0,0.9", "--num_runs", "2", "--warmup_runs", "0",
                      "--precisions", "float32,int8", "--rounds", "1", "--json_output", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [(r["precision"], r["impl"], r["sparsity"]) for r in rows] == [
        (precision, impl, sparsity) for sparsity in (0.0, 0.9) for precision in ("float32", "int8")
        for impl in ("builtin", "sparse_separable", "auto")]
    assert all(r["op"] == "sparse_separable" and r["workload"] == "block_56x56x128"
               and r["mean_us"] > 0 for r in rows)
    by = {(r["precision"], r["impl"], r["sparsity"]): r["file_bytes"] for r in rows}
    # CSR at 90% keeps about a tenth of the 1x1 weights, which are most of the file; int8
    # values take 1 byte beside each 2-byte column index instead of 4.
    assert by["float32", "sparse_separable", 0.9] < 0.4 * by["float32", "builtin", 0.9]
    assert by["int8", "sparse_separable", 0.9] < 0.85 * by["float32", "sparse_separable", 0.9]
    assert by["int8", "builtin", 0.0] < 0.5 * by["float32", "builtin", 0.0]
    # auto keeps the builtin file where the op cannot pay or serve: dense weights, int8.
    for precision, sparsity in (("float32", 0.0), ("int8", 0.0), ("int8", 0.9)):
        assert by[precision, "auto", sparsity] == by[precision, "builtin", sparsity]
    assert "vs builtin, same weights" in result.stdout


def test_bench_ops_refuses_an_unknown_precision():
    assert_user_error(edgepipe("bench-ops", "--op", "sparse_separable", "--precisions",
                               "float32,int4"),
                      "--precisions: 'int4' is not a precision; choose from float32, "
                      "dynamic_range, int8.")


def test_bench_ops_refuses_an_unknown_workload():
    assert_user_error(edgepipe("bench-ops", "--op", "sparse_separable", "--workloads",
                               "block_9x9x9"),
                      "--workloads: 'block_9x9x9' is not a workload; choose from "
                      "mobilenet_v1_1.0_224, block_56x56x128")

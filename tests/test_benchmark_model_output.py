"""benchmark_model's log lines (the format TFLite's tools/benchmark README documents)
read into the runner JSON fields the records use; and our runner prints the same
lines, so it can stand in for the official binary (tests/test_arm64_device.py)."""
import json
import subprocess

import pytest

from android_bench.benchmark_model_output import parse
from android_bench.runner import runner_binary
from core.errors import UserError

# Current releases: INFO prefixes, percentiles on the count= lines, peak memory.
CURRENT = """\
INFO: STARTING!
INFO: Graph: [/data/local/tmp/m.tflite]
INFO: Num threads: [4]
INFO: The input model file size (MB): 4.27
INFO: Initialized session in 31.5ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=41 first=15210 curr=11904 min=11702 max=15210 avg=12180.2 std=612 p5=11730 median=12001 p95=13400

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=84 first=11950 curr=11820 min=11600 max=14100 avg=11890.5 std=401 p5=11640 median=11810 p95=12700

INFO: Inference timings in us: Init: 31500, First inference: 15210, Warmup (avg): 12180.2, Inference (avg): 11890.5
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=6.5 overall=9.25
INFO: Peak memory footprint (MB): init=7.5 overall=10
"""

# Older releases: no prefix, no percentiles, the "Average inference timings" line.
OLD = """\
Initialized session in 38.467ms
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=6 first=90211 curr=83001 min=82500 max=90211 avg=84120 std=2800

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=50 first=79449 curr=81350 min=77385 max=88213 avg=79732 std=1929

Average inference timings in us: Warmup: 84120, Init: 38467, Inference: 79732
"""


def test_current_format_gives_every_figure_it_prints():
    document = parse(CURRENT, "test")
    assert document["tool"] == "benchmark_model"
    assert document["init"] == {"total_us": 31500.0}
    assert document["first_inference_us"] == 15210.0
    assert document["warmup"] == {"count": 41, "mean_us": 12180.2}
    assert document["steady_state"] == {
        "count": 84, "mean_us": 11890.5, "std_us": 401.0, "min_us": 11600.0, "max_us": 14100.0,
        "p5_us": 11640.0, "p50_us": 11810.0, "p90_us": None, "p95_us": 12700.0, "p99_us": None}
    assert document["memory"] == {"init_footprint_kib": 6656, "rss_after_init_kib": None,
                                  "peak_rss_kib": 10240}


def test_old_format_without_percentiles():
    document = parse(OLD, "test")
    assert document["init"] == {"total_us": 38467.0}
    assert document["first_inference_us"] == 90211.0  # the warm-up's first run
    assert document["warmup"] == {"count": 6, "mean_us": 84120.0}
    steady = document["steady_state"]
    assert (steady["count"], steady["mean_us"], steady["min_us"]) == (50, 79732.0, 77385.0)
    assert steady["p50_us"] is None and steady["p95_us"] is None
    assert document["memory"] is None


def test_unknown_memory_is_none_not_a_negative_size():
    text = CURRENT.replace("init=7.5 overall=10", "init=-1 overall=-1")
    assert parse(text, "test")["memory"]["peak_rss_kib"] is None


@pytest.mark.parametrize("text, missing", [
    ("ERROR: Failed to load model /data/local/tmp/m.tflite\n", "count= line"),
    (CURRENT.split("INFO: Inference timings")[0], "inference timings line"),
    (CURRENT.replace(" avg=11890.5", ""), "avg= on its last count= line"),
])
def test_output_without_the_summary_is_one_error_with_its_tail(text, missing):
    with pytest.raises(UserError) as error:
        parse(text, "benchmark_model on device X (threads=1)")
    message = str(error.value)
    assert message.startswith("benchmark_model on device X (threads=1): ")
    assert missing in message and text.strip().splitlines()[-1] in message


def test_our_runner_prints_what_the_parser_reads(tiny_tflite_bytes, tmp_path):
    model = tmp_path / "tiny.tflite"
    model.write_bytes(tiny_tflite_bytes)
    result = subprocess.run(
        [str(runner_binary()), f"--graph={model}", "--num_runs=7", "--warmup_runs=2",
         "--warmup_min_secs=0", "--min_secs=0", "--report_peak_memory_footprint=true"],
        capture_output=True, text=True, timeout=120, check=True)
    ours = json.loads(result.stdout)
    read = parse(result.stderr, "litert_bench")
    assert read["steady_state"]["count"] == ours["steady_state"]["count"] == 7
    assert read["warmup"]["count"] == ours["warmup"]["count"] == 2
    for name in ("mean_us", "min_us", "max_us", "p50_us", "p95_us"):
        assert read["steady_state"][name] == pytest.approx(ours["steady_state"][name], abs=0.051)
    assert read["first_inference_us"] == pytest.approx(ours["first_inference_us"], abs=0.051)
    assert read["init"]["total_us"] == pytest.approx(ours["init"]["total_us"], abs=0.51)
    assert read["memory"]["peak_rss_kib"] == pytest.approx(ours["memory"]["peak_rss_kib"], abs=1)

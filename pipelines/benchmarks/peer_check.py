"""Peer check: edgepipe's runner against ai_edge_litert's own benchmark tool.

Both measure the same MobileNet .tflite on one thread with the same warm-up and
run counts, alternating rounds so that machine noise hits both alike. Prints a
table; `--json_output` also writes the rows.

    .venv/bin/python -m android_bench.peer_check --rounds 3 --json_output peer.json
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import ai_edge_litert
from absl import app, flags

from android_bench.runner import RunSettings, run_on_host, runner_binary
from core import atomic

FLAGS = flags.FLAGS
flags.DEFINE_float("alpha", 1.0, "MobileNet width multiplier.")
flags.DEFINE_integer("resolution", 128, "MobileNet input resolution (3 channels).")
flags.DEFINE_integer("num_runs", 200, "Timed runs per measurement, for both tools.")
flags.DEFINE_integer("warmup_runs", 20, "Warm-up runs per measurement, for both tools.")
flags.DEFINE_integer("rounds", 3, "Alternating rounds of both tools.")
flags.DEFINE_string("json_output", None, "Also write the rows as JSON here.")

PEER_TOOL = Path(ai_edge_litert.__file__).parent / "tools" / "benchmark_litert_model.py"


def make_model(folder: Path) -> Path:
    from models.mobilenet import mobilenet_v1
    from tflite.convert import convert_model

    model = mobilenet_v1((FLAGS.resolution, FLAGS.resolution, 3), 1000, alpha=FLAGS.alpha)
    path = folder / f"mobilenet_{FLAGS.alpha}_{FLAGS.resolution}.tflite"
    path.write_bytes(convert_model(model, "none"))
    return path


def peer_mean_ms(model: Path, folder: Path) -> float:
    output = folder / "peer.json"
    subprocess.run([sys.executable, str(PEER_TOOL), "--model", str(model), "--num_threads", "1",
                    "--num_runs", str(FLAGS.num_runs), "--warmup_runs", str(FLAGS.warmup_runs),
                    "--result_json", str(output)], check=True, capture_output=True)
    return float(json.loads(output.read_text())["latency"]["avg_ms"])


def main(argv: list[str]) -> None:
    del argv
    with tempfile.TemporaryDirectory(prefix="edgepipe-peer-") as name:
        folder = Path(name)
        model = make_model(folder)
        settings = RunSettings(warmup_runs=FLAGS.warmup_runs, num_runs=FLAGS.num_runs,
                               extra_args=("--warmup_min_secs=0",))
        rows = []
        for round_index in range(FLAGS.rounds):
            ours = run_on_host(runner_binary(), model, 1, settings)["steady_state"]["mean_us"] / 1e3
            theirs = peer_mean_ms(model, folder)
            rows.append({"round": round_index + 1, "model": model.name,
                         "litert_bench_mean_ms": ours, "benchmark_litert_model_mean_ms": theirs,
                         "ratio": ours / theirs})
    print("| round | model | litert_bench mean ms | benchmark_litert_model mean ms | ratio |")
    print("|---:|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['round']} | {row['model']} | {row['litert_bench_mean_ms']:.3f} | "
              f"{row['benchmark_litert_model_mean_ms']:.3f} | {row['ratio']:.3f} |")
    if FLAGS.json_output:
        atomic.write_json(FLAGS.json_output, rows)


if __name__ == "__main__":
    app.run(main)

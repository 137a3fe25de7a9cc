"""Peer check: edgepipe's runner against ai_edge_litert's own benchmark tool.

Both measure the same MobileNet .tflite on one thread with the same warm-up and
run counts, in rounds that alternate which tool goes first, so that machine noise
hits both alike. The model is converted as a user would, with
`tf.lite.TFLiteConverter.from_keras_model` and no other arguments (a dynamic
batch, which our runner resizes to 1 as LiteRT's tool does). Prints a table;
`--json_output` also writes the rows.

    .venv/bin/python -m pipelines.benchmarks.peer_check --rounds 3 --json_output peer.json
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
# Deliberately more than RunSettings' defaults (the README's peer check): a one-off
# comparison of two tools, where longer measurements narrow the noise.
flags.DEFINE_integer("num_runs", 200, "Timed runs per measurement, for both tools.")
flags.DEFINE_integer("warmup_runs", 20, "Warm-up runs per measurement, for both tools.")
flags.DEFINE_integer("rounds", 3, "Alternating rounds of both tools.")
flags.DEFINE_string("json_output", None, "Also write the rows as JSON here.")

PEER_TOOL = Path(ai_edge_litert.__file__).parent / "tools" / "benchmark_litert_model.py"


def make_model(folder: Path) -> Path:
    from core.keras_env import tf
    from models.mobilenet import mobilenet_v1

    model = mobilenet_v1((FLAGS.resolution, FLAGS.resolution, 3), 1000, alpha=FLAGS.alpha)
    path = folder / f"mobilenet_{FLAGS.alpha}_{FLAGS.resolution}.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
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
        # Warm-up by count only, as benchmark_litert_model does (it has no time floor).
        settings = RunSettings(warmup_runs=FLAGS.warmup_runs, warmup_min_secs=0.0,
                               num_runs=FLAGS.num_runs)
        rows = []
        for round_index in range(FLAGS.rounds):
            measure = {
                "ours": lambda: run_on_host(runner_binary(), model, 1, settings)[
                    "steady_state"]["mean_us"] / 1e3,
                "theirs": lambda: peer_mean_ms(model, folder)}
            order = ["ours", "theirs"] if round_index % 2 == 0 else ["theirs", "ours"]
            means = {who: measure[who]() for who in order}
            ours, theirs = means["ours"], means["theirs"]
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

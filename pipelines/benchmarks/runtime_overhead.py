"""Per-call overhead of edgepipe's ctypes runtime against the ai_edge_litert Interpreter.

Both run the same one-op model; the loop times only the run call, so the
difference is the Python-to-native cost. Prints one line per runtime.

    .venv/bin/python -m pipelines.benchmarks.runtime_overhead
"""
from __future__ import annotations

import time
from pathlib import Path

from tflite.interpreter import TfliteRunner
from tflite.runtime.binding import LiteRtRunner

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = REPO_ROOT / "tflite" / "runtime" / "testdata" / "linear_float.tflite"
CALLS = 20_000


def main() -> None:
    for name, runner in (("edgepipe runtime (ctypes)", LiteRtRunner(MODEL)),
                         ("ai_edge_litert Interpreter", TfliteRunner(MODEL))):
        runner.set_example_input()
        for _ in range(1000):
            runner.invoke_timed()
        started = time.perf_counter()
        for _ in range(CALLS):
            runner.invoke_timed()
        print(f"{name}: {(time.perf_counter() - started) / CALLS * 1e6:.2f} µs per run call")


if __name__ == "__main__":
    main()

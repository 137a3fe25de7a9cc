"""Per-call overhead of edgepipe's ctypes runtime against the ai_edge_litert Interpreter.

Both run the same one-op model; the loop times only the run call, so the
difference is the Python-to-native cost. Prints one line per runtime.

    .venv/bin/python -m android_bench.runtime_overhead
"""
from __future__ import annotations

import time
from pathlib import Path

from tflite.litert_runtime import LiteRtRunner
from tflite.runtime import TfliteRunner

MODEL = Path(__file__).parent / "testdata" / "linear_float.tflite"
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

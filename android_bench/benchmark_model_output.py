"""Read what LiteRT's official `benchmark_model` prints into the runner's JSON shape.

benchmark_model has no machine-readable output on a phone (its protobuf and CSV
outputs vary between releases); its log lines are documented in TFLite's
tools/benchmark README and stable across releases, so they are what is parsed:

    INFO: Running benchmark for at least 50 iterations and at least 1 seconds ...
    INFO: count=50 first=79449 curr=81350 min=77385 max=88213 avg=79732 std=1929 p5=... median=... p95=...
    INFO: Inference timings in us: Init: 38467, First inference: 83235, Warmup (avg): 83235, Inference (avg): 79760.9
    INFO: Peak memory footprint (MB): init=2.7 overall=9.1

The first `count=` line is the warm-up, the last the steady state. Older releases
print `Average inference timings in us: Warmup: W, Init: I, Inference: A` instead,
without the percentiles: both are read. Prefixes ("INFO: ", logcat tags) are ignored.
"""
from __future__ import annotations

import re

from core.errors import UserError

TOOL = "benchmark_model"
_NUMBER = r"(-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"
_STATS = re.compile(r"count=([0-9]+)((?: [a-z0-9]+=" + _NUMBER + r")*)")
_FIELD = re.compile(r"([a-z0-9]+)=" + _NUMBER)
_TIMINGS = re.compile(r"Inference timings in us: Init: " + _NUMBER + r", First inference: "
                      + _NUMBER + r", Warmup \(avg\): " + _NUMBER + r", Inference \(avg\): "
                      + _NUMBER)
_OLD_TIMINGS = re.compile(r"Average inference timings in us: Warmup: " + _NUMBER + r", Init: "
                          + _NUMBER + r", (?:Inference|no stats): " + _NUMBER)
_PEAK_MEMORY = re.compile(r"Peak memory footprint \(MB\): init=" + _NUMBER + r" overall=" + _NUMBER)
_MEMORY_DELTA = re.compile(r"Memory footprint delta from the start of the tool \(MB\): init="
                           + _NUMBER + r" overall=" + _NUMBER)
TAIL_LINES = 15


def _stats_lines(text: str) -> list[dict[str, float]]:
    lines = []
    for match in _STATS.finditer(text):
        fields = {name: float(value) for name, value in _FIELD.findall(match.group(2))}
        lines.append({"count": int(match.group(1)), **fields})
    return lines


def _kib(megabytes: str) -> int | None:
    value = float(megabytes)
    return None if value < 0 else round(value * 1024)  # benchmark_model prints -1 when unknown


def _memory(text: str) -> dict | None:
    peak, delta = _PEAK_MEMORY.search(text), _MEMORY_DELTA.search(text)
    if not peak and not delta:
        return None
    return {"init_footprint_kib": _kib(delta.group(1)) if delta else None,
            "rss_after_init_kib": None,
            "peak_rss_kib": _kib(peak.group(2)) if peak else None}


def parse(text: str, where: str) -> dict:
    """The runner-JSON fields the records use (init, first_inference_us, warmup,
    steady_state, memory) from benchmark_model's output; percentiles it does not
    print (p90, p99; all of them in old releases) are None. One UserError naming
    `where` and the output's last lines when the summary line is not there."""
    stats = _stats_lines(text)
    timings, old = _TIMINGS.search(text), _OLD_TIMINGS.search(text)
    missing = ("count= line" if not stats else "inference timings line" if not (timings or old)
               else "avg= on its last count= line" if "avg" not in stats[-1] else None)
    if missing:
        tail = "\n".join(text.strip().splitlines()[-TAIL_LINES:])
        raise UserError(f"{where}: benchmark_model's output has no {missing}; is the "
                        f"configured benchmark_model the official one? Its output ends with:\n{tail}")
    steady = stats[-1]
    warmup = stats[0] if len(stats) > 1 else None
    if timings:
        init_us, first_us, warmup_avg = (float(timings.group(i)) for i in (1, 2, 3))
    else:
        warmup_avg, init_us = float(old.group(1)), float(old.group(2))
        first_us = warmup["first"] if warmup and "first" in warmup else warmup_avg
    return {
        "tool": TOOL,
        "init": {"total_us": init_us},
        "first_inference_us": first_us,
        "warmup": {"count": warmup["count"] if warmup else None, "mean_us": warmup_avg},
        "steady_state": {"count": steady["count"], "mean_us": steady["avg"],
                         "std_us": steady.get("std"), "min_us": steady.get("min"),
                         "max_us": steady.get("max"), "p5_us": steady.get("p5"),
                         "p50_us": steady.get("median"), "p90_us": None,
                         "p95_us": steady.get("p95"), "p99_us": None},
        "memory": _memory(text),
    }

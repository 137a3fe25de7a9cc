"""The `auto` lowering: edgepipe's custom ops only where they pay, measured on this host.

A custom op replaces builtin ops only where it beats them here, timed side by side
on the runtime validation uses, at every benchmark thread count: SparseSeparableConv
per depthwise-separable block (the block's builtin pair alone against the op alone),
SparseGRU for the model as a whole. Then the lowered model is timed against the
builtin one, and kept only if it is faster, so an `auto` variant is never slower
than its builtin conversion. Every decision is recorded with the times behind it.
"""
from __future__ import annotations

from collections.abc import Callable

from tflite.ops.sparse_separable_lowering import block_model, lower_separable_blocks
from tflite.runtime.binding import LiteRtRunner

# The op must take at most this share of the builtin time to be chosen: on a shared
# machine closer calls are noise.
MARGIN = 0.9
ROUNDS = 4
ROUND_SECONDS = 0.05  # per model and round; at least MIN_RUNS inferences
MIN_RUNS = 3
WARMUP_RUNS = 2
# 4x1 blocks are timed when they would store at most this many values per non-zero.
BLOCK_4X1_FILL = 1.5


def time_side_by_side(models: list[bytes], threads: int) -> list[float]:
    """Mean µs per inference of each model, measured in alternating rounds (every
    other round in reverse order) so that drift in the machine's speed falls on all."""
    runners = [LiteRtRunner(model, num_threads=threads) for model in models]
    for runner in runners:
        runner.set_example_input()
        for _ in range(WARMUP_RUNS):
            runner.invoke_timed()
    seconds, runs = [0.0] * len(runners), [0] * len(runners)
    order = list(range(len(runners)))
    for round_index in range(ROUNDS):
        for i in order if round_index % 2 == 0 else order[::-1]:
            spent, count = 0.0, 0
            while spent < ROUND_SECONDS or count < MIN_RUNS:
                spent += runners[i].invoke_timed()
                count += 1
            seconds[i] += spent
            runs[i] += count
    return [1e6 * s / n for s, n in zip(seconds, runs)]


def _timings(builtin: bytes, candidates: list[bytes], threads: list[int]) -> list[list[dict]]:
    """Per candidate, its time and the builtin file's at each thread count, all timed
    together."""
    rows: list[list[dict]] = [[] for _ in candidates]
    for count in threads:
        builtin_us, *candidate_us = time_side_by_side([builtin, *candidates], count)
        for row, us in zip(rows, candidate_us):
            row.append({"threads": count, "builtin_us": round(builtin_us, 2),
                        "op_us": round(us, 2)})
    return rows


def _slowest_ratio(timings: list[dict]) -> float:
    return max(t["op_us"] / t["builtin_us"] for t in timings)


def _pays(timings: list[dict], margin: float) -> bool:
    return all(t["op_us"] <= margin * t["builtin_us"] for t in timings)


def _describe(timings: list[dict]) -> str:
    return ", ".join(f"{t['op_us']:.1f} µs against {t['builtin_us']:.1f} µs at {t['threads']} "
                     f"thread{'s' if t['threads'] > 1 else ''}" for t in timings)


def _worth_4x1(record: dict) -> bool:
    """Whether 4x1 blocks are worth timing: they would store few zeros (the weights
    were pruned in such blocks), and each value they store still costs a multiply."""
    stored = record["stored_density_4x1"]
    return stored is not None and stored <= BLOCK_4X1_FILL * record["density"]


def auto_separable(flatbuffer: bytes, precision: str, threads: list[int]) -> tuple[bytes, dict]:
    """The model with SparseSeparableConv exactly where it is faster, and the decisions.

    Blocks whose pointwise weights the op would store dense are not timed: its dense
    path is slower than XNNPACK's pair at every size bench-ops measures. Weights pruned
    in 4x1 blocks are timed as plain and as 4x1 CSR, and the faster is kept.
    """
    _, records = lower_separable_blocks(flatbuffer, precision)
    chosen: dict[int, int] = {}  # depthwise op -> CSR block height
    for record in records:
        if not record["lowered"]:
            continue
        record["lowered"] = False
        if record["format"] == "dense":
            record["reason"] = (f"{record['stored_density']:.0%} of the 1x1 weights are non-zero: "
                                "the op's dense path is slower than the builtin pair")
            continue
        single = block_model(flatbuffer, record)
        blocks = [1, 4] if _worth_4x1(record) else [1]
        timings = _timings(single, [lower_separable_blocks(single, precision, block)[0]
                                    for block in blocks], threads)
        if len(blocks) > 1:
            record["block_timings"] = dict(zip(map(str, blocks), timings))
        block, record["timings"] = min(zip(blocks, timings), key=lambda c: _slowest_ratio(c[1]))
        if _pays(record["timings"], MARGIN):
            chosen[record["depthwise_op"]] = block
        else:
            record["reason"] = (f"the op is not {1 / MARGIN:.2f}x faster than the builtin pair "
                                f"({_describe(record['timings'])})")
    decision = {"mode": "auto", "blocks": records, "whole_model": None}
    if not chosen:
        return flatbuffer, decision
    lowered, final = lower_separable_blocks(flatbuffer, precision, only=chosen)
    for record, lowered_record in zip(records, final):
        if lowered_record["depthwise_op"] in chosen:
            record.update({**lowered_record, "timings": record["timings"],
                           "reason": f"op faster ({_describe(record['timings'])})"})
    decision["whole_model"] = _timings(flatbuffer, [lowered], threads)[0]
    if not _pays(decision["whole_model"], 1.0):
        for record in records:
            if record["lowered"]:
                record.update(lowered=False, reason="the lowered model as a whole was not faster "
                              f"({_describe(decision['whole_model'])})")
        return flatbuffer, decision
    return lowered, decision


def auto_gru(builtin: bytes, convert_lowered: Callable[[], bytes],
             threads: list[int]) -> tuple[bytes, dict]:
    """The SparseGRU conversion if it is faster than the builtin one, and the decision."""
    lowered = convert_lowered()
    timings = _timings(builtin, [lowered], threads)[0]
    if _pays(timings, MARGIN):
        return lowered, {"mode": "auto", "lowered": True, "timings": timings,
                         "reason": f"SparseGRU faster ({_describe(timings)})"}
    return builtin, {"mode": "auto", "lowered": False, "timings": timings,
                     "reason": f"SparseGRU is not {1 / MARGIN:.2f}x faster than the WHILE loop "
                               f"({_describe(timings)})"}

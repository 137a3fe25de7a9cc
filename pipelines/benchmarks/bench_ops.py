"""Custom-op benchmarks: each op against the builtin path of the same layer
(SparseSeparableConv's in bench_separable.py).

For `sparse_gru`: one GRU layer (input size = hidden, batch 1, at each thread count)
at several sparsities, as the SparseGRU custom op (float32 and int8 weights) and as the
builtin conversions of the same layer (the WHILE loop, and the unrolled form where
it converts), all measured by the native runner in one run, in alternating rounds.
Rows are {op, impl, precision, hidden, threads, sparsity, mean_us, file_bytes}; the
rows so far are handed on after each layer size, so an interrupted run keeps them.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from absl import logging

from android_bench.runner import RunSettings, run_on_host, runner_binary
from core.errors import UserError
from core.keras_env import keras

OPS = ("sparse_gru", "sparse_separable")  # the second in bench_separable.py


def gru_layer_model(hidden: int, steps: int, unroll: bool) -> keras.Model:
    """The benchmarked layer alone: [1, steps, hidden] -> last state [1, hidden]."""
    inputs = keras.Input((steps, hidden), batch_size=1)
    return keras.Model(inputs, keras.layers.GRU(hidden, unroll=unroll, name="gru_1")(inputs))


def zero_smallest(weight, sparsity: float) -> None:
    """Zero the smallest-magnitude fraction `sparsity` of a weight variable."""
    values = weight.numpy()
    if sparsity > 0:
        values[np.abs(values) <= np.quantile(np.abs(values), sparsity)] = 0.0
    weight.assign(values)


def prune_by_magnitude(model: keras.Model, sparsity: float) -> None:
    """Zero the smallest-magnitude fraction `sparsity` of each GRU kernel."""
    layer = model.get_layer("gru_1")
    for weight in (layer.cell.kernel, layer.cell.recurrent_kernel):
        zero_smallest(weight, sparsity)


Job = tuple[Path, int]  # a model and a thread count


def measure_in_rounds(jobs: list[Job], rounds: int, settings: RunSettings) -> list[dict]:
    """µs of each (model, threads) over `rounds` rounds of one runner call each,
    every other round in reverse order: on a shared machine whose speed drifts, the
    drift then falls on all alike and their ratios hold. `mean_us` is weighted by
    run counts; `median_us`, the median of the rounds' medians, is what one slow
    round (another process's burst) cannot move."""
    total_us = dict.fromkeys(jobs, 0.0)
    count = dict.fromkeys(jobs, 0)
    medians: dict[Job, list[float]] = {job: [] for job in jobs}
    for round_index in range(rounds):
        for job in jobs if round_index % 2 == 0 else jobs[::-1]:
            path, threads = job
            steady = run_on_host(runner_binary(), path, threads, settings)["steady_state"]
            total_us[job] += steady["mean_us"] * steady["count"]
            count[job] += steady["count"]
            medians[job].append(steady["p50_us"])
    return [{"mean_us": total_us[job] / count[job], "median_us": float(np.median(medians[job]))}
            for job in jobs]


def measure_models(models: list[tuple[dict, bytes]], folder: Path, label: str,
                   threads: list[int], rounds: int, settings: RunSettings) -> list[dict]:
    """Each (row, flatbuffer) at each thread count, all measured together in
    alternating rounds: the rows with threads, mean_us, median_us and file_bytes added."""
    jobs: list[Job] = []
    for index, (row, flatbuffer) in enumerate(models):
        path = folder / f"{label.replace(' ', '_')}_{index}_{row['impl']}.tflite"
        path.write_bytes(flatbuffer)
        jobs += [(path, count) for count in threads]
    logging.info("measuring %d models of %s at %s thread(s) in %d round(s)",
                 len(models), label, ",".join(map(str, threads)), rounds)
    timings = iter(measure_in_rounds(jobs, rounds, settings))
    return [{**row, "threads": count, **next(timings), "file_bytes": len(flatbuffer)}
            for row, flatbuffer in models for count in threads]


def bench_sparse_gru(hiddens: list[int], sparsities: list[float], steps: int,
                     threads: list[int], settings: RunSettings, rounds: int,
                     on_rows: Callable[[list[dict]], None]) -> list[dict]:
    from tflite.convert import convert_model
    from tflite.ops.sparse_gru_lowering import convert_with_sparse_gru

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgepipe-bench-ops-") as name:
        folder = Path(name)
        for hidden in hiddens:
            keras.utils.set_random_seed(hidden)
            rolled = gru_layer_model(hidden, steps, unroll=False)
            base_weights = rolled.get_weights()
            models: list[tuple[dict, bytes]] = []  # (row without mean_us, flatbuffer)
            for impl, unroll in (("builtin_while", False), ("builtin_unrolled", True)):
                model = gru_layer_model(hidden, steps, unroll=unroll) if unroll else rolled
                model.set_weights(base_weights)
                try:
                    flatbuffer = convert_model(model, "none")
                except UserError as e:
                    logging.warning("%s hidden=%d does not convert: %s", impl, hidden, e)
                    continue
                models.append(({"impl": impl, "precision": "float32", "sparsity": 0.0},
                               flatbuffer))
            for sparsity in sparsities:
                rolled.set_weights(base_weights)
                prune_by_magnitude(rolled, sparsity)
                for precision in ("float32", "int8"):
                    models.append(({"impl": "sparse_gru", "precision": precision,
                                    "sparsity": sparsity},
                                   convert_with_sparse_gru(rolled, precision=precision)))
            rows += measure_models([({"op": "sparse_gru", **row, "hidden": hidden}, flatbuffer)
                                    for row, flatbuffer in models],
                                   folder, f"hidden {hidden}", threads, rounds, settings)
            on_rows(rows)
    return rows


def format_table(rows: list[dict]) -> str:
    """Rows with the speed-up over the builtin WHILE loop of the same hidden size and
    thread count, the ratio of that speed-up to the ideal (the parameter reduction),
    the size ratio and, for int8, its speed against float32 weights at the same
    sparsity and thread count."""
    builtin = {(r["hidden"], r["threads"]): r for r in rows if r["impl"] == "builtin_while"}
    float32 = {(r["hidden"], r["threads"], r["sparsity"]): r for r in rows
               if r["impl"] == "sparse_gru" and r["precision"] == "float32"}
    lines = ["| impl | precision | hidden | threads | sparsity | mean µs | speed-up vs WHILE | "
             "of ideal | file KiB | smaller than WHILE file | int8 vs float32 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = builtin.get((r["hidden"], r["threads"]))
        speedup = base["mean_us"] / r["mean_us"] if base else float("nan")
        ideal = 1.0 / max(1.0 - r["sparsity"], 1e-9)
        smaller = base["file_bytes"] / r["file_bytes"] if base else float("nan")
        same_float = float32.get((r["hidden"], r["threads"], r["sparsity"]))
        versus = (f"{same_float['mean_us'] / r['mean_us']:.2f}x"
                  if r["precision"] == "int8" and same_float else "")
        lines.append(f"| {r['impl']} | {r['precision']} | {r['hidden']} | {r['threads']} | "
                     f"{r['sparsity']:.0%} | {r['mean_us']:.1f} | {speedup:.2f}x | "
                     f"{speedup / ideal:.0%} | "
                     f"{r['file_bytes'] / 1024:.1f} | {smaller:.2f}x | {versus} |")
    return "\n".join(lines)


def check_op(op: str) -> None:
    if op not in OPS:
        raise UserError(f"--op {op!r}: custom ops with a benchmark are {', '.join(OPS)}.")

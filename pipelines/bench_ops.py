"""Custom-op benchmarks: each op against the builtin path of the same layer.

For `sparse_gru`: one GRU layer (input size = hidden, batch 1, one thread) at several
sparsities, as the SparseGRU custom op (float32 and int8 weights) and as the
builtin conversions of the same layer (the WHILE loop, and the unrolled form where
it converts), all measured by the native runner in one run. Rows are
{op, impl, precision, hidden, sparsity, mean_us, file_bytes}.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from absl import logging

from android_bench.runner import RunSettings, run_on_host, runner_binary
from core.errors import UserError
from core.keras_env import keras

OPS = ("sparse_gru",)


def gru_layer_model(hidden: int, steps: int, unroll: bool) -> keras.Model:
    """The benchmarked layer alone: [1, steps, hidden] -> last state [1, hidden]."""
    inputs = keras.Input((steps, hidden), batch_size=1)
    return keras.Model(inputs, keras.layers.GRU(hidden, unroll=unroll, name="gru_1")(inputs))


def prune_by_magnitude(model: keras.Model, sparsity: float) -> None:
    """Zero the smallest-magnitude fraction `sparsity` of each GRU kernel."""
    layer = model.get_layer("gru_1")
    for weight in (layer.cell.kernel, layer.cell.recurrent_kernel):
        values = weight.numpy()
        if sparsity > 0:
            cut = np.quantile(np.abs(values), sparsity)
            values[np.abs(values) <= cut] = 0.0
        weight.assign(values)


def _measure(flatbuffer: bytes, folder: Path, name: str, settings: RunSettings) -> dict:
    path = folder / f"{name}.tflite"
    path.write_bytes(flatbuffer)
    document = run_on_host(runner_binary(), path, 1, settings)
    return {"mean_us": document["steady_state"]["mean_us"], "file_bytes": len(flatbuffer)}


def bench_sparse_gru(hiddens: list[int], sparsities: list[float], steps: int,
                     settings: RunSettings) -> list[dict]:
    from tflite.convert import convert_model
    from tflite.ops.sparse_gru_lowering import convert_with_sparse_gru

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgepipe-bench-ops-") as name:
        folder = Path(name)
        for hidden in hiddens:
            keras.utils.set_random_seed(hidden)
            rolled = gru_layer_model(hidden, steps, unroll=False)
            base_weights = rolled.get_weights()
            for impl, unroll in (("builtin_while", False), ("builtin_unrolled", True)):
                model = gru_layer_model(hidden, steps, unroll=unroll) if unroll else rolled
                model.set_weights(base_weights)
                try:
                    flatbuffer = convert_model(model, "none")
                except UserError as e:
                    logging.warning("%s hidden=%d does not convert: %s", impl, hidden, e)
                    continue
                logging.info("measuring %s hidden=%d", impl, hidden)
                rows.append({"op": "sparse_gru", "impl": impl, "precision": "float32",
                             "hidden": hidden, "sparsity": 0.0,
                             **_measure(flatbuffer, folder, f"{impl}_{hidden}", settings)})
            for sparsity in sparsities:
                rolled.set_weights(base_weights)
                prune_by_magnitude(rolled, sparsity)
                for precision in ("float32", "int8"):
                    logging.info("measuring sparse_gru %s hidden=%d sparsity=%.2f",
                                 precision, hidden, sparsity)
                    flatbuffer = convert_with_sparse_gru(rolled, precision=precision)
                    rows.append({"op": "sparse_gru", "impl": "sparse_gru", "precision": precision,
                                 "hidden": hidden, "sparsity": sparsity,
                                 **_measure(flatbuffer, folder,
                                            f"sparse_{precision}_{hidden}_{sparsity}", settings)})
    return rows


def format_table(rows: list[dict]) -> str:
    """Rows with the speed-up over the builtin WHILE loop of the same hidden size, the
    ratio of that speed-up to the ideal (the parameter reduction) and the size ratio."""
    builtin = {r["hidden"]: r for r in rows if r["impl"] == "builtin_while"}
    lines = ["| impl | precision | hidden | sparsity | mean µs | speed-up vs WHILE | "
             "of ideal | file KiB | smaller than WHILE file |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = builtin.get(r["hidden"])
        speedup = base["mean_us"] / r["mean_us"] if base else float("nan")
        ideal = 1.0 / max(1.0 - r["sparsity"], 1e-9)
        smaller = base["file_bytes"] / r["file_bytes"] if base else float("nan")
        lines.append(f"| {r['impl']} | {r['precision']} | {r['hidden']} | {r['sparsity']:.0%} | "
                     f"{r['mean_us']:.1f} | {speedup:.2f}x | {speedup / ideal:.0%} | "
                     f"{r['file_bytes'] / 1024:.1f} | {smaller:.2f}x |")
    return "\n".join(lines)


def bench_op(op: str, hiddens: list[int], sparsities: list[float], steps: int,
             settings: RunSettings) -> list[dict]:
    if op not in OPS:
        raise UserError(f"--op {op!r}: custom ops with a benchmark are {', '.join(OPS)}.")
    return bench_sparse_gru(hiddens, sparsities, steps, settings)

"""SparseSeparableConv against the builtin DEPTHWISE_CONV_2D + CONV_2D pair.

Workloads are the whole MobileNet v1 1.0 at 224x224x3 (all 13 blocks lowered) and
single depthwise-separable blocks at the four shapes MobileNet's blocks run at. The
1x1 weights are magnitude-pruned at random initialisation (no training: speed depends
on the sparsity pattern's density, not on what the weights learnt). Each workload and
sparsity is converted once with builtin ops and once lowered to the custom op, and all
are measured by the native runner in one run, in alternating rounds. Rows are {op,
impl, precision, workload, threads, sparsity, mean_us, file_bytes}.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from android_bench.runner import RunSettings
from core.keras_env import keras
from models.mobilenet import mobilenet_v1
from pipelines.benchmarks.bench_ops import measure_models, zero_smallest

OP = "sparse_separable"
# (spatial size, channels) of a block: 3x3 depthwise stride 1 + 1x1 to the same width.
BLOCKS = {f"block_{size}x{size}x{channels}": (size, channels)
          for size, channels in ((56, 128), (28, 256), (14, 512), (7, 1024))}
WHOLE_NETWORK = "mobilenet_v1_1.0_224"
WORKLOADS = (WHOLE_NETWORK, *BLOCKS)


def workload_model(workload: str) -> keras.Model:
    """The benchmarked network at batch 1, with the BatchNorms of a fresh model."""
    if workload == WHOLE_NETWORK:
        return mobilenet_v1((224, 224, 3), 1000, alpha=1.0, name="mobilenet")
    size, channels = BLOCKS[workload]
    inputs = keras.Input((size, size, channels), batch_size=1)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(x))
    x = keras.layers.Conv2D(channels, 1, use_bias=False)(x)
    outputs = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(x))
    return keras.Model(inputs, outputs, name=workload)


def prune_pointwise(model: keras.Model, sparsity: float) -> None:
    """Zero the smallest-magnitude fraction `sparsity` of every 1x1 kernel."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (1, 1):
            zero_smallest(layer.kernel, sparsity)


def _variants(workload: str, sparsities: list[float]) -> list[tuple[dict, bytes]]:
    """(row without the measurement, flatbuffer) of both implementations per sparsity."""
    from tflite.convert import convert_model
    from tflite.ops.sparse_separable_lowering import lower_separable_blocks

    keras.utils.set_random_seed(0)
    model = workload_model(workload)
    base = model.get_weights()
    variants = []
    for sparsity in sparsities:
        model.set_weights(base)
        prune_pointwise(model, sparsity)
        builtin = convert_model(model, "none")
        lowered, _ = lower_separable_blocks(builtin, precision="float32")
        for impl, flatbuffer in (("builtin", builtin), (OP, lowered)):
            variants.append(({"impl": impl, "precision": "float32", "sparsity": sparsity},
                             flatbuffer))
    return variants


def bench_separable(workloads: list[str], sparsities: list[float], threads: list[int],
                    settings: RunSettings, rounds: int,
                    on_rows: Callable[[list[dict]], None] = lambda rows: None) -> list[dict]:
    """The rows of every workload; on_rows(rows so far) after each workload."""
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgepipe-bench-separable-") as name:
        folder = Path(name)
        for workload in workloads:
            variants = [({"op": OP, **row, "workload": workload}, flatbuffer)
                        for row, flatbuffer in _variants(workload, sparsities)]
            rows += measure_models(variants, folder, workload, threads, rounds, settings)
            on_rows(rows)
    return rows


def format_table(rows: list[dict]) -> str:
    """Each row with its speed-up over the builtin ops of the same workload, sparsity
    and thread count, and over the dense (0%) builtin model."""
    builtin = {(r["workload"], r["threads"], r["sparsity"]): r for r in rows
               if r["impl"] == "builtin"}
    dense = {(r["workload"], r["threads"]): r for r in rows
             if r["impl"] == "builtin" and r["sparsity"] == 0}
    lines = ["| workload | impl | threads | sparsity | mean µs | vs builtin, same weights | "
             "vs dense builtin | file KiB |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        same = builtin.get((r["workload"], r["threads"], r["sparsity"]))
        base = dense.get((r["workload"], r["threads"]))
        lines.append(
            f"| {r['workload']} | {r['impl']} | {r['threads']} | {r['sparsity']:.0%} | "
            f"{r['mean_us']:.1f} | {_ratio(same, r)} | {_ratio(base, r)} | "
            f"{r['file_bytes'] / 1024:.1f} |")
    return "\n".join(lines)


def _ratio(base: dict | None, row: dict) -> str:
    return f"{base['mean_us'] / row['mean_us']:.2f}x" if base else ""

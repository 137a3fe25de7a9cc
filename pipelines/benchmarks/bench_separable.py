"""SparseSeparableConv against the builtin DEPTHWISE_CONV_2D + CONV_2D pair.

Workloads are the whole MobileNet v1 1.0 at 224x224x3 (all 13 blocks lowered) and
single depthwise-separable blocks at the four shapes MobileNet's blocks run at. The
1x1 weights are magnitude-pruned at random initialisation (no training: speed depends
on the sparsity pattern's density, not on what the weights learnt). Each workload and
sparsity is converted with builtin ops, lowered to the custom op, and lowered where
the pipeline's `auto` choice puts it, and all are measured by the native runner in one
run, in alternating rounds. Rows are {op, impl ("builtin", "sparse_separable" or
"auto"), precision, workload, threads, sparsity, mean_us, file_bytes}.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

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
PRECISIONS = ("float32", "dynamic_range", "int8")
# The op's pointwise weights per benchmarked precision.
OP_PRECISION = {"float32": "float32", "dynamic_range": "int8", "int8": "int8"}
CALIBRATION_SAMPLES = 8  # int8 activation ranges; their values do not change the speed


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


def _variants(workload: str, sparsities: list[float], precisions: list[str],
              threads: list[int]) -> list[tuple[dict, bytes]]:
    """(row without the measurement, flatbuffer) of each implementation per sparsity
    and precision: float32 and dynamic_range lower the converter's file of that
    quantization; int8's op (int8 weights, float activations: format 1 has no int8
    activations) lowers the float file and races the converter's full-int8 file.
    "auto" is the pipeline's measured choice on the converter's file (for int8, always
    that file: the op takes no int8 activations)."""
    from pipelines.lowering_choice import auto_separable
    from tflite.convert import convert_model
    from tflite.ops.sparse_separable_lowering import lower_separable_blocks

    keras.utils.set_random_seed(0)
    model = workload_model(workload)
    base = model.get_weights()
    samples = np.random.default_rng(0).uniform(
        -1, 1, (CALIBRATION_SAMPLES, *model.inputs[0].shape[1:])).astype(np.float32)
    variants = []
    for sparsity in sparsities:
        model.set_weights(base)
        prune_pointwise(model, sparsity)
        float_file = convert_model(model, "none")
        for precision in precisions:
            builtin = float_file if precision == "float32" else convert_model(
                model, precision, representative_data=samples)
            lowered, _ = lower_separable_blocks(builtin if precision != "int8" else float_file,
                                                precision=OP_PRECISION[precision])
            auto, _ = auto_separable(builtin, OP_PRECISION[precision], threads)
            for impl, flatbuffer in (("builtin", builtin), (OP, lowered), ("auto", auto)):
                variants.append(({"impl": impl, "precision": precision, "sparsity": sparsity},
                                 flatbuffer))
    return variants


def bench_separable(workloads: list[str], sparsities: list[float], precisions: list[str],
                    threads: list[int], settings: RunSettings, rounds: int,
                    on_rows: Callable[[list[dict]], None] = lambda rows: None) -> list[dict]:
    """The rows of every workload; on_rows(rows so far) after each workload."""
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgepipe-bench-separable-") as name:
        folder = Path(name)
        for workload in workloads:
            variants = [({"op": OP, **row, "workload": workload}, flatbuffer)
                        for row, flatbuffer in _variants(workload, sparsities, precisions,
                                                                threads)]
            rows += measure_models(variants, folder, workload, threads, rounds, settings)
            on_rows(rows)
    return rows


def format_table(rows: list[dict]) -> str:
    """Each row with its speed-up over the builtin ops of the same workload, precision,
    sparsity and thread count, and over the dense (0%) builtin model."""
    builtin = {(r["workload"], r["precision"], r["threads"], r["sparsity"]): r for r in rows
               if r["impl"] == "builtin"}
    dense = {(r["workload"], r["precision"], r["threads"]): r for r in rows
             if r["impl"] == "builtin" and r["sparsity"] == 0}
    lines = ["| workload | precision | impl | threads | sparsity | mean µs | vs builtin, same "
             "weights | vs dense builtin | file KiB |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        same = builtin.get((r["workload"], r["precision"], r["threads"], r["sparsity"]))
        base = dense.get((r["workload"], r["precision"], r["threads"]))
        lines.append(
            f"| {r['workload']} | {r['precision']} | {r['impl']} | {r['threads']} | "
            f"{r['sparsity']:.0%} | {r['mean_us']:.1f} | {_ratio(same, r)} | {_ratio(base, r)} | "
            f"{r['file_bytes'] / 1024:.1f} |")
    return "\n".join(lines)


def _ratio(base: dict | None, row: dict) -> str:
    return f"{base['mean_us'] / row['mean_us']:.2f}x" if base else ""

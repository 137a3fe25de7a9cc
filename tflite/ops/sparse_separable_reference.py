"""NumPy reference of the SparseSeparableConv custom op (contract: tflite/ops/SPARSE_SEPARABLE.md).

It computes from the arrays exactly as the op stores them (CSR with 1x1 or 4x1
blocks, or dense; float32 or int8 with per-output-channel scales), so tests
compare the kernel and the lowering with the stored model, not with the Keras
weights it came from. Accumulation is float64: the exact math that the kernel's
float32 result is compared with.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ACTIVATIONS = {
    "none": lambda v: v,
    "relu": lambda v: np.maximum(v, 0.0),
    "relu6": lambda v: np.minimum(np.maximum(v, 0.0), 6.0),
}


@dataclass
class StoredPointwise:
    """The pointwise weights W [Cout, Cin] as the op stores them."""

    values: np.ndarray  # float32 or int8: csr [nnz_blocks * block], dense [Cout, Cin]
    col_indices: np.ndarray | None = None  # uint16 [nnz_blocks], csr only
    row_ptr: np.ndarray | None = None      # int32 [Cout / block + 1], csr only
    scales: np.ndarray | None = None       # float32 [Cout], int8 only
    block: int = 1                         # csr: 1 or 4 output channels per stored block


def dequantize(pw: StoredPointwise, out_channels: int, in_channels: int) -> np.ndarray:
    """The float32 [Cout, Cin] matrix the stored arrays stand for."""
    values = pw.values.astype(np.float32)
    if pw.row_ptr is None:
        dense = values.reshape(out_channels, in_channels)
    else:
        dense = np.zeros((out_channels, in_channels), np.float32)
        blocks = values.reshape(-1, pw.block)  # one row of `block` output channels per block
        for row in range(out_channels // pw.block):
            span = slice(int(pw.row_ptr[row]), int(pw.row_ptr[row + 1]))
            channels = slice(row * pw.block, (row + 1) * pw.block)
            dense[channels, pw.col_indices[span].astype(np.int64)] = blocks[span].T
    if pw.scales is not None:
        dense = dense * pw.scales.astype(np.float32)[:, None]
    return dense.astype(np.float32)


def output_size(size: int, kernel_size: int, stride: int, padding: str) -> tuple[int, int]:
    """(output size, padding before) along one dimension, TensorFlow's rule."""
    if padding == "valid":
        return math.ceil((size - kernel_size + 1) / stride), 0
    out = math.ceil(size / stride)
    return out, max((out - 1) * stride + kernel_size - size, 0) // 2


def depthwise(x_nhwc: np.ndarray, weights: np.ndarray, bias: np.ndarray, *, stride: int,
              padding: str, activation: str) -> np.ndarray:
    """act_dw(dw_bias + KxK depthwise conv): float64 [B, Ho, Wo, C]."""
    k = weights.shape[0]
    batch, height, width, channels = x_nhwc.shape
    out_h, top = output_size(height, k, stride, padding)
    out_w, left = output_size(width, k, stride, padding)
    # Zeros around the image, as far as the last output position's taps reach.
    padded = np.zeros((batch, max(top + height, (out_h - 1) * stride + k),
                       max(left + width, (out_w - 1) * stride + k), channels))
    padded[:, top:top + height, left:left + width] = x_nhwc
    acc = np.zeros((batch, out_h, out_w, channels)) + np.asarray(bias, np.float64)
    for i in range(k):
        for j in range(k):
            taps = padded[:, i:i + stride * out_h:stride, j:j + stride * out_w:stride]
            acc += taps * weights[i, j].astype(np.float64)
    return ACTIVATIONS[activation](acc)


def sparse_separable_conv(x: np.ndarray, dw_weights: np.ndarray, dw_bias: np.ndarray,
                          pw: StoredPointwise, pw_bias: np.ndarray, *, stride: int, padding: str,
                          dw_activation: str, pw_activation: str, input_layout: str = "nhwc",
                          output_layout: str = "nhwc") -> np.ndarray:
    """Runs the op on x ([B, H, W, Cin] or [B, Cin, H, W]); returns float32 in output_layout."""
    x_nhwc = x.transpose(0, 2, 3, 1) if input_layout == "chw" else x
    d = depthwise(x_nhwc.astype(np.float64), dw_weights, dw_bias, stride=stride,
                  padding=padding, activation=dw_activation)
    w = dequantize(pw, pw_bias.shape[0], dw_weights.shape[2]).astype(np.float64)
    out = ACTIVATIONS[pw_activation](d @ w.T + np.asarray(pw_bias, np.float64))
    return (out.transpose(0, 3, 1, 2) if output_layout == "chw" else out).astype(np.float32)


def unpack_inputs(constants: list[np.ndarray], options: dict
                  ) -> tuple[np.ndarray, np.ndarray, StoredPointwise, np.ndarray]:
    """(dw_weights, dw_bias, pointwise, pw_bias) from the op's inputs after x.

    Which inputs are present follows from `format` and `precision` (absent ones are
    left out of the op, not written as -1).
    """
    csr, int8 = options["format"] == "csr", options["precision"] == "int8"
    present = [True, True, True, csr, csr, int8, True]  # dw_weights .. pw_bias
    if len(constants) != sum(present):
        raise ValueError(f"{len(constants)} constant inputs, but {options['format']} "
                         f"{options['precision']} has {sum(present)}")
    given = iter(constants)
    dw_weights, dw_bias, values, cols, row_ptr, scales, pw_bias = (
        next(given) if p else None for p in present)
    return dw_weights, dw_bias, StoredPointwise(values, cols, row_ptr, scales,
                                                options["block"]), pw_bias


def run_op(x: np.ndarray, constants: list[np.ndarray], options: dict) -> np.ndarray:
    """The op as it appears in a model: its constant inputs (after x) and its options."""
    dw_weights, dw_bias, pw, pw_bias = unpack_inputs(constants, options)
    return sparse_separable_conv(
        x, dw_weights, dw_bias, pw, pw_bias, stride=options["stride"], padding=options["padding"],
        dw_activation=options["dw_activation"], pw_activation=options["pw_activation"],
        input_layout=options["input_layout"], output_layout=options["output_layout"])

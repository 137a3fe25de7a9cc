"""NumPy reference of the SparseGRU custom op (contract: tflite/ops/SPARSE_GRU.md).

It computes from the arrays exactly as the op stores them (CSR or dense, float32
or int8 with per-row scales), so the tests compare the kernel with the stored
model rather than with the Keras weights it came from.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class StoredMatrix:
    """One of W ([3U, F]) or R ([3U, U]) as the op stores it."""

    values: np.ndarray                      # float32 or int8: [nnz] (csr) or [rows, cols] (dense)
    col_indices: np.ndarray | None = None   # uint16 [nnz], csr only
    row_ptr: np.ndarray | None = None       # int32 [rows + 1], csr only
    scales: np.ndarray | None = None        # float32 [rows], int8 only


def dequantize(matrix: StoredMatrix, rows: int, cols: int) -> np.ndarray:
    """The float32 [rows, cols] matrix the stored arrays stand for."""
    values = matrix.values.astype(np.float32)
    if matrix.row_ptr is None:
        dense = values.reshape(rows, cols)
        if matrix.scales is not None:
            dense = dense * matrix.scales.astype(np.float32)[:, None]
        return dense.astype(np.float32)
    dense = np.zeros((rows, cols), np.float32)
    for row in range(rows):
        start, end = int(matrix.row_ptr[row]), int(matrix.row_ptr[row + 1])
        scale = np.float32(1) if matrix.scales is None else np.float32(matrix.scales[row])
        dense[row, matrix.col_indices[start:end].astype(np.int64)] = values[start:end] * scale
    return dense


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def sparse_gru(x: np.ndarray, w: StoredMatrix, r: StoredMatrix, bias: np.ndarray, *,
               units: int, reset_after: bool, return_sequences: bool) -> np.ndarray:
    """Runs the op on x [B, T, F]; returns [B, T, U] or [B, U] (float32).

    Accumulates in float64 so the reference is the exact math the kernel's
    float32 result is compared with.
    """
    batch, steps, features = x.shape
    w_dense = dequantize(w, 3 * units, features).astype(np.float64)
    r_dense = dequantize(r, 3 * units, units).astype(np.float64)
    bias = np.asarray(bias, np.float64)
    b_x = bias[0] if reset_after else bias
    b_h = bias[1] if reset_after else np.zeros(3 * units)
    u = units
    gx_all = x.astype(np.float64) @ w_dense.T + b_x          # [B, T, 3U]
    h = np.zeros((batch, u))
    outputs = np.zeros((batch, steps, u))
    for t in range(steps):
        gx = gx_all[:, t]
        if reset_after:
            gh = h @ r_dense.T + b_h
            z = _sigmoid(gx[:, :u] + gh[:, :u])
            rr = _sigmoid(gx[:, u:2 * u] + gh[:, u:2 * u])
            n = np.tanh(gx[:, 2 * u:] + rr * gh[:, 2 * u:])
        else:
            z = _sigmoid(gx[:, :u] + h @ r_dense[:u].T)
            rr = _sigmoid(gx[:, u:2 * u] + h @ r_dense[u:2 * u].T)
            n = np.tanh(gx[:, 2 * u:] + (rr * h) @ r_dense[2 * u:].T)
        h = z * h + (1 - z) * n
        outputs[:, t] = h
    return (outputs if return_sequences else h).astype(np.float32)

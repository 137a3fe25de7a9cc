"""The SparseSeparableConv kernel's fuzz target (tflite/ops/fuzz/sparse_separable_fuzz.cc):
a fixed, seeded slice of libFuzzer with AddressSanitizer and UBSan over the
options parser, the checks and, for what they accept, the computation, from a
corpus of valid ops of every format, precision, layout and block."""
from __future__ import annotations

import struct

import numpy as np
from flatbuffers import flexbuffers

from fixtures.fuzzing import REPO, SPARSE_SEPARABLE_SOURCES, fuzz_arrays, run_libfuzzer

# A fixed, seeded slice: about 15 s on the build machines.
FUZZ_RUNS = 200_000


def seed_arrays(rng: np.random.Generator, *, fmt: str, block: int, precision: str, layout: str,
                cin: int = 3, cout: int = 8, k: int = 3, h: int = 5, w: int = 4) -> list:
    """x and the op's inputs in the contract's slots (None where absent)."""
    x_shape = (1, cin, h, w) if layout == "chw" else (1, h, w, cin)
    dense = rng.uniform(-1, 1, (cout, cin)).astype(np.float32)
    dense[rng.random((cout // block, cin)).repeat(block, axis=0) < 0.5] = 0
    values, cols, row_ptr, scales = dense, None, None, None
    if precision == "int8":
        scales = (np.abs(dense).max(axis=1) / 127 + 0.01).astype(np.float32)
        values = np.round(dense / scales[:, None]).astype(np.int8)
    if fmt == "csr":
        kept = [(r, c) for r in range(cout // block) for c in range(cin)
                if dense[r * block:(r + 1) * block, c].any()]
        cols = np.array([c for _, c in kept], np.uint16)
        row_ptr = np.searchsorted([r for r, _ in kept], np.arange(cout // block + 1)).astype(np.int32)
        values = np.array([values[r * block + j, c] for r, c in kept for j in range(block)],
                          values.dtype)
    return [rng.uniform(-1, 1, x_shape).astype(np.float32),
            rng.uniform(-1, 1, (k, k, cin)).astype(np.float32),
            rng.uniform(-1, 1, cin).astype(np.float32), values, cols, row_ptr, scales,
            rng.uniform(-1, 1, cout).astype(np.float32)]


def fuzz_seed(options: dict, arrays: list) -> bytes:
    """One op in the fuzz target's input layout (absent inputs left out)."""
    encoded = bytes(flexbuffers.Dumps(options))
    return struct.pack("<H", len(encoded)) + encoded + fuzz_arrays(arrays) + b"\x01"


def test_fuzz_options_and_validation(tmp_path):
    """libFuzzer with AddressSanitizer and UBSan for a bounded time: no finding."""
    rng = np.random.default_rng(0)
    seeds = []
    for i, (fmt, block, precision) in enumerate(
            (f, b, p) for f, b in (("dense", 1), ("csr", 1), ("csr", 4))
            for p in ("float32", "int8")):
        layout = ("nhwc", "chw")[i % 2]
        options = {"version": 1, "kernel_size": 3 + 2 * (i % 2), "stride": 1 + i // 3,
                   "padding": ("same", "valid")[i // 2 % 2], "in_channels": 3,
                   "out_channels": 8, "dw_activation": "relu", "pw_activation": "relu6",
                   "precision": precision, "format": fmt, "block": block,
                   "input_layout": layout, "output_layout": ("chw", "nhwc")[i // 3]}
        seeds.append(fuzz_seed(options, seed_arrays(
            rng, fmt=fmt, block=block, precision=precision, layout=layout,
            k=options["kernel_size"], h=6, w=5)))
    run_libfuzzer([REPO / "tflite" / "ops" / "fuzz" / "sparse_separable_fuzz.cc",
                   *SPARSE_SEPARABLE_SOURCES], seeds, tmp_path, runs=FUZZ_RUNS, max_len=4096)

"""Run .tflite models from Python over the LiteRT interpreter (ai-edge-litert).

Callers (validation, host benchmark) see float in, float out and any batch
size, whatever the model's fixed batch and integer I/O types are. A runner on
the LiteRT C API (for models with edgepipe's custom ops) is meant to offer the
same members, described by `ModelRunner`.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from core.errors import UserError
from tflite.inspect import inspect_model

_INTEGER_IO = (np.int8, np.uint8, np.int16)


class ModelRunner(Protocol):
    """What the validation and benchmark stages need from a runtime."""

    input_details: list[dict[str, Any]]
    output_details: list[dict[str, Any]]

    def predict(self, x: np.ndarray) -> np.ndarray: ...
    def set_example_input(self, seed: int = 0) -> None: ...
    def invoke_timed(self) -> float: ...


class TfliteRunner:
    """A single-input, single-output .tflite model on the LiteRT Python interpreter."""

    def __init__(self, model: str | os.PathLike | bytes, num_threads: int = 1) -> None:
        self._content = _load(model)  # the interpreter reads from it; keep it alive
        self._label = "<bytes>" if isinstance(model, (bytes, bytearray)) else str(model)
        try:
            self._interpreter = Interpreter(model_content=self._content, num_threads=num_threads)
            self._interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise self._load_error(exc) from None
        self.input_details: list[dict[str, Any]] = self._interpreter.get_input_details()
        self.output_details: list[dict[str, Any]] = self._interpreter.get_output_details()
        if len(self.input_details) != 1 or len(self.output_details) != 1:
            raise UserError(
                f"{self._label} has {len(self.input_details)} inputs and "
                f"{len(self.output_details)} outputs: edgepipe runs single-input, "
                "single-output models only"
            )

    @property
    def batch_size(self) -> int:
        """The model's fixed batch (its first input dimension)."""
        return int(self.input_details[0]["shape"][0])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Run every sample of `x` (any count) and return float outputs."""
        return predict_batched(x, self.input_details[0], self.output_details[0],
                               self.batch_size, self._label, self._run_batch)

    def _run_batch(self, model_input: np.ndarray) -> np.ndarray:
        self._interpreter.set_tensor(self.input_details[0]["index"], model_input)
        self._invoke()
        return self._interpreter.get_tensor(self.output_details[0]["index"])

    def set_example_input(self, seed: int = 0) -> None:
        """Fill the input with random values of its dtype, for benchmarking."""
        inp = self.input_details[0]
        value = example_input(tuple(inp["shape"]), np.dtype(inp["dtype"]), seed)
        self._interpreter.set_tensor(inp["index"], value)

    def invoke_timed(self) -> float:
        """Run one inference on the current input; return its wall time in seconds."""
        start = time.perf_counter()
        self._invoke()
        return time.perf_counter() - start

    def _invoke(self) -> None:
        try:
            self._interpreter.invoke()
        except RuntimeError as exc:
            raise self._load_error(exc) from None

    def _load_error(self, exc: Exception) -> UserError:
        custom = inspect_model(self._content).custom_ops
        if custom:
            return UserError(
                f"{self._label} uses custom op(s) {', '.join(custom)} that the stock LiteRT "
                "interpreter has no kernel for: run it with edgepipe's runtime that registers "
                "those custom ops"
            )
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return UserError(f"LiteRT cannot run {self._label}: {first_line}; convert the model again")


def predict_batched(x: np.ndarray, inp: dict[str, Any], out: dict[str, Any], batch: int,
                    label: str, run_batch: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Feed `x` (any number of samples) through a fixed-batch model in chunks of
    `batch`, padding the last chunk, with int8 inputs quantized and outputs
    dequantized, so callers always get float outputs. `run_batch` runs one chunk
    (already in the model's input type) and returns the raw output."""
    x = np.asarray(x)
    sample_shape = tuple(int(d) for d in inp["shape"][1:])
    if tuple(x.shape[1:]) != sample_shape:
        raise UserError(
            f"input shape {x.shape} does not fit {label}, which expects "
            f"(samples, {', '.join(map(str, sample_shape))})"
        )
    results = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        count = len(chunk)
        if count < batch:  # pad the last chunk; the padded rows are dropped below
            padding = np.zeros((batch - count, *sample_shape), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, padding])
        results.append(_to_float(run_batch(_to_model_input(chunk, inp)), out)[:count])
    if not results:
        return np.zeros((0, *out["shape"][1:]), dtype=np.float32)
    return np.concatenate(results)


def example_input(shape: tuple[int, ...], dtype: np.dtype, seed: int = 0) -> np.ndarray:
    """Random values of the input's dtype for benchmarking; integer inputs get 0 or 1,
    which stay valid as token indices too."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.floating):
        return rng.random(shape, dtype=np.float32).astype(dtype)
    if dtype == np.bool_:
        return np.zeros(shape, dtype)
    return rng.integers(0, 2, size=shape).astype(dtype)


def _load(model: str | os.PathLike | bytes) -> bytes:
    """The model's bytes, refusing anything without the TFLite file identifier."""
    if isinstance(model, (bytes, bytearray)):
        content, label = bytes(model), "<bytes>"
    else:
        path = Path(model)
        if not path.is_file():
            raise UserError(f"model file not found: {path}; check the path")
        content, label = path.read_bytes(), str(path)
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise UserError(
            f"not a TFLite flatbuffer: {label} lacks the 'TFL3' file identifier; "
            "pass a .tflite file written by the converter"
        )
    return content


def _to_model_input(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Quantize float input for integer-input models; otherwise just cast."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if dtype.type in _INTEGER_IO and scale and np.issubdtype(x.dtype, np.floating):
        info = np.iinfo(dtype)
        q = np.round(x / scale + zero_point)
        return np.clip(q, info.min, info.max).astype(dtype)
    return x.astype(dtype, copy=False)


def _to_float(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Dequantize integer outputs so callers always get float values."""
    scale, zero_point = detail["quantization"]
    if y.dtype.type in _INTEGER_IO and scale:
        return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)
    return y.astype(np.float32, copy=False)

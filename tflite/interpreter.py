"""Run .tflite models from Python over the LiteRT interpreter (ai-edge-litert).

Callers (validation, host benchmark) see float in, float out and any batch
size, whatever the model's fixed batch and integer I/O types are. The runner on
edgepipe's native runtime (`tflite.runtime.binding.LiteRtRunner`, which registers
the custom op kernels) offers the same members, `tflite.runner_io.ModelRunner`.
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from core.errors import UserError
from tflite.inspect import inspect_model
from tflite.runner_io import example_input, load_model, model_label, predict_batched


class TfliteRunner:
    """A single-input, single-output .tflite model on the LiteRT Python interpreter."""

    def __init__(self, model: str | os.PathLike | bytes, num_threads: int = 1) -> None:
        self._content = load_model(model)  # the interpreter reads from it; keep it alive
        self._label = model_label(model)
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

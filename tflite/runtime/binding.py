"""Run .tflite models through edgepipe's native runtime over the LiteRT C API.

`LiteRtRunner` offers the members of `tflite.interpreter.TfliteRunner` (the
`tflite.runner_io.ModelRunner` protocol): validation and the host benchmark can
use either. It calls `libedgepipe_runtime.so` (tflite/runtime/edgepipe_runtime.h)
through ctypes; unlike the ai_edge_litert Interpreter, that runtime registers
edgepipe's custom op kernels and refuses, before compiling, a model whose
custom ops it cannot run. Input and output arrays are views of the runtime's
own 64-byte aligned memory, so a call costs one ctypes round trip.

The runtime runs in this process: LiteRT itself can crash (SIGSEGV) on a damaged
model, so models edgepipe did not make run in `tflite.runtime.isolated`.

The library is built by scripts/setup.sh (`bazel build
//tflite/runtime:libedgepipe_runtime.so`) and copied to <repo>/.native/;
EDGEPIPE_RUNTIME_LIB overrides the path.
"""
from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from tflite.runner_io import (example_input, input_layer_strings, load_model, model_label,
                              predict_batched)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_LIBRARY = REPO_ROOT / ".native" / "libedgepipe_runtime.so"
ACCELERATORS = {"cpu": 0, "gpu": 1}
_ERROR_BYTES = 4096
_MAX_RANK = 8
_UINT64_MAX = (1 << 64) - 1

# LiteRT/TFLite element type numbers -> numpy dtypes.
_DTYPES = {
    1: np.float32, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_,
    7: np.int16, 9: np.int8, 10: np.float16,
}

_library: ctypes.CDLL | None = None


def library_path() -> Path:
    """EDGEPIPE_RUNTIME_LIB when set (and not empty), else the setup's build."""
    return Path(os.environ.get("EDGEPIPE_RUNTIME_LIB") or DEFAULT_LIBRARY)


def load_library() -> ctypes.CDLL:
    """The native runtime, loaded once; a clear UserError when it is not built."""
    global _library
    if _library is not None:
        return _library
    path = library_path()
    if not path.is_file():
        raise UserError(
            f"edgepipe's native LiteRT runtime is not built: {path} is missing; run "
            "scripts/setup.sh (or `make setup`), which builds it with "
            "`bazel build //tflite/runtime:libedgepipe_runtime.so` and copies it there"
        )
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise UserError(f"cannot load {path}: {exc}; rebuild it with scripts/setup.sh") from None
    size_t, c_int, ptr = ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p
    lib.edgepipe_runtime_open.restype = ptr
    lib.edgepipe_runtime_open.argtypes = [
        ctypes.c_char_p, ctypes.c_char_p, size_t, c_int, c_int,  # path, data, size, threads, accel
        ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint64,       # input_layer(_shape), max bytes
        ctypes.c_char_p, size_t]
    lib.edgepipe_runtime_close.restype = None
    lib.edgepipe_runtime_close.argtypes = [ptr]
    lib.edgepipe_runtime_num_tensors.restype = c_int
    lib.edgepipe_runtime_num_tensors.argtypes = [ptr, c_int]
    lib.edgepipe_runtime_tensor_info.restype = c_int
    lib.edgepipe_runtime_tensor_info.argtypes = [
        ptr, c_int, c_int, ctypes.POINTER(c_int), ctypes.POINTER(c_int),
        ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(size_t),
        ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ptr)]
    lib.edgepipe_runtime_run.restype = c_int
    lib.edgepipe_runtime_run.argtypes = [ptr, ctypes.c_char_p, size_t]
    lib.edgepipe_runtime_times.restype = None
    lib.edgepipe_runtime_times.argtypes = [ptr] + [ctypes.POINTER(ctypes.c_double)] * 3
    _library = lib
    return lib


class LiteRtRunner:
    """A single-input, single-output .tflite model on edgepipe's native runtime."""

    def __init__(self, model: str | os.PathLike | bytes, num_threads: int = 1,
                 accelerator: str = "cpu",
                 input_shapes: Mapping[str, Sequence[int]] | None = None,
                 max_tensor_bytes: int = 0) -> None:
        """`input_shapes` chooses the shapes of dynamic inputs by name (every other
        dynamic dimension, such as the batch of a model converted with
        `from_keras_model`, becomes 1); `max_tensor_bytes` caps the model's
        activation memory (0: the runtime's default)."""
        if accelerator not in ACCELERATORS:
            raise UserError(f"accelerator must be 'cpu' or 'gpu', not {accelerator!r}")
        if not 0 <= max_tensor_bytes <= _UINT64_MAX:
            raise UserError(f"max_tensor_bytes must be 0 (the runtime's default) or a positive "
                            f"byte count, got {max_tensor_bytes}")
        input_layer, input_layer_shape = input_layer_strings(input_shapes)
        lib = load_library()
        content = load_model(model)
        self._label = model_label(model)
        self._lib = lib
        err = ctypes.create_string_buffer(_ERROR_BYTES)
        handle = lib.edgepipe_runtime_open(None, content, len(content), int(num_threads),
                                           ACCELERATORS[accelerator], input_layer.encode(),
                                           input_layer_shape.encode(), int(max_tensor_bytes),
                                           err, _ERROR_BYTES)
        if not handle:
            raise UserError(f"cannot run {self._label}: {err.value.decode(errors='replace')}")
        self._handle = ctypes.c_void_p(handle)
        self._err = err
        self.inputs = self._tensors(0)
        self.outputs = self._tensors(1)
        self.input_details = [d for d, _ in self.inputs]
        self.output_details = [d for d, _ in self.outputs]
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise UserError(
                f"{self._label} has {len(self.inputs)} inputs and {len(self.outputs)} outputs: "
                "edgepipe runs single-input, single-output models only")
        in_q, out_q = _io_quantization(content)
        self.input_details[0]["quantization"] = in_q
        self.output_details[0]["quantization"] = out_q

    def _tensors(self, is_output: int) -> list[tuple[dict[str, Any], np.ndarray]]:
        result = []
        for index in range(self._lib.edgepipe_runtime_num_tensors(self._handle, is_output)):
            element_type, rank = ctypes.c_int(), ctypes.c_int()
            dims = (ctypes.c_int32 * _MAX_RANK)()
            nbytes, name, data = ctypes.c_size_t(), ctypes.c_char_p(), ctypes.c_void_p()
            if self._lib.edgepipe_runtime_tensor_info(
                    self._handle, is_output, index, ctypes.byref(element_type),
                    ctypes.byref(rank), dims, ctypes.byref(nbytes), ctypes.byref(name),
                    ctypes.byref(data)) != 0:
                raise UserError(f"cannot read tensor {index} of {self._label}")
            dtype = _DTYPES.get(element_type.value)
            if dtype is None:
                raise UserError(f"{self._label}: tensor {index} has an unsupported element type "
                                f"({element_type.value})")
            shape = tuple(dims[i] for i in range(rank.value))
            raw = (ctypes.c_uint8 * nbytes.value).from_address(data.value)
            array = np.frombuffer(raw, dtype=dtype).reshape(shape)
            detail = {"name": (name.value or b"").decode(errors="replace"), "index": index,
                      "shape": np.array(shape, dtype=np.int32), "dtype": dtype,
                      "quantization": (0.0, 0)}
            result.append((detail, array))
        return result

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle:
            self._lib.edgepipe_runtime_close(handle)
            self._handle = None

    @property
    def batch_size(self) -> int:
        """The batch the model runs at (its first input dimension, after resizing)."""
        return int(self.input_details[0]["shape"][0])

    @property
    def times_us(self) -> dict[str, float]:
        """Microseconds the runtime spent loading, checking custom ops and compiling."""
        load, check, compile_ = ctypes.c_double(), ctypes.c_double(), ctypes.c_double()
        self._lib.edgepipe_runtime_times(self._handle, ctypes.byref(load), ctypes.byref(check),
                                         ctypes.byref(compile_))
        return {"load_us": load.value, "check_us": check.value, "compile_us": compile_.value}

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Run every sample of `x` (any count) and return float outputs."""
        return predict_batched(x, self.inputs[0][0], self.outputs[0][0], self.batch_size,
                               self._label, self._run_batch)

    def _run_batch(self, model_input: np.ndarray) -> np.ndarray:
        self.inputs[0][1][...] = model_input
        self._invoke()
        return self.outputs[0][1].copy()

    def set_input(self, value: np.ndarray) -> None:
        """Copy a raw value (the model's own dtype and shape) into the input."""
        detail, array = self.inputs[0]
        value = np.asarray(value)
        if value.shape != array.shape or value.dtype != array.dtype:
            raise UserError(f"input must be {array.dtype}{list(array.shape)}, got "
                            f"{value.dtype}{list(value.shape)}")
        array[...] = value

    def output(self) -> np.ndarray:
        """A copy of the raw output (the model's own dtype)."""
        return self.outputs[0][1].copy()

    def set_example_input(self, seed: int = 0) -> None:
        """Fill the input with random values of its dtype, for benchmarking."""
        array = self.inputs[0][1]
        array[...] = example_input(array.shape, array.dtype, seed)

    def invoke_timed(self) -> float:
        """Run one inference on the current input; return its wall time in seconds."""
        start = time.perf_counter()
        self._invoke()
        return time.perf_counter() - start

    def _invoke(self) -> None:
        if self._lib.edgepipe_runtime_run(self._handle, self._err, _ERROR_BYTES) != 0:
            raise UserError(f"cannot run {self._label}: "
                            f"{self._err.value.decode(errors='replace')}")


def _io_quantization(content: bytes) -> tuple[tuple[float, int], tuple[float, int]]:
    """(scale, zero_point) of the main subgraph's single input and output, (0.0, 0)
    when not quantized (as the Interpreter's details report it)."""
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.Model.GetRootAs(content, 0).Subgraphs(0)

    def of(tensor_index: int) -> tuple[float, int]:
        q = graph.Tensors(tensor_index).Quantization()
        if q is None or q.ScaleLength() != 1:
            return (0.0, 0)
        return (float(q.Scale(0)), int(q.ZeroPoint(0)) if q.ZeroPointLength() else 0)

    return of(graph.Inputs(0)), of(graph.Outputs(0))

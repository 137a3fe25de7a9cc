"""edgepipe's native runtime in a worker process, for models edgepipe did not make.

LiteRT itself crashes (SIGSEGV) on some damaged builtin ops, while compiling or
at run, and `binding.LiteRtRunner` runs in this process, so such a model would
kill Python. `IsolatedRunner` opens the model with LiteRtRunner in a worker
process (`python -m tflite.runtime.worker`) and forwards every call over a pipe:
a crash becomes one UserError naming the model, the signal and whether LiteRT
was compiling or running it. The pipeline's own models stay in-process (a worker
costs a process start and a copy of every array).
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.signals import signal_exit_message
from tflite.runner_io import model_label

# The folder `tflite` is imported from, for the worker's sys.path (also under Bazel).
IMPORT_ROOT = Path(__file__).absolute().parents[2]
# A worker whose request pipe is closed exits at once; one stuck in native code is killed.
CLOSE_TIMEOUT_S = 10.0


class IsolatedRunner:
    """A LiteRtRunner in a worker process, with the members callers use
    (`tflite.runner_io.ModelRunner`, plus set_input, output and times_us)."""

    def __init__(self, model: str | os.PathLike | bytes, num_threads: int = 1,
                 accelerator: str = "cpu",
                 input_shapes: Mapping[str, Sequence[int]] | None = None,
                 max_tensor_bytes: int = 0) -> None:
        """The arguments of LiteRtRunner; the worker reads a model path itself."""
        self._label = model_label(model)
        self._failure: UserError | None = None
        self._process: subprocess.Popen | None = None
        self._start()
        source = bytes(model) if isinstance(model, (bytes, bytearray)) else os.fspath(model)
        options = {"num_threads": num_threads, "accelerator": accelerator,
                   "input_shapes": None if input_shapes is None
                   else {name: tuple(shape) for name, shape in input_shapes.items()},
                   "max_tensor_bytes": max_tensor_bytes}
        try:
            details = self._call("open", source, options, doing="compiling")
        except BaseException:
            self.close()
            raise
        self.input_details: list[dict[str, Any]] = details["input_details"]
        self.output_details: list[dict[str, Any]] = details["output_details"]

    def _start(self) -> None:
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(IMPORT_ROOT), env.get("PYTHONPATH")) if p)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tflite.runtime.worker", str(request_read),
                 str(reply_write)],
                pass_fds=(request_read, reply_write), env=env, stdin=subprocess.DEVNULL)
        except OSError as error:
            for fd in (request_write, reply_read):
                os.close(fd)
            raise UserError(f"cannot start a worker process for {self._label}: {error}") from None
        finally:
            # The worker holds these ends now; with ours closed, its death reads as EOF.
            os.close(request_read)
            os.close(reply_write)
        self._requests = Connection(request_write, readable=False)
        self._replies = Connection(reply_read, writable=False)

    def _call(self, method: str, *args: Any, doing: str = "running") -> Any:
        """One request and its answer; the worker's death becomes the UserError."""
        if self._failure is not None:
            raise self._failure
        if self._process is None:
            raise RuntimeError(f"the runner of {self._label} is closed")
        try:
            self._requests.send((method, args))
            status, value = self._replies.recv()
        except (EOFError, OSError):  # the worker is gone (a broken pipe is an OSError)
            self._failure = UserError(self._exit_message(doing))
            raise self._failure from None
        if status == "ok":
            return value
        if status == "error":
            raise UserError(value)
        raise RuntimeError(f"edgepipe's runtime worker failed on {self._label}:\n{value}")

    def _exit_message(self, doing: str) -> str:
        code = self._process.wait()
        self.close()
        if code < 0:
            return signal_exit_message("the LiteRT runtime", -code, f"while {doing} {self._label}")
        return (f"edgepipe's runtime worker exited with status {code} while {doing} "
                f"{self._label}; its own message is on stderr above")

    def close(self) -> None:
        """End the worker: it exits when its request pipe closes."""
        process, self._process = getattr(self, "_process", None), None
        if process is None:
            return
        self._requests.close()
        self._replies.close()
        try:
            process.wait(timeout=CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> IsolatedRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    @property
    def batch_size(self) -> int:
        """The batch the model runs at (its first input dimension, after resizing)."""
        return int(self.input_details[0]["shape"][0])

    @property
    def times_us(self) -> dict[str, float]:
        """Microseconds the runtime spent loading, checking custom ops and compiling."""
        return self._call("times_us")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Run every sample of `x` (any count) and return float outputs."""
        return self._call("predict", np.asarray(x))

    def set_input(self, value: np.ndarray) -> None:
        """Copy a raw value (the model's own dtype and shape) into the input."""
        self._call("set_input", np.asarray(value))

    def output(self) -> np.ndarray:
        """A copy of the raw output (the model's own dtype)."""
        return self._call("output")

    def set_example_input(self, seed: int = 0) -> None:
        """Fill the input with random values of its dtype, for benchmarking."""
        self._call("set_example_input", seed)

    def invoke_timed(self) -> float:
        """Run one inference on the current input; return its wall time in seconds,
        as measured in the worker (the pipe's round trip is not included)."""
        return self._call("invoke_timed")

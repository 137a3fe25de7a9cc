"""The process behind `tflite.runtime.isolated.IsolatedRunner`: one LiteRtRunner,
served over two pipes.

Run as `python -m tflite.runtime.worker REQUEST_FD REPLY_FD`. Requests are
(method, args) tuples, answered with ("ok", value), ("error", message) for a
UserError, or ("bug", traceback) for anything else. The first request opens the
model; the worker exits when the request pipe closes. If LiteRT crashes, this
process dies and the parent reports the signal.
"""
from __future__ import annotations

import signal
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable

from core.errors import UserError
from tflite.runtime.binding import LiteRtRunner

# What a parent may call once the model is open; each takes the runner first.
METHODS: dict[str, Callable[..., Any]] = {
    "predict": lambda runner, x: runner.predict(x),
    "set_input": lambda runner, value: runner.set_input(value),
    "output": lambda runner: runner.output(),
    "set_example_input": lambda runner, seed: runner.set_example_input(seed),
    "invoke_timed": lambda runner: runner.invoke_timed(),
    "times_us": lambda runner: runner.times_us,
}


def open_runner(model: str | bytes, options: dict[str, Any]) -> tuple[LiteRtRunner, dict]:
    """The runner and what the parent mirrors of it."""
    runner = LiteRtRunner(model, **options)
    return runner, {"input_details": runner.input_details,
                    "output_details": runner.output_details}


def serve(requests: Connection, replies: Connection) -> None:
    """Answer requests until the parent closes the request pipe."""
    runner = None
    while True:
        try:
            method, args = requests.recv()
        except EOFError:
            return
        try:
            if method == "open":
                runner, value = open_runner(*args)
            else:
                value = METHODS[method](runner, *args)
            replies.send(("ok", value))
        except UserError as error:
            replies.send(("error", str(error)))
        except Exception:  # a bug, not a user mistake: the parent shows the traceback
            replies.send(("bug", traceback.format_exc()))


def main(argv: list[str]) -> None:
    # Ctrl-C reaches the whole process group; the parent decides, and closing
    # its pipe ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    request_fd, reply_fd = int(argv[1]), int(argv[2])
    serve(Connection(request_fd, writable=False), Connection(reply_fd, readable=False))


if __name__ == "__main__":
    main(sys.argv)

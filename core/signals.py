"""How a native process that died on a signal is reported (the Python runtime's
worker, the benchmark runner on the host or on a device): one wording everywhere,
so a crash is never blamed on an unrelated last line of output."""
from __future__ import annotations

import signal

# Signals native code raises itself when it faults; anything else came from outside.
CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
                           signal.SIGABRT, signal.SIGTRAP, signal.SIGSYS})


def signal_name(signum: int) -> str:
    """SIGSEGV for 11; "signal N" for a number this platform has no name for."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def signal_exit_message(who: str, signum: int, doing: str) -> str:
    """"<who> crashed (SIGSEGV) <doing>; ..." where `doing` is e.g. "while compiling
    m.tflite": a fault points at the model, a kill from outside does not."""
    if signum in CRASH_SIGNALS:
        return (f"{who} crashed ({signal_name(signum)}) {doing}; the model is damaged or uses "
                "an op LiteRT cannot run")
    return (f"{who} was killed ({signal_name(signum)}) {doing}; it ran out of memory or was "
            "stopped from outside")

"""The native benchmark runner (`litert_bench`) as host and device targets see it:
where the binary and its libraries are, how settings become its flags, and how its
JSON (schema in RUNNER.md) becomes one benchmark record of results.json.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import subprocess
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from core.errors import UserError
from core.signals import signal_exit_message

REPO_ROOT = Path(__file__).resolve().parents[1]
NATIVE_DIR = REPO_ROOT / ".native"
RUNNER_SCHEMA_VERSION = 1
RUNNER_TOOL = "litert_bench"  # records' "tool": which runner measured (also "benchmark_model")
# The line litert_bench writes to stderr once the model is compiled: a crash
# after it happened while running the model, before it while compiling.
COMPILED_MARKER = "litert_bench: compiled"


@dataclass(frozen=True)
class RunSettings:
    """How the runner measures; part of a measurement's identity when resuming and
    recorded with every result. These defaults are the project's benchmark
    defaults (the config, the CLI and the studies refer to them)."""

    warmup_runs: int = 10
    warmup_min_secs: float = 0.5  # warm up for at least this long too (litert_bench's default)
    num_runs: int = 100
    min_secs: float = 0.0
    affinity: str | None = None  # taskset CPU mask in hex, e.g. "f0" for cores 4-7
    # Shapes of dynamic inputs in benchmark_model's syntax: names "a,b", shapes
    # "1,224,224,3:1,20"; empty: every dynamic dimension becomes 1.
    input_layer: str = ""
    input_layer_shape: str = ""
    max_tensor_bytes: int = 0  # cap on the model's activation memory; 0: the runtime's default
    extra_args: tuple[str, ...] = ()  # more runner flags, e.g. ("--max_secs=30",)


class ResultStore:
    """Finished measurements as JSON Lines, one fsync'd line each.

    Appending, not core.atomic's whole-file rename, so a crash or a pulled cable
    loses at most the measurement in flight; a later run skips what is here.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()

    def load(self) -> list[dict]:
        """Every complete record; a line torn by a crash or a full disk mid-write
        (the tail without its newline, or any line that is not JSON) is skipped."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_bytes().decode("utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def finished(self) -> dict[tuple, dict]:
        """Stored measurements by identity."""
        return {measurement_identity(r): r for r in self.load() if "model_sha256" in r}

    def append(self, record: dict) -> None:
        """Write one whole line; a torn tail left by an earlier failed append (a full
        disk, a crash) is repaired first, else this line would be glued onto it and
        be lost as well."""
        line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab+") as f:
                self._repair_tail(f)
                f.write(line)
                f.flush()
                os.fsync(f.fileno())

    @staticmethod
    def _repair_tail(f) -> None:
        """Make the file end at a line boundary: a tail without its newline is cut
        back to the last newline, unless it is a whole record that only lacks the
        newline (a prefix of a JSON object never parses as one), which is kept."""
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        start = data.rfind(b"\n") + 1
        try:
            whole = isinstance(json.loads(data[start:]), dict)
        except ValueError:
            whole = False
        if whole:
            f.write(b"\n")
        else:
            f.truncate(start)
        f.flush()
        os.fsync(f.fileno())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def measurement_base(model: Path, runner: Path, settings: RunSettings) -> dict:
    """The fields every measurement record of this model, runner and settings shares.
    `runner` is the file whose hash identifies the runner build: the binary, or for a
    bundle its manifest (which holds the hash of every file in it)."""
    return {"model": model.name, "model_sha256": sha256_file(model),
            "runner_sha256": sha256_file(runner),
            "settings": {**asdict(settings), "extra_args": list(settings.extra_args)}}


def measurement_identity(record: dict) -> tuple:
    """What makes two measurements the same one (for skipping finished work)."""
    return (record["target"], record["model_sha256"], record["runner_sha256"], record["threads"],
            json.dumps(record["settings"], sort_keys=True))


def runner_binary() -> Path:
    path = NATIVE_DIR / "litert_bench"
    if not path.is_file():
        raise UserError(f"the native runner is not built: {path} is missing; run "
                        "scripts/setup.sh (or `make setup`), which builds "
                        "//android_bench:litert_bench and copies it there.")
    return path


def litert_library() -> Path:
    """The wheel's libLiteRt.so, which the host runner links and devices receive."""
    import ai_edge_litert

    path = Path(ai_edge_litert.__file__).parent / "libLiteRt.so"
    if not path.is_file():
        raise UserError(f"{path} is missing: reinstall ai-edge-litert with scripts/setup.sh.")
    return path


def _flags_both_tools_take(runner: str, model: str, threads: int, settings: RunSettings,
                           launcher: Sequence[str]) -> list[str]:
    """The flags our runner shares with LiteRT's benchmark_model (same names, same
    meaning), after the launcher words."""
    argv = [*launcher, runner, f"--graph={model}", f"--num_threads={threads}",
            f"--warmup_runs={settings.warmup_runs}",
            f"--warmup_min_secs={settings.warmup_min_secs}", f"--num_runs={settings.num_runs}",
            f"--min_secs={settings.min_secs}", "--report_peak_memory_footprint=true"]
    if settings.input_layer:
        argv += [f"--input_layer={settings.input_layer}",
                 f"--input_layer_shape={settings.input_layer_shape}"]
    return argv


def _pinned(argv: list[str], settings: RunSettings) -> list[str]:
    return ["taskset", settings.affinity, *argv] if settings.affinity else argv


def runner_command(runner: str, model: str, threads: int, settings: RunSettings,
                   json_output: str, *, launcher: Sequence[str] = (),
                   output_filepath: str | None = None) -> list[str]:
    """argv of one measurement, behind `taskset MASK` when an affinity is set and the
    `launcher` words (e.g. ("sh",) for the arm64 bundle's run.sh). Input shapes, the
    tensor cap and the outputs file are passed only when set, so a runner without
    those flags still measures models that need none of them."""
    argv = _flags_both_tools_take(runner, model, threads, settings, launcher)
    if settings.max_tensor_bytes:
        argv.append(f"--max_tensor_bytes={settings.max_tensor_bytes}")
    if output_filepath:
        argv.append(f"--output_filepath={output_filepath}")
    argv += [f"--json_output={json_output}", *settings.extra_args]
    return _pinned(argv, settings)


def peer_command(program: str, model: str, threads: int, settings: RunSettings,
                 output_filepath: str, *, launcher: Sequence[str] = ()) -> list[str]:
    """argv of one measurement by LiteRT's benchmark_model: only the flags it has
    (settings.extra_args and the tensor cap are our runner's own)."""
    argv = _flags_both_tools_take(program, model, threads, settings, launcher)
    return _pinned([*argv, f"--output_filepath={output_filepath}"], settings)


def crash_message(runner: Path, signum: int, stderr: str) -> str:
    """What the runner was doing when it died on `signum`, from its stderr progress:
    after the compiled marker it was running the model, before it compiling; for a
    runner that never writes the marker (an older build) nothing is claimed."""
    if COMPILED_MARKER in stderr:
        doing = "while running the model"
    elif COMPILED_MARKER.encode() in runner.read_bytes():
        doing = "while compiling the model"
    else:
        doing = "on the model"
    return signal_exit_message("the runner", signum, doing)


def failure_line(stderr: str) -> str:
    """The runner's own error line (RUNNER.md: one line starting `litert_bench: error:`),
    else its last line of stderr."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("litert_bench: error:")]
    return (errors or lines or [""])[-1]


def parse_runner_json(text: str, where: str) -> dict:
    """The runner's document, checked for the schema this code understands."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: the runner's output is not JSON ({e}).") from None
    if not isinstance(document, dict) or document.get("schema_version") != RUNNER_SCHEMA_VERSION:
        raise UserError(f"{where}: the runner wrote schema_version "
                        f"{document.get('schema_version') if isinstance(document, dict) else '?'}"
                        f", expected {RUNNER_SCHEMA_VERSION}; rebuild it with scripts/setup.sh.")
    return document


def outputs_digest(data: bytes | None) -> str | None:
    """sha256 of the outputs file the runner wrote (`--output_filepath`: the raw output
    tensors of its last inference), recorded so that targets can be compared; None
    when it wrote none (a runner without the flag)."""
    return None if data is None else hashlib.sha256(data).hexdigest()


def runner_build(abi: str, runner: Path) -> dict:
    """Which runner build a record's measurement ran: a plain binary, by its hash."""
    return {"abi": abi, "runner_sha256": sha256_file(runner)}


def run_on_host(runner: Path, model: Path, threads: int, settings: RunSettings,
                timeout_s: float = 900, outputs_path: Path | None = None) -> dict:
    """Run the runner on this machine and return its JSON document; with `outputs_path`
    the runner writes the outputs of its last inference there."""
    with tempfile.TemporaryDirectory(prefix="edgepipe-bench-") as folder:
        output = Path(folder) / "result.json"
        command = runner_command(str(runner), str(model), threads, settings, str(output),
                                 output_filepath=str(outputs_path) if outputs_path else None)
        try:
            result = subprocess.run(command, capture_output=True, text=True,
                                    encoding="utf-8", errors="replace", timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise UserError(f"host benchmark of {model} did not finish within {timeout_s:.0f} s "
                            f"({shlex.join(command)}).") from None
        where = f"host benchmark of {model} (threads={threads})"
        if result.returncode < 0:
            raise UserError(f"{where}: {crash_message(runner, -result.returncode, result.stderr)}.")
        if result.returncode != 0:
            raise UserError(f"{where} failed (exit {result.returncode}): "
                            f"{failure_line(result.stderr)}")
        if not output.is_file():
            raise UserError(f"{where}: the runner exited 0 but wrote no JSON to {output}; "
                            "rebuild it with scripts/setup.sh.")
        return parse_runner_json(output.read_bytes().decode("utf-8", errors="replace"), where)


def benchmark_on_host(model: str | os.PathLike, *, results_path: str | os.PathLike,
                      threads: Sequence[int] = (1,), settings: RunSettings = RunSettings()
                      ) -> list[dict]:
    """Measure `model` on this machine per thread count, in the harness's record
    format ({target: "host", device, threads, runner, model, ...}), resuming from
    and appending to `results_path` like the device harness."""
    model, runner = Path(model), runner_binary()
    if not model.is_file():
        raise UserError(f"{model} does not exist.")
    store = ResultStore(results_path)
    base = {**measurement_base(model, runner, settings), "target": "host",
            "bundle": runner_build(platform.machine(), runner), "tool": RUNNER_TOOL}
    done = store.finished()
    records = []
    for count in threads:
        record = done.get(measurement_identity({**base, "threads": count}))
        if record is None:
            with tempfile.TemporaryDirectory(prefix="edgepipe-outputs-") as folder:
                outputs = Path(folder) / "outputs.raw"
                document = run_on_host(runner, model, count, settings, outputs_path=outputs)
                digest = outputs_digest(outputs.read_bytes() if outputs.is_file() else None)
            record = {**base, "device": document["device"], "threads": count, "runner": document,
                      "outputs_sha256": digest}
            store.append(record)
        records.append(record)
    return records


def to_benchmark_record(measurement: dict) -> dict:
    """One results.json benchmark entry (milliseconds) from a harness-format record."""
    document = measurement["runner"]
    steady = document["steady_state"]
    memory = document.get("memory") or {}

    def ms(value: float | None) -> float | None:
        return None if value is None else value / 1000.0

    return {
        "target": measurement["target"], "threads": measurement["threads"],
        "settings": measurement["settings"],
        "runs": steady["count"],
        "init_ms": ms(document["init"]["total_us"]),
        "first_ms": ms(document["first_inference_us"]),
        "warmup_mean_ms": ms(document["warmup"]["mean_us"]),
        **{f"{name}_ms": ms(steady[f"{name}_us"])
           for name in ("mean", "std", "min", "max", "p5", "p50", "p90", "p95", "p99")},
        "init_footprint_kib": memory.get("init_footprint_kib"),
        "peak_rss_kib": memory.get("peak_rss_kib"),
        "device": measurement["device"],
        # None for records journalled by older versions, which lacked them.
        "bundle": measurement.get("bundle"),
        "outputs_sha256": measurement.get("outputs_sha256"),
        "tool": measurement.get("tool", RUNNER_TOOL),
    }

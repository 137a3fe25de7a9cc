"""The `edgepipe` command: run, inspect, summary, bench.

`edgepipe COMMAND [flags]`; every command's flags are absl flags, listed with
`edgepipe COMMAND --help`. A user mistake prints one line and exits 1.
"""
from __future__ import annotations

import json
import logging as std_logging
import sys
from pathlib import Path

from absl import app, flags, logging

from android_bench.runner import RunSettings
from core import atomic
from core.errors import UserError

FLAGS = flags.FLAGS
PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)
# bench-ops deliberately warms up by count only: it makes dozens of runner calls
# (models x threads x rounds, alternating), and a time floor on each would add
# minutes that the alternating rounds already make unnecessary.
BENCH_OPS_WARMUP_MIN_SECS = 0.0

# run
flags.DEFINE_string("config", None, "YAML run config (default: pipelines/configs/default.yaml).")
flags.DEFINE_string("output_dir", None, "Run folder for artifacts, results.json and report.md "
                    "(overrides the config's output_dir).")
flags.DEFINE_multi_string("set", [], "Override a config value: KEY=VALUE with a dotted key; "
                          "models by name, e.g. --set models.gru.train.epochs=3.")
flags.DEFINE_list("models", None, "Only run these configured models (by name).")
# summary
flags.DEFINE_string("builder", "mobilenet_v1", "summary: registered model, module:function, or "
                    "saved model path.")
flags.DEFINE_list("input_shape", ["224", "224", "3"], "summary: input shape without batch.")
flags.DEFINE_integer("num_classes", 1000, "summary: number of classes.")
flags.DEFINE_multi_string("option", [], "summary: builder option NAME=VALUE (YAML value), "
                          "e.g. --option alpha=0.5.")
# bench
flags.DEFINE_string("model", None, "bench: the .tflite file to measure.")
flags.DEFINE_list("target", ["host"], "bench: host, device serials (as `adb devices` lists "
                  "them) or all (every connected device).")
flags.DEFINE_string("affinity", None, "bench: taskset CPU mask in hex for the runner, e.g. f0.")
flags.DEFINE_list("threads", ["1"], "bench/run/bench-ops: thread counts, e.g. 1,2,4.")
# Defaults: RunSettings (android_bench/runner.py), the project's one set of them.
flags.DEFINE_integer("warmup_runs", RunSettings.warmup_runs,
                     "bench/bench-ops: untimed runs before measuring.")
flags.DEFINE_float("warmup_min_secs", RunSettings.warmup_min_secs,
                   "bench: warm up for at least this many seconds too (bench-ops: "
                   f"{BENCH_OPS_WARMUP_MIN_SECS:g} unless given).")
flags.DEFINE_integer("num_runs", RunSettings.num_runs, "bench/bench-ops: timed runs (at least).")
flags.DEFINE_float("min_secs", RunSettings.min_secs,
                   "bench/bench-ops: keep running until this many seconds have passed.")
flags.DEFINE_string("input_layer", RunSettings.input_layer,
                    "bench: names of the inputs whose dynamic shapes --input_layer_shape "
                    "chooses, comma-separated (benchmark_model's syntax), e.g. a,b.")
flags.DEFINE_string("input_layer_shape", RunSettings.input_layer_shape,
                    "bench: one shape per --input_layer name, separated by ':', e.g. "
                    "1,224,224,3:1,20; dynamic dimensions not chosen become 1.")
flags.DEFINE_integer("max_tensor_bytes", RunSettings.max_tensor_bytes,
                     "bench: cap on the model's activation memory in bytes (0: the runtime's "
                     "default).")
flags.DEFINE_string("benchmark_model", None, "bench: LiteRT's official Android benchmark_model "
                    "binary, also run on each device of its ABI (models without custom ops).")
flags.DEFINE_string("json_output", None, "bench/bench-ops: also write the results as JSON to "
                    "this file.")
# bench-ops
flags.DEFINE_string("op", "sparse_gru", "bench-ops: the custom op to benchmark.")
flags.DEFINE_list("hidden", ["256", "512", "1024"], "bench-ops: layer sizes (input = hidden; "
                  "sparse_gru).")
flags.DEFINE_list("sparsities", ["0", "0.5", "0.8", "0.9", "0.95"], "bench-ops: weight "
                  "sparsities of the custom op.")
flags.DEFINE_integer("steps", 50, "bench-ops: sequence length (sparse_gru).")
flags.DEFINE_list("precisions", ["float32", "int8"],
                  "bench-ops: sparse_separable precisions (float32, dynamic_range, int8), each "
                  "against the builtin conversion of that quantization.")
flags.DEFINE_list("workloads", ["mobilenet_v1_1.0_224", "block_56x56x128", "block_28x28x256",
                                "block_14x14x512", "block_7x7x1024"],
                  "bench-ops: sparse_separable workloads, the whole MobileNet v1 1.0 224 and "
                  "single blocks.")
flags.DEFINE_integer("rounds", 2, "bench-ops: measure every model this many times, every other "
                     "round in reverse order, and average (drift falls on all alike).")


def _ints(values: list[str], flag: str) -> list[int]:
    """Positive integers of a list flag (layer sizes, thread counts)."""
    try:
        numbers = [int(v) for v in values]
    except ValueError:
        numbers = []
    if not numbers or min(numbers) < 1:
        raise UserError(f"--{flag} takes comma-separated integers of at least 1, got "
                        f"{','.join(values)!r}.")
    return numbers


def command_run(args: list[str]) -> None:
    from pipelines.config import load_config
    from pipelines.report import variants_table
    from pipelines.run import run_pipeline

    overrides = list(FLAGS.set)
    if FLAGS.output_dir:
        overrides.append(f"output_dir={json.dumps(FLAGS.output_dir)}")
    if FLAGS["threads"].present:
        overrides.append(f"benchmark.threads={_ints(FLAGS.threads, 'threads')}")
    config = load_config(FLAGS.config, overrides)
    if FLAGS.models:
        missing = set(FLAGS.models) - {m.name for m in config.models}
        if missing:
            raise UserError(f"--models: no model named {sorted(missing)[0]!r}; configured models "
                            f"are {', '.join(m.name for m in config.models)}.")
        config.models = [m for m in config.models if m.name in FLAGS.models]
    results = run_pipeline(config)
    print(variants_table(results["variants"]))
    print("\nstage times: " + ", ".join(f"{k} {v:.1f}s" for k, v in
                                        results["stage_seconds"].items()))
    out = Path(config.output_dir)
    print(f"results: {out / 'results.json'}\nreport:  {out / 'report.md'}")


def command_inspect(args: list[str]) -> None:
    from tflite.inspect import format_model_info, inspect_model

    if len(args) != 1:
        raise UserError("usage: edgepipe inspect MODEL.tflite")
    print(format_model_info(inspect_model(args[0])))


def command_summary(args: list[str]) -> None:
    from models.registry import build_model
    from models.summary import format_summary, summarize
    from pipelines.config import parse_yaml_value

    options = {}
    for item in FLAGS.option:
        name, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--option {item!r}: expected NAME=VALUE, e.g. alpha=0.5.")
        options[name] = parse_yaml_value(value, f"--option {item!r}")
    shape = tuple(_ints(FLAGS.input_shape, "input_shape"))
    print(format_summary(summarize(build_model(FLAGS.builder, shape, FLAGS.num_classes, options))))


def command_bench(args: list[str]) -> None:
    import tempfile

    from pipelines.benchmark import measure
    from pipelines.config import BenchmarkConfig, checked
    from pipelines.report import benchmarks_table

    if not FLAGS.model:
        raise UserError("bench needs --model PATH.tflite.")
    path = Path(FLAGS.model)
    if not path.is_file():
        raise UserError(f"--model {FLAGS.model!r} does not exist.")
    settings = checked(BenchmarkConfig, {
        "targets": FLAGS.target, "threads": _ints(FLAGS.threads, "threads"),
        "warmup_runs": FLAGS.warmup_runs, "warmup_min_secs": FLAGS.warmup_min_secs,
        "num_runs": FLAGS.num_runs, "min_secs": FLAGS.min_secs, "affinity": FLAGS.affinity,
        "input_layer": FLAGS.input_layer, "input_layer_shape": FLAGS.input_layer_shape,
        "max_tensor_bytes": FLAGS.max_tensor_bytes, "benchmark_model": FLAGS.benchmark_model},
        "", flags=True)
    if FLAGS.json_output:
        atomic.check_writable(FLAGS.json_output, "--json_output")
    # Measurements are journalled next to the JSON output (or in a temporary
    # folder), so an interrupted multi-device benchmark keeps what finished.
    journal_dir = Path(FLAGS.json_output).parent if FLAGS.json_output else \
        Path(tempfile.mkdtemp(prefix="edgepipe-bench-"))
    journal = journal_dir / f"{path.stem}.measurements.jsonl"
    rows = [row for target in settings.targets for row in measure(target, path, settings, journal)]
    print(benchmarks_table([{"model": path.stem, "name": path.name, "benchmarks": rows}]))
    if FLAGS.json_output:
        atomic.write_text(FLAGS.json_output, json.dumps({"model": str(path), "benchmarks": rows},
                                                        indent=2) + "\n")


def command_bench_ops(args: list[str]) -> None:
    from pipelines.benchmark import run_settings
    from pipelines.benchmarks import bench_separable as separable
    from pipelines.benchmarks.bench_ops import bench_sparse_gru, check_op, format_table
    from pipelines.config import BenchmarkConfig, checked

    check_op(FLAGS.op)
    try:
        sparsities = [float(s) for s in FLAGS.sparsities]
    except ValueError:
        raise UserError(f"--sparsities takes fractions, got {','.join(FLAGS.sparsities)!r}.") \
            from None
    if not all(0 <= s < 1 for s in sparsities):
        raise UserError("--sparsities must be fractions in [0, 1), e.g. 0,0.5,0.9.")
    if FLAGS.rounds < 1:
        raise UserError(f"--rounds must be at least 1, got {FLAGS.rounds}.")
    if FLAGS.steps < 1:
        raise UserError(f"--steps must be at least 1, got {FLAGS.steps}.")
    warmup_min_secs = (FLAGS.warmup_min_secs if FLAGS["warmup_min_secs"].present
                       else BENCH_OPS_WARMUP_MIN_SECS)
    settings = run_settings(checked(BenchmarkConfig, {
        "warmup_runs": FLAGS.warmup_runs, "warmup_min_secs": warmup_min_secs,
        "num_runs": FLAGS.num_runs, "min_secs": FLAGS.min_secs}, "", flags=True))
    if FLAGS.json_output:
        atomic.check_writable(FLAGS.json_output, "--json_output")

    def save(rows: list[dict]) -> None:
        """Each layer size's rows as soon as they are measured: nothing finished is lost."""
        if FLAGS.json_output:
            atomic.write_json(FLAGS.json_output, rows)

    threads = _ints(FLAGS.threads, "threads")
    if FLAGS.op == "sparse_separable":
        _check_choices("workloads", "workload", separable.WORKLOADS)
        _check_choices("precisions", "precision", separable.PRECISIONS)
        rows = separable.bench_separable(FLAGS.workloads, sparsities, FLAGS.precisions, threads,
                                         settings, FLAGS.rounds, on_rows=save)
        print(separable.format_table(rows))
        return
    rows = bench_sparse_gru(_ints(FLAGS.hidden, "hidden"), sparsities, FLAGS.steps, threads,
                            settings, FLAGS.rounds, on_rows=save)
    print(format_table(rows))


def _check_choices(flag: str, noun: str, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(FLAGS[flag].value) - set(allowed))
    if unknown or not FLAGS[flag].value:
        problem = f"{unknown[0]!r} is not a {noun}" if unknown else f"no {noun} given"
        raise UserError(f"--{flag}: {problem}; choose from {', '.join(allowed)}.")


COMMANDS = {"run": command_run, "inspect": command_inspect, "summary": command_summary,
            "bench": command_bench, "bench-ops": command_bench_ops}

USAGE = """usage: edgepipe COMMAND [flags]

commands:
  run       train, optimize, convert, validate, benchmark and report (default config if none)
  inspect   show ops, tensors, quantization and sparsity of a .tflite file
  summary   parameters and mult-adds per layer of a model builder
  bench     benchmark a .tflite file on the host and/or Android devices over ADB
  bench-ops benchmark a custom op against the builtin path of the same layer

`edgepipe COMMAND --help` lists the flags."""


class _ProjectInfoOnly(std_logging.Filter):
    """INFO lines from edgepipe itself; TensorFlow's internals log through absl too."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or record.pathname.startswith(PROJECT_ROOT)


def _exit(command: str, message: str, status: int) -> None:
    print(f"edgepipe {command}: {message}", file=sys.stderr)
    sys.exit(status)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    command = sys.argv[1]

    def dispatch(argv: list[str]) -> None:
        logging.set_verbosity(logging.INFO)
        logging.get_absl_handler().addFilter(_ProjectInfoOnly())
        try:
            COMMANDS[command](argv[1:])
        except UserError as e:
            _exit(command, f"error: {e}", 1)
        except KeyboardInterrupt:
            # Every finished stage and measurement is already saved.
            _exit(command, "interrupted; rerun the same command to resume.", 130)
        except OSError as e:
            if not atomic.is_disk_full(e):
                raise
            _exit(command, f"error: {atomic.disk_full(e.filename, e)}", 1)

    app.run(dispatch, argv=[f"edgepipe {command}", *sys.argv[2:]])


if __name__ == "__main__":
    main()

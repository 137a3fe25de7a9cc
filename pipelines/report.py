"""results.json (the versioned record users script against), report.md and plots.

The schema of results.json is documented in README.md ("results.json"); bump
SCHEMA_VERSION whenever a field changes meaning or disappears.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from android_bench.runner import RUNNER_TOOL
from core import atomic
from core.errors import UserError

SCHEMA_VERSION = 1


def build_results(run: dict, models: list[dict], variants: list[dict]) -> dict:
    return {"schema_version": SCHEMA_VERSION, **run, "models": models, "variants": variants}


def read_results(output_dir: Path) -> dict | None:
    """The run folder's results.json, to merge into; None when there is none yet.
    One that cannot be merged (not ours, another schema) stops the run before any
    work rather than being silently overwritten."""
    path = Path(output_dir) / "results.json"
    if not path.is_file():
        return None
    try:
        previous = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); fix it, or move it away to start "
                        "the results afresh.") from None
    if not (isinstance(previous, dict) and isinstance(previous.get("models"), list)
            and isinstance(previous.get("variants"), list)):
        raise UserError(f"{path} is not an edgepipe results.json (no models and variants "
                        "lists); move it away to start the results afresh.")
    if previous.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{path} has schema_version {previous.get('schema_version')!r}, this "
                        f"edgepipe writes {SCHEMA_VERSION} and cannot merge into it; move it away "
                        "and rerun every model (unchanged stages are reused from the run folder).")
    return previous


def merge_results(previous: dict | None, results: dict) -> dict:
    """`results` with the models (and their variants) that this run did not run kept
    from `previous`, so `edgepipe run --models a` does not drop the others' results.
    Models run now replace their old entries in place; new ones come last."""
    if previous is None:
        return results
    ran = {m["name"] for m in results["models"]}
    order = [m["name"] for m in previous["models"]]
    order += [name for name in (m["name"] for m in results["models"]) if name not in order]
    models = {m["name"]: m for m in previous["models"] if m["name"] not in ran}
    models.update((m["name"], m) for m in results["models"])
    variants = [v for v in previous["variants"] if v["model"] not in ran]
    variants += results["variants"]
    rank = {name: i for i, name in enumerate(order)}
    variants.sort(key=lambda v: rank.get(v["model"], len(order)))  # stable: keeps variant order
    merged = {**results, "models": [models[name] for name in order if name in models],
              "variants": variants}
    # The config records how every listed model was made, kept ones included.
    configs = {c["name"]: c for c in (previous.get("config") or {}).get("models", [])
               if c.get("name") not in ran}
    configs.update((c["name"], c) for c in (results.get("config") or {}).get("models", []))
    if "config" in results:
        merged["config"] = {**results["config"],
                            "models": [configs[name] for name in order if name in configs]}
    return merged


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _first_benchmark(variant: dict) -> dict:
    return variant["benchmarks"][0] if variant.get("benchmarks") else {}


def variants_table(variants: list[dict]) -> str:
    """Markdown table, one row per variant, with its first (host) benchmark and its
    speed against the same model's float32 variant there."""
    lines = ["| model | variant | size (KiB) | gzip (KiB) | M mult-adds | sparsity | accuracy "
             "| Keras accuracy | max abs err | top-1 agree | mean ms | p90 ms | vs float32 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v in variants:
        b = _first_benchmark(v)
        float32 = _same_setting(_variant(variants, v["model"], "float32"), b)
        speed = f"{float32['mean_ms'] / b['mean_ms']:.2f}x" if float32 and b.get("mean_ms") else "–"
        lines.append(
            f"| {v['model']} | {v['name']} | {v['file_bytes'] / 1024:.1f} | "
            f"{v['gzip_bytes'] / 1024:.1f} | {_fmt(_millions(v.get('mult_adds')), '.2f')} | "
            f"{v['sparsity']:.1%} | {v['accuracy']:.2%} | "
            f"{v['keras_accuracy']:.2%} | {v['max_abs_error']:.2e} | {v['top1_agreement']:.2%} | "
            f"{_fmt(b.get('mean_ms'), '.3f')} | {_fmt(b.get('p90_ms'), '.3f')} | {speed} |")
    return "\n".join(lines)


def _millions(count: int | None) -> float | None:
    return None if count is None else count / 1e6


def _variant(variants: list[dict], model: str, name: str) -> dict | None:
    """The model's dense builtin variant `name`, if it ran."""
    return next((v for v in variants if v["model"] == model and v["name"] == name
                 and not v.get("lowering")), None)


def _setting(benchmark: dict) -> tuple:
    """Where and how a benchmark ran: target, thread count and runner."""
    return benchmark.get("target"), benchmark.get("threads"), benchmark.get("tool", RUNNER_TOOL)


def _same_setting(variant: dict | None, benchmark: dict) -> dict | None:
    """The variant's benchmark at `benchmark`'s target, thread count and runner."""
    return next((b for b in (variant or {}).get("benchmarks", [])
                 if _setting(b) == _setting(benchmark)), None)


def target_label(benchmark: dict) -> str:
    """The target, and the runner when it is not ours (LiteRT's benchmark_model)."""
    tool = benchmark.get("tool", RUNNER_TOOL)
    return benchmark["target"] if tool == RUNNER_TOOL else f"{benchmark['target']} ({tool})"


def _ms(value: float | None, digits: int) -> str:
    """A time in the table; a figure the runner did not report (benchmark_model has no
    p90 or p99) is a dash, not a zero."""
    return "–" if value is None else f"{value:.{digits}f}"


def device_label(device: dict) -> str:
    """Short description of what a benchmark ran on (host CPU, or phone model and SoC)."""
    if device.get("kind") == "host":
        return device.get("cpu_model") or "host"
    return " ".join(str(device[k]) for k in ("model", "soc") if device.get(k)) or "device"


def benchmarks_table(variants: list[dict]) -> str:
    """Markdown table of every benchmark, grouped by target."""
    rows = sorted(((target_label(b), v["model"], v["name"], b) for v in variants
                   for b in v.get("benchmarks", [])), key=lambda r: r[0])
    lines = ["| target | device | model | variant | threads | init ms | first ms | mean ms "
             "| std ms | p50 ms | p90 ms | p99 ms |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for target, model, name, b in rows:
        lines.append(f"| {target} | {device_label(b.get('device', {}))} | {model} | {name} | "
                     f"{b['threads']} | {_ms(b['init_ms'], 2)} | "
                     + " | ".join(_ms(b[f"{name}_ms"], 3)
                                  for name in ("first", "mean", "std", "p50", "p90", "p99"))
                     + " |")
    return "\n".join(lines)


def _speedups(variant: dict, variants: list[dict]) -> str:
    """The variant's first benchmark against the same model's dense float32 and int8
    builtin variants at the same target and thread count."""
    mine = _first_benchmark(variant)
    parts = []
    for name in ("float32", "int8"):
        theirs = _same_setting(_variant(variants, variant["model"], name), mine)
        if theirs and mine.get("mean_ms"):
            parts.append(f"{theirs['mean_ms'] / mine['mean_ms']:.2f}x the speed of {name}")
    if not parts:
        return "- no dense float32 or int8 variant of this model was benchmarked to compare with"
    return (f"- {mine['mean_ms']:.3f} ms on {target_label(mine)} at {mine['threads']} thread(s): "
            + ", ".join(parts))


def _timing(timings: list[dict] | None) -> tuple[str, str, str]:
    """Builtin µs, op µs and speed-up at the first thread count measured."""
    if not timings:
        return "–", "–", "–"
    t = timings[0]
    return f"{t['builtin_us']:.1f}", f"{t['op_us']:.1f}", f"{t['builtin_us'] / t['op_us']:.2f}x"


def _separable_lines(decision: dict) -> list[str]:
    blocks = decision["blocks"]
    lines = [f"- SparseSeparableConv ({decision['mode']}): "
             f"{sum(b['lowered'] for b in blocks)} of {len(blocks)} depthwise convolutions lowered"]
    if not any(b["lowered"] for b in blocks) and any(b.get("timings") for b in blocks):
        lines.append("- the op was not clearly faster than the builtin pair for any block "
                     "timed: at these shapes and densities the model is too small for it to pay "
                     "on this host (`edgepipe bench-ops --op sparse_separable` shows where it "
                     "does)")
    whole = decision.get("whole_model")
    if whole:
        builtin_us, op_us, speedup = _timing(whole)
        lines.append(f"- whole model timed for the choice: builtin {builtin_us} µs, lowered "
                     f"{op_us} µs ({speedup}) at {whole[0]['threads']} thread(s)")
    lines += ["", "| layer | input | kernel/stride | 1x1 density | lowered | builtin µs | op µs "
              "| speed-up | why |", "|---|---|---|---:|---|---:|---:|---:|---|"]
    for b in blocks:
        builtin_us, op_us, speedup = _timing(b.get("timings"))
        shape = "x".join(map(str, b["input_shape"][1:])) if b.get("input_shape") else "–"
        kernel = f"{b['kernel_size']}x{b['kernel_size']}/{b['stride']}" if "stride" in b else "–"
        density = f"{b['density']:.1%}" if "density" in b else "–"
        lines.append(f"| {b['layer'] or b['depthwise']} | {shape} | {kernel} | {density} | "
                     f"{'yes' if b['lowered'] else 'no'} | {builtin_us} | {op_us} | {speedup} | "
                     f"{b['reason']} |")
    return lines


def lowering_section(variants: list[dict]) -> str:
    """Per variant that went through a custom-op lowering: what was lowered, why, and
    what it bought against the dense builtin variants."""
    parts = []
    for v in variants:
        lowering = v.get("lowering") or {}
        if not lowering:
            continue
        lines = [f"### {v['model']} · {v['name']}", "", _speedups(v, variants)]
        gru = lowering.get("gru")
        if gru:
            what = "lowered" if gru["lowered"] else "builtin WHILE loop kept"
            lines.append(f"- SparseGRU ({gru['mode']}): {what}"
                         + (f": {gru['reason']}" if gru.get("reason") else ""))
        if lowering.get("separable"):
            lines += _separable_lines(lowering["separable"])
        parts.append("\n".join(lines))
    return "\n\n".join(parts) or "No variant uses a custom op."


def _model_section(model: dict) -> str:
    lines = [f"### {model['name']}", "",
             f"- builder: `{model['builder']}` {model['options'] or ''}",
             f"- data: {model['data']}",
             f"- parameters: {model['params']:,}; mult-adds: {model['mult_adds'] / 1e6:.2f} M",
             f"- Keras float accuracy (held-out): {model['keras_accuracy']:.2%}"]
    pruned = model.get("pruning")
    if pruned:
        lines += [f"- pruning: {pruned['schedule']}, achieved {pruned['sparsity']:.1%} over the "
                  "pruned weights", "", "| layer | weight | shape | sparsity |", "|---|---|---|---:|"]
        lines += [f"| {r['layer']} | {r['weight']} | {r['shape']} | {r['sparsity']:.1%} |"
                  for r in pruned["layers"]]
    if model.get("pqat"):
        lines += ["", f"- sparsity after prune-preserving QAT: {model['pqat']['sparsity']:.1%}"]
    if model.get("channel_pruning"):
        lines += ["", *_channel_pruning_lines(model["channel_pruning"])]
    if model.get("channel_pruned_sparse"):
        lines += ["", "- pruning of the channel-pruned model: achieved "
                  f"{model['channel_pruned_sparse']['sparsity']:.1%} over the pruned weights"]
    return "\n".join(lines)


def _channel_pruning_lines(record: dict) -> list[str]:
    (kind, target), = record["target"].items()
    before, after = record["mult_adds"]["before"], record["mult_adds"]["after"]
    lines = [f"- channel pruning ({record['criterion']}): target {kind} {target:.0%} of the float "
             f"model's, reached {record['achieved'][kind]:.1%} in {record['removal_steps']} "
             f"removal steps; mult-adds {before / 1e6:.2f} M -> {after / 1e6:.2f} M, parameters "
             f"{record['params']['before']:,} -> {record['params']['after']:,}"]
    if not record["reached"]:
        lines.append(f"- **target not reached**: {record['note']}")
    lines += ["", "| channel group | channels before | channels after | removal steps |",
              "|---|---:|---:|---:|"]
    lines += [f"| {name} | {g['channels_before']} | {g['channels_after']} | {g['removal_steps']} |"
              for name, g in record["groups"].items()]
    if record["unprunable"]:
        lines += ["", "Selected but kept whole: " + "; ".join(
            f"{name} ({why})" for name, why in record["unprunable"].items())]
    return lines


def render_markdown(results: dict) -> str:
    stages = " · ".join(f"{name} {seconds:.1f}s" for name, seconds in results["stage_seconds"].items())
    parts = [
        "# edgepipe report", "",
        f"Run of {results['created']} on {results['host']['platform']} "
        f"({results['host']['cpu_count']} CPUs). Stage times: {stages}.", "",
        "## Variants", "", variants_table(results["variants"]), "",
        "Sizes are the .tflite file and its gzip; sparsity is the fraction of exact zeros in the "
        "prunable weights of the Keras model the variant came from; errors and agreement compare "
        "each variant with that Keras model on the held-out split.", "",
        "## Benchmarks", "", benchmarks_table(results["variants"]), "",
        "## Custom ops", "", lowering_section(results["variants"]), "",
        "`auto` lowerings time each candidate on this host against the builtin ops it would "
        "replace (pipelines/lowering_choice.py) and keep the builtin ops unless the custom op "
        "is clearly faster.", "",
        "![accuracy vs size](plots/accuracy_vs_size.png) "
        "![accuracy vs latency](plots/accuracy_vs_latency.png)", "",
        "## Models", "", *[_model_section(m) + "\n" for m in results["models"]],
    ]
    return "\n".join(parts)


def _scatter(variants: list[dict], x_of, x_label: str, title: str, log_x: bool) -> bytes:
    """One panel per model (their sizes differ by orders of magnitude); variants
    that land on the same point share one label."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({v["model"] for v in variants})
    figure, axes_row = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5),
                                    squeeze=False)
    for axes, model in zip(axes_row[0], models):
        labels: dict[tuple[float, float], list[str]] = {}
        for v in variants:
            if v["model"] == model and x_of(v) is not None:
                labels.setdefault((x_of(v), v["accuracy"] * 100), []).append(v["name"])
        if labels:
            xs, ys = zip(*labels)
            axes.scatter(xs, ys)
            if log_x:
                axes.set_xscale("log")
        for (x, y), names in labels.items():
            axes.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(4, 4),
                          fontsize=7)
        axes.set_title(f"{title}: {model}")
        axes.set_xlabel(x_label)
        axes.set_ylabel("accuracy on held-out data (%)")
        axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def write_report(results: dict, output_dir: Path) -> None:
    variants = results["variants"]
    atomic.write_bytes(output_dir / "plots" / "accuracy_vs_size.png",
                       _scatter(variants, lambda v: v["file_bytes"] / 1024, "model file (KiB)",
                                "Accuracy vs size", log_x=True))
    atomic.write_bytes(output_dir / "plots" / "accuracy_vs_latency.png",
                       _scatter(variants, lambda v: _first_benchmark(v).get("mean_ms"),
                                "mean latency (ms, first benchmark target)",
                                "Accuracy vs latency", log_x=False))
    atomic.write_json(output_dir / "results.json", results)
    atomic.write_text(output_dir / "report.md", render_markdown(results))

"""Issue 14's channel pruning claims, re-run on the digits MobileNet.

The default run's MobileNet (pipelines/configs/default.yaml: builder, options, data
and float training) is trained once with a fixed seed, then pruned by
`pipelines.channel_pruning.prune_channels` with each criterion (taylor, l1,
random), once on the labels and once taught by the float model (soft targets plus
attention transfer between each resolution's last layer in both models, as
`distillation.attention_layers` pairs them by default). Each (criterion,
distillation) is one path with a fixed seed: pruned to the largest target fraction
of the float model's mult-adds and fine-tuned, then pruned on from there to the
next target, and so on (one run to the smallest target instead of one per target,
on this 2-core machine). Per point: the mult-adds and parameters reached, the
held-out test accuracy, and the float32 host latency at one thread on the native
runner, against the unpruned model in the same run. The same architecture is also
rebuilt at 224x224x3 (the same channels kept per group, untrained weights: speed
does not depend on them) to see whether latency falls with mult-adds at a
realistic size, where 32x32 runs are dominated by fixed overheads.
All models of the study are measured in one `measure_models` call, in alternating
rounds; latency is the median of the rounds' medians, which a burst of another
process in one round cannot move. Prints a Markdown table and a summary of what the rows say about the
issue's claims (Taylor beats l1 and random; distillation recovers accuracy; >= 1.6x
faster at 50% of the mult-adds).

    nice -n 19 .venv/bin/python -m pipelines.benchmarks.channel_pruning_study \\
        --json_output study.json --plot study.png --markdown_output study.md
"""
from __future__ import annotations

import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import app, flags

from android_bench.runner import RunSettings
from core import atomic
from core.keras_env import keras
from models.registry import build_model
from models.summary import summarize
from pipelines.benchmarks.bench_ops import measure_models
from pipelines.channel_pruning import CRITERIA, ChannelPruningSettings, Teacher, prune_channels
from pipelines.channel_surgery import channel_groups, shrink
from pipelines.config import ModelConfig, load_config
from pipelines.data import Dataset, load_dataset
from pipelines.distillation import DistillationSettings, attention_layers
from pipelines.optimize import train_float
from pipelines.train import accuracy, set_seed
from tflite.convert import convert_model

FLAGS = flags.FLAGS
flags.DEFINE_integer("epochs", None, "Float training epochs (default: the default config's "
                     "MobileNet train.epochs).")
flags.DEFINE_integer("finetune_epochs", 1, "Fine-tuning epochs after pruning.")
flags.DEFINE_integer("prune_every", 10, "Optimizer updates between removals.")
flags.DEFINE_integer("channels_per_step", 96, "Channels removed per surgery (each surgery "
                     "recompiles the step, so 1 would take hours).")
flags.DEFINE_float("learning_rate", 1e-3, "Learning rate of pruning and fine-tuning.")
flags.DEFINE_list("targets", ["0.75", "0.5", "0.3"], "Target fractions of the mult-adds.")
flags.DEFINE_list("criteria", list(CRITERIA), "Channel ranking criteria.")
flags.DEFINE_integer("rounds", 5, "Latency rounds (alternating order) of every model.")
flags.DEFINE_integer("seed", 0, "Seed of the float training and of every pruning run.")
flags.DEFINE_string("json_output", None, "Also write the rows as JSON here.")
flags.DEFINE_string("plot", None, "Also write a PNG plot here.")
flags.DEFINE_string("markdown_output", None, "Also write the table and claims here.")

LARGE_SHAPE = (224, 224, 3)
SPEEDUP_TARGET = 1.6  # the goal at 50% of the mult-adds
FLOAT = "float"  # the criterion column of the unpruned baseline


def mobilenet_config() -> ModelConfig:
    """The default run's MobileNet: the study prunes what the pipeline trains."""
    return next(model for model in load_config().models if model.builder == "mobilenet_v1")


def prune_path(float_model: keras.Model, data: Dataset, config: ModelConfig, criterion: str,
               distil: bool, targets: Sequence[float], log_dir: Path) -> list[dict]:
    """One pruning path from the float model through the targets (largest first): each
    point is pruned on from the previous point's fine-tuned model (a fraction of the
    float model's mult-adds), so a path costs one run to the smallest target, not one
    per target. Rows without latency, each with its model."""
    teacher = Teacher(float_model, DistillationSettings(
        attention_layers=attention_layers(float_model, ()))) if distil else None
    start = summarize(float_model).total_mult_adds
    model, fraction, steps, rows = float_model, 1.0, 0, []
    for target in sorted(targets, reverse=True):
        if fraction > target:  # else the previous removal already overshot this target
            settings = ChannelPruningSettings(
                criterion=criterion, target_mult_adds=target / fraction,
                prune_every=FLAGS.prune_every, channels_per_step=FLAGS.channels_per_step,
                finetune_epochs=FLAGS.finetune_epochs)
            model, record = prune_channels(model, data, settings,
                                           batch_size=config.train.batch_size,
                                           learning_rate=FLAGS.learning_rate,
                                           log_dir=log_dir / str(target), seed=FLAGS.seed,
                                           teacher=teacher)
            steps += record["removal_steps"]
        summary = summarize(model)
        fraction = summary.total_mult_adds / start
        rows.append({"criterion": criterion, "distillation": distil, "target": target,
                     "mult_adds_fraction": fraction, "mult_adds": summary.total_mult_adds,
                     "params": summary.total_params,
                     "accuracy": accuracy(model, data.x_test, data.y_test),
                     "removal_steps": steps, "model": model,
                     "channels": {group.name: group.size for group in channel_groups(model)}})
    return rows


def large_model(config: ModelConfig, num_classes: int, channels: dict[str, int]) -> keras.Model:
    """The MobileNet at 224x224x3 with as many `channels` in each group (same names)."""
    model = build_model(config.builder, LARGE_SHAPE, num_classes, config.options)
    return shrink(model, {group.name: list(range(channels[group.name]))
                          for group in channel_groups(model) if channels[group.name] < group.size})


def measure(rows: list[dict], config: ModelConfig, num_classes: int) -> None:
    """Add latency (µs, 1 thread) at 32x32 and 224x224 and mult-adds at 224 to every
    row, all models in one alternating run; the first row is the float baseline."""
    models = []
    for index, row in enumerate(rows):
        large = large_model(config, num_classes, row["channels"])
        row["mult_adds_224"] = summarize(large).total_mult_adds
        for size, model in (("32", row["model"]), ("224", large)):
            models.append(({"impl": f"{size}_{index}", "size": size},
                           convert_model(model, "none")))
    with tempfile.TemporaryDirectory(prefix="edgepipe-channel-study-") as folder:
        measured = iter(measure_models(models, Path(folder), "channel study", [1],
                                       FLAGS.rounds, RunSettings()))
        for row in rows:
            row["median_us_32"] = next(measured)["median_us"]
            row["median_us_224"] = next(measured)["median_us"]
    base = rows[0]
    for row in rows:
        row["mult_adds_fraction_224"] = row["mult_adds_224"] / base["mult_adds_224"]
        row["speedup_32"] = base["median_us_32"] / row["median_us_32"]
        row["speedup_224"] = base["median_us_224"] / row["median_us_224"]


def format_table(rows: Sequence[dict]) -> str:
    lines = ["| criterion | distillation | target | mult-adds fraction | mult-adds | params | "
             "accuracy | median µs 32x32 | speed-up 32x32 | mult-adds fraction 224 | "
             "median ms 224x224 | speed-up 224x224 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['criterion']} | {'yes' if r['distillation'] else 'no'} | {r['target']:.2f} | "
            f"{r['mult_adds_fraction']:.3f} | {r['mult_adds']:,} | {r['params']:,} | "
            f"{r['accuracy']:.2%} | {r['median_us_32']:.0f} | {r['speedup_32']:.2f}x | "
            f"{r['mult_adds_fraction_224']:.3f} | {r['median_us_224'] / 1000:.2f} | "
            f"{r['speedup_224']:.2f}x |")
    return "\n".join(lines)


def claims(rows: Sequence[dict], test_examples: int) -> str:
    """What the rows say about each of the issue's claims."""
    base, points = rows[0], rows[1:]
    by = {(r["criterion"], r["distillation"], r["target"]): r for r in points}
    settings = sorted({(r["distillation"], r["target"]) for r in points})
    lines = ["Claims (one seed; one test example is "
             f"{1 / test_examples:.2%} of the {test_examples} held-out examples):"]
    others = [c for c in ("l1", "random") if any(r["criterion"] == c for r in points)]
    if any(r["criterion"] == "taylor" for r in points) and others:
        compared = [(d, t) for d, t in settings if ("taylor", d, t) in by
                    and all((c, d, t) in by for c in others)]
        wins = [(d, t) for d, t in compared if all(
            by["taylor", d, t]["accuracy"] > by[c, d, t]["accuracy"] for c in others)]
        means = ", ".join(f"{c} {statistics.mean(by[c, d, t]['accuracy'] for d, t in compared):.2%}"
                          for c in ("taylor", *others))
        spread = max((max(by[c, d, t]["mult_adds_fraction"] for c in ("taylor", *others))
                      - min(by[c, d, t]["mult_adds_fraction"] for c in ("taylor", *others))
                      for d, t in compared), default=0.0)
        lines.append(f"- Taylor beats {' and '.join(others)}: strictly best in {len(wins)} of "
                     f"{len(compared)} (distillation, target) settings; mean accuracy {means} "
                     f"(mult-adds fractions compared differ by up to {spread:.3f}).")
    pairs = [(by[c, False, t], by[c, True, t]) for c, d, t in by if d and (c, False, t) in by]
    if pairs:
        gains = [(taught["accuracy"] - plain["accuracy"]) * test_examples
                 for plain, taught in pairs]
        lost = sum(base["accuracy"] - plain["accuracy"] for plain, _ in pairs)
        regained = sum(taught["accuracy"] - plain["accuracy"] for plain, taught in pairs)
        share = (f"it regains {regained / lost:.0%} of the accuracy lost without it" if lost > 0
                 else "nothing was lost without it")
        lines.append(f"- Distillation recovers accuracy: better in {sum(g > 0 for g in gains)}, "
                     f"equal in {sum(g == 0 for g in gains)}, worse in "
                     f"{sum(g < 0 for g in gains)} of {len(pairs)} points (mean "
                     f"{statistics.mean(gains):+.1f} test examples); {share} "
                     f"(float model {base['accuracy']:.2%}).")
    for target in sorted({r["target"] for r in points}, reverse=True):
        at = [r for r in points if r["target"] == target]
        lines.append(
            f"- Latency at target {target:.2f}: speed-up at 32x32 "
            f"{min(r['speedup_32'] for r in at):.2f}-{max(r['speedup_32'] for r in at):.2f}x; "
            f"at 224x224 {min(r['speedup_224'] for r in at):.2f}-"
            f"{max(r['speedup_224'] for r in at):.2f}x (mult-adds there "
            f"{min(r['mult_adds_fraction_224'] for r in at):.2f}-"
            f"{max(r['mult_adds_fraction_224'] for r in at):.2f} of the unpruned 224 model)"
            + (f"; >= {SPEEDUP_TARGET}x at 224 in "
               f"{sum(r['speedup_224'] >= SPEEDUP_TARGET for r in at)} of {len(at)} points"
               if target == 0.5 else "") + ".")
    for size in ("32", "224"):
        fractions = [r["mult_adds_fraction" + ("" if size == "32" else "_224")] for r in rows]
        times = [r[f"median_us_{size}"] for r in rows]
        lines.append(f"- Latency against mult-adds at {size}x{size}: rank correlation "
                     f"{spearman(fractions, times):+.2f} over {len(rows)} models "
                     "(+1: latency falls exactly in the order of the mult-adds).")
    return "\n".join(lines)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (ties by order; enough for measured times)."""
    ranks = [np.argsort(np.argsort(values)) for values in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def plot(rows: Sequence[dict], path: str) -> None:
    """Accuracy against mult-adds at 32x32, and speed-up against mult-adds at 224x224."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, points = rows[0], rows[1:]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key in sorted({(r["criterion"], r["distillation"]) for r in points}):
        line = [base, *sorted((r for r in points if (r["criterion"], r["distillation"]) == key),
                              key=lambda r: -r["mult_adds_fraction"])]
        label = f"{key[0]}{' + distillation' if key[1] else ''}"
        style = "--" if key[1] else "-"
        left.plot([r["mult_adds_fraction"] for r in line], [r["accuracy"] for r in line],
                  style, marker="o", label=label)
        right.plot([r["mult_adds_fraction_224"] for r in line], [r["speedup_224"] for r in line],
                   style, marker="o", label=label)
    left.axhline(base["accuracy"], color="grey", linestyle=":", label="float model")
    left.set(xlabel="mult-adds fraction (32x32)", ylabel="test accuracy",
             title="Accuracy of the pruned digits MobileNet")
    ideal = np.linspace(0.2, 1.0, 50)
    right.plot(ideal, 1 / ideal, color="grey", linestyle=":", label="1 / mult-adds fraction")
    right.axhline(SPEEDUP_TARGET, color="red", linestyle=":", label=f"{SPEEDUP_TARGET}x target")
    right.set(xlabel="mult-adds fraction (224x224x3)", ylabel="speed-up, float32, 1 thread",
              title="Latency of the same architectures at 224x224")
    for axes in (left, right):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str]) -> None:
    del argv
    config = mobilenet_config()
    data = load_dataset(config.data)
    set_seed(FLAGS.seed)
    float_model = build_model(config.builder, data.input_shape, data.num_classes, config.options)
    epochs = config.train.epochs if FLAGS.epochs is None else FLAGS.epochs
    with tempfile.TemporaryDirectory(prefix="edgepipe-channel-study-logs-") as logs:
        train_float(float_model, data, config.model_copy(
            update={"train": config.train.model_copy(update={"epochs": epochs})}),
            Path(logs) / "float")
        summary = summarize(float_model)
        rows = [{"criterion": FLOAT, "distillation": False, "target": 1.0,
                 "mult_adds_fraction": 1.0, "mult_adds": summary.total_mult_adds,
                 "params": summary.total_params,
                 "accuracy": accuracy(float_model, data.x_test, data.y_test),
                 "removal_steps": 0, "model": float_model,
                 "channels": {group.name: group.size for group in channel_groups(float_model)}}]
        for criterion in FLAGS.criteria:
            for distil in (False, True):
                rows += prune_path(float_model, data, config, criterion, distil,
                                   list(map(float, FLAGS.targets)),
                                   Path(logs) / f"{criterion}_{distil}")
    measure(rows, config, data.num_classes)
    for row in rows:
        del row["model"]
    text = f"{format_table(rows)}\n\n{claims(rows, len(data.y_test))}\n"
    print(text)
    if FLAGS.markdown_output:
        atomic.write_text(FLAGS.markdown_output, text)
    if FLAGS.json_output:
        atomic.write_json(FLAGS.json_output, rows)
    if FLAGS.plot:
        plot(rows, FLAGS.plot)


if __name__ == "__main__":
    app.run(main)

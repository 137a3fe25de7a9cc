"""Narang et al.'s GRU pruning claims, re-run on the digits sequence task.

Each model is trained from scratch with the same data, seed and epochs: a dense
baseline; the same layer pruned to ~90% during training with the threshold
schedule; one-shot pruning to the sparsity the gradual schedule reached (their
claim: gradual wins); and a larger layer pruned with the schedule against a dense
layer with as many non-zero weights (their claim: the large sparse model wins).
Prints a table; `--json_output` also writes the rows.

    .venv/bin/python -m pipelines.benchmarks.narang_study --json_output narang.json
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

from absl import app, flags

from core import atomic
from models.gru import gru_classifier
from pipelines.config import DataConfig, ModelConfig, PruningConfig, TrainConfig
from pipelines.data import load_dataset
from pipelines.optimize import prune, train_float
from pipelines.train import accuracy, set_seed, steps_per_epoch

FLAGS = flags.FLAGS
flags.DEFINE_integer("epochs", 40, "Training epochs of every model.")
flags.DEFINE_float("percentile", 0.99, "Narang's q for the gradual models, as a fraction: the "
                   "threshold ends at this percentile of the weight magnitudes when pruning "
                   "starts; weights grow during training, so q sits above the sparsity reached.")
flags.DEFINE_integer("units", 64, "Units of the baseline GRU.")
flags.DEFINE_integer("large_units", 128, "Units of the large sparse GRU.")
flags.DEFINE_string("json_output", None, "Also write the rows as JSON here.")

FEATURES = 8  # digits as sequences: 8 rows of 8 pixels


def kernel_params(units: int) -> int:
    """Input and recurrent kernel weights of one GRU layer (what pruning touches)."""
    return 3 * (FEATURES * units + units * units)


def dense_units_for(params: float) -> int:
    """Units of a dense GRU with about `params` kernel weights: 3(Fu + u²) = params."""
    return max(1, round((-FEATURES + math.sqrt(FEATURES ** 2 + 4 * params / 3)) / 2))


def train(label: str, units: int, data, schedule: str | None, sparsity: float = 0.0) -> dict:
    """Train one GRU classifier from scratch, pruning during training if asked."""
    set_seed(0)
    model = gru_classifier(data.input_shape, data.num_classes, units=[units])
    config = ModelConfig(name="narang_study", builder="gru_classifier",
                         train=TrainConfig(epochs=FLAGS.epochs, batch_size=32,
                                           learning_rate=0.003))
    logs = Path(tempfile.mkdtemp(prefix="narang-"))
    if schedule is None:
        train_float(model, data, config, logs)
        achieved = 0.0
    else:
        steps = FLAGS.epochs * steps_per_epoch(data, 32)
        # Gradual: Narang's threshold from 25% to 75% of training. One-shot: the whole
        # target at once at the same start step, then training goes on with the mask.
        begin = steps // 4
        target = FLAGS.percentile if schedule == "narang" else sparsity
        options = dict(schedule=schedule, target_sparsity=target, layers=["gru_.*"],
                       epochs=FLAGS.epochs, learning_rate=0.003, begin_step=begin)
        if schedule == "narang":
            options.update(end_step=int(steps * 0.75), frequency=10)
        else:
            options.update(end_step=begin, frequency=1)
        config = config.model_copy(update={"pruning": PruningConfig(**options)})
        model, record = prune(model, data, config, logs)
        achieved = record["sparsity"]
    return {"model": label, "units": units, "schedule": schedule or "dense",
            "kernel_params": kernel_params(units),
            "nonzero_kernel_params": round(kernel_params(units) * (1 - achieved)),
            "sparsity": achieved, "accuracy": accuracy(model, data.x_test, data.y_test)}


def main(argv: list[str]) -> None:
    del argv
    data = load_dataset(DataConfig(kind="sequence"))
    large = train(f"large sparse ({FLAGS.large_units} units)", FLAGS.large_units, data,
                  "narang")
    small = dense_units_for(large["nonzero_kernel_params"])
    gradual = train("pruned, gradual (Narang)", FLAGS.units, data, "narang")
    rows = [
        train("dense baseline", FLAGS.units, data, None),
        gradual,
        # One-shot at the sparsity the gradual schedule reached, for a fair comparison.
        train("pruned, one-shot", FLAGS.units, data, "constant", round(gradual["sparsity"], 3)),
        large,
        train(f"small dense, as many weights ({small} units)", small, data, None),
    ]
    print("| model | units | schedule | kernel params | non-zero | sparsity | accuracy |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['units']} | {r['schedule']} | {r['kernel_params']:,} | "
              f"{r['nonzero_kernel_params']:,} | {r['sparsity']:.1%} | {r['accuracy']:.2%} |")
    if FLAGS.json_output:
        atomic.write_json(FLAGS.json_output, rows)


if __name__ == "__main__":
    app.run(main)

"""Resume: a run stopped at a stage boundary of the default config's structure (every
kind of boundary: STOPS) finishes on the next run, reuses every stage it had
finished and ends exactly as an uninterrupted run; every saved Keras phase loads
back to the model that was saved.

One uninterrupted run (module fixture) copies its folder after each finished stage:
that copy is what an interrupted run leaves behind (a test checks it against a real
KeyboardInterrupt), so no test re-runs the prefix of a run. Each copy is resumed in
a worker process, as a rerun is a new process, two at a time while the rest runs.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from core.keras_env import keras
from models.registry import register
from pipelines.config import RunConfig, parse_config
from pipelines.data import load_dataset
from pipelines.run import ModelRun, run_pipeline
from pipelines.stages import StageRunner
from tflite.convert import convert_model

TINY_MOBILENET = "resume_tiny_mobilenet"
CNN_VARIANTS = ["float32", "int8", "pruned_int8", "qat_int8", "pqat_int8"]
RNN_VARIANTS = ["float32", "pruned_dynamic_range"]
PHASES = [("cnn", "float"), ("cnn", "pruned"), ("cnn", "qat"), ("cnn", "pqat"),
          ("rnn", "float"), ("rnn", "pruned")]


def variant_stages(model: str, variants: list[str]) -> list[tuple[str, str]]:
    return [(model, f"{step}_{v}") for v in variants for step in ("convert", "validate")]


# Every stage of a full run, in the order the pipeline runs them.
STAGES = (PHASES[:4] + variant_stages("cnn", CNN_VARIANTS)
          + PHASES[4:] + variant_stages("rnn", RNN_VARIANTS))
TRAINING = set(PHASES)
# The boundaries a stopped run is resumed from: after every training phase, and after
# each kind of variant stage (a convert with its validate next, a validate with the
# next convert next, the QAT conversion, the last stage of a model, a sparse
# conversion, the whole run): the other boundaries repeat one of these.
STOPS = sorted({STAGES.index(stage) + 1 for stage in (
    *PHASES, ("cnn", "convert_float32"), ("cnn", "validate_float32"),
    ("cnn", "convert_qat_int8"), ("cnn", "validate_pqat_int8"),
    ("rnn", "convert_pruned_dynamic_range"), STAGES[-1])})


def conv_bn_relu(x, layer: keras.layers.Layer):
    x = layer(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name=f"{layer.name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{layer.name}_relu")(x)


@register(TINY_MOBILENET)
def tiny_mobilenet(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """MobileNet v1's stem and first depthwise-separable block, named as
    models/mobilenet.py names them: the layers pruning and QAT see in the default
    model, at a fraction of its graph-building time."""
    inputs = keras.Input(input_shape, name="input")
    x = conv_bn_relu(inputs, keras.layers.Conv2D(8, 3, strides=2, padding="same",
                                                 use_bias=False, name="conv1"))
    x = conv_bn_relu(x, keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False,
                                                     name="conv_dw_1"))
    x = conv_bn_relu(x, keras.layers.Conv2D(16, 1, use_bias=False, name="conv_pw_1"))
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="tiny_mobilenet")


def run_config(output_dir: Path, representative_samples: int = 8) -> RunConfig:
    """The default config's stages (pruning, QAT and prune-preserving QAT on a
    MobileNet, pruning on a GRU), on little data: one batch per epoch."""
    data = {"source": "digits", "test_fraction": 0.8, "val_fraction": 0.0}
    train = {"epochs": 2, "batch_size": 512}
    return parse_config({
        "output_dir": str(output_dir), "seed": 0,
        "models": [
            {"name": "cnn", "builder": TINY_MOBILENET, "train": train,
             "data": {**data, "kind": "image", "resolution": 16},
             "pruning": {"target_sparsity": 0.5, "layers": ["conv_pw_.*"], "epochs": 4,
                         "frequency": 1},
             "qat": {"enabled": True, "prune_preserving": True, "epochs": 1},
             "representative_samples": representative_samples, "variants": CNN_VARIANTS},
            {"name": "rnn", "builder": "gru_classifier", "options": {"units": [8]},
             "train": train, "data": {**data, "kind": "sequence"},
             "pruning": {"schedule": "narang", "target_sparsity": 0.7, "layers": ["gru_.*"],
                         "epochs": 4, "frequency": 1},
             # `auto` times SparseGRU on the host: its choice and timings are not
             # reproducible byte for byte, the builtin conversion is.
             "gru_lowering": "builtin", "variants": RNN_VARIANTS}],
        "benchmark": {"targets": ["host"], "threads": [1], "warmup_runs": 0, "warmup_min_secs": 0,
                      "num_runs": 1}})


@dataclasses.dataclass
class StageLog:
    """Stages in the order a run finished them, and those of them it computed."""

    finished: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    computed: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def watch_stages(monkeypatch: pytest.MonkeyPatch,
                 after_stage: Callable[[int], None] | None = None) -> StageLog:
    """Record the stages a run finishes and those it computes (not reused), and
    call `after_stage(count)` after each finished stage."""
    log = StageLog()
    run = StageRunner.run

    def watched(self, model, stage, key, outputs, compute, **options):
        def counted():
            log.computed.append((model, stage))
            return compute()

        record = run(self, model, stage, key, outputs, counted, **options)
        log.finished.append((model, stage))
        if after_stage:
            after_stage(len(log.finished))
        return record

    monkeypatch.setattr(StageRunner, "run", watched)
    return log


@dataclasses.dataclass
class Baseline:
    root: Path
    results: dict
    models: dict[tuple[str, str], keras.Model]  # the in-memory model of each phase
    resumed: dict[int, Future]  # resume_copy of the folder after that many stages

    @property
    def folder(self) -> Path:
        return self.root / "run"

    def after(self, stages: int) -> Path:
        """The run folder as it was when `stages` stages had finished."""
        return self.root / f"after_{stages}"


def outcome(results: dict) -> dict:
    """What a run measured, without latencies (they differ from run to run)."""
    return {"models": results["models"],
            "variants": [{k: v for k, v in row.items() if k != "benchmarks"}
                         for row in results["variants"]]}


def manifests(folder: Path) -> dict[str, dict]:
    """Every stage's key and record (histories, accuracies, validation errors)."""
    return {str(p.relative_to(folder)): json.loads(p.read_text())
            for p in sorted(folder.glob("*/stages/*.json"))}


def flatbuffers(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.glob("*/tflite/*.tflite"))}


def resume(folder: Path, monkeypatch: pytest.MonkeyPatch, seed: int, **config
           ) -> tuple[dict, StageLog]:
    """Run again, from another random state than the first run had (as a new process
    would)."""
    log = watch_stages(monkeypatch)
    keras.utils.set_random_seed(seed)
    return run_pipeline(run_config(folder, **config)), log


def resume_copy(interrupted: Path, folder: Path, seed: int) -> tuple[StageLog, dict]:
    """Resume a copy of an interrupted run's folder (in a worker process)."""
    shutil.copytree(interrupted, folder)
    with pytest.MonkeyPatch.context() as patch:
        results, log = resume(folder, patch, seed)
    return log, outcome(results)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Iterator[Baseline]:
    """The uninterrupted run; after each of its stages, its folder is copied and a
    worker starts resuming the copy."""
    root = tmp_path_factory.mktemp("resume")
    models, resumed = {}, {}
    keras_model = ModelRun.keras_model

    def remembered(self, phase):
        model = models[self.config.name, phase] = keras_model(self, phase)
        return model

    def snapshot(count: int) -> None:
        shutil.copytree(root / "run", root / f"after_{count}")
        if count in STOPS:
            resumed[count] = pool.submit(resume_copy, root / f"after_{count}",
                                         root / f"resumed_{count}", count)

    workers = min(2, os.cpu_count() or 1)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ModelRun, "keras_model", remembered)
            log = watch_stages(patch, snapshot)
            results = run_pipeline(run_config(root / "run"))
        assert log.finished == log.computed == STAGES
        assert set(models) == TRAINING
        yield Baseline(root, results, models, resumed)


@pytest.mark.parametrize("model,phase", PHASES)
def test_a_saved_phase_loads_back_to_the_model_that_was_saved(baseline, model, phase):
    """Same outputs in Keras, and the same int8 TFLite model converted from it."""
    config = run_config(baseline.folder)
    model_config = next(m for m in config.models if m.name == model)
    data = load_dataset(model_config.data)
    saved = baseline.models[model, phase]
    loaded = ModelRun(model_config, config, StageRunner(baseline.folder), data,
                      None).keras_model(phase)
    assert loaded is not saved
    x = data.x_test[:64]
    assert np.max(np.abs(loaded(x, training=False).numpy()
                         - saved(x, training=False).numpy())) <= 1e-6
    assert (convert_model(loaded, "int8", representative_data=data.x_train[:8])
            == convert_model(saved, "int8", representative_data=data.x_train[:8]))


def test_an_interrupted_run_leaves_what_the_resume_tests_start_from(
        baseline, tmp_path, monkeypatch):
    """The issue's case: stopped between prune-preserving QAT and the conversions."""
    finished = STAGES.index(("cnn", "pqat")) + 1
    folder = tmp_path / "run"
    shutil.copytree(baseline.after(finished - 1), folder)

    def interrupt(count: int) -> None:
        if count == finished:
            raise KeyboardInterrupt

    log = watch_stages(monkeypatch, interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(run_config(folder))
    assert log.computed == [("cnn", "pqat")]
    assert manifests(folder) == manifests(baseline.after(finished))
    assert ({p.relative_to(folder) for p in folder.rglob("*") if "logs" not in p.parts}
            == {p.relative_to(baseline.after(finished))
                for p in baseline.after(finished).rglob("*") if "logs" not in p.parts})


def test_new_representative_samples_reconvert_the_qat_variants(baseline, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    shutil.copytree(baseline.folder, folder)
    results, log = resume(folder, monkeypatch, seed=1, representative_samples=16)
    qat_stages = {("cnn", f"{step}_{v}") for v in ("qat_int8", "pqat_int8")
                  for step in ("convert", "validate")}
    assert qat_stages <= set(log.computed)
    assert not TRAINING & set(log.computed)
    rows = {(row["model"], row["name"]): row for row in results["variants"]}
    for variant in ("qat_int8", "pqat_int8"):
        assert np.isfinite(rows["cnn", variant]["max_abs_error"])


@pytest.mark.parametrize("finished", STOPS,
                         ids=[f"after_{m}_{s}" for m, s in (STAGES[i - 1] for i in STOPS)])
def test_a_run_stopped_after_each_kind_of_stage_resumes_to_the_same_results(baseline, finished):
    log, measured = baseline.resumed[finished].result()
    assert log.finished == STAGES
    assert log.computed == STAGES[finished:]
    assert measured == outcome(baseline.results)
    folder = baseline.root / f"resumed_{finished}"
    assert manifests(folder) == manifests(baseline.folder)
    assert flatbuffers(folder) == flatbuffers(baseline.folder)

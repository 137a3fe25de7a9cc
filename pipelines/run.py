"""One pipeline run: data -> train -> optimize -> convert -> validate -> benchmark -> report.

Artifacts of a run folder (see README "What the default run produces"):
  <model>/keras/{float,pruned}.keras, {qat,pqat}.h5   trained Keras models
  <model>/tflite/<variant>.tflite                converted variants
  <model>/logs/<phase>/                          TensorBoard logs (with pruning summaries)
  <model>/stages/*.json                          per-stage manifests (cache keys + records)
  results.json, report.md, plots/*.png
  .edgepipe.lock                                 the lock a run holds (core/folder_lock.py)
"""
from __future__ import annotations

import datetime
import functools
import gzip
import importlib.metadata
import os
import platform
from pathlib import Path

import numpy as np
from absl import logging

from android_bench.runner import litert_library
from core import atomic
from core.folder_lock import locked_folder
from core.errors import UserError
from core.keras_env import keras, tf
from models.registry import build_model, builder_sources, ensure_tf_keras_model
from models.summary import summarize
from pipelines import (conversion, keras_io, lowering_choice, optimize, preflight,
                       pruning, report)
from pipelines.benchmark import measure as measure_target
from pipelines.config import ModelConfig, RunConfig, checked, to_dict, variant_stage
from pipelines.conversion import convert_variant, lowering_modes, lowering_versions
from pipelines.data import Dataset, load_dataset
from pipelines.fingerprints import (arrays_digest, files_digest, keras_model_digest,
                                    modules_digest)
from pipelines.stages import StageRunner, stage_key
from pipelines.train import accuracy, predict, set_seed
from pipelines.validate import ValidationFailed, check_float32, validate_variant
from tflite import convert as tflite_convert, flatbuffer_rewrite
from tflite.inspect import inspect_model
from tflite.ops import sparse_gru_lowering, sparse_separable_lowering
from tflite.runtime.binding import library_path as runtime_library_path

TRAINING_PHASES = ("float", "pruned", "qat", "pqat", "channel_pruned", "channel_pruned_sparse")
# What results.json keeps of the channel pruning phase's record (the stage manifest
# keeps all of it: every removal step and the loss curves).
CHANNEL_PRUNING_SUMMARY = ("criterion", "target", "reached", "achieved", "note", "params",
                           "mult_adds", "channels", "removal_steps", "groups", "unprunable")


class ModelRun:
    """The stages of one configured model inside a run folder."""

    def __init__(self, config: ModelConfig, run: RunConfig, stages: StageRunner,
                 data: Dataset, model: keras.Model | None):
        self.config = config
        self.run = run
        self.stages = stages
        self.data = data
        self.given_model = model
        self.folder = Path(run.output_dir) / config.name
        self.keys: dict[str, str] = {"data": arrays_digest(
            data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test)}
        self.records: dict[str, dict] = {}
        self._keras: dict[str, keras.Model] = {}
        self._keras_outputs: dict[str, np.ndarray] = {}

    # -- training phases -------------------------------------------------------------

    def plan(self) -> None:
        """Every training phase's key, before any phase runs: the float model's comes
        from the data, the builder's code or saved file (or the in-memory model's
        weights) and the training settings; each later phase's from the phase it
        starts from and its own settings. The saved file's name is in each key, so a
        change of save format is a new result."""
        c = self.config
        self.keys["model"] = (keras_model_digest(self.given_model) if self.given_model is not None
                              else stage_key("model", c.builder, c.options,
                                             files_digest(builder_sources(c.builder))))
        self._plan_phase("float", self.keys["data"], self.keys["model"], c.train.model_dump(),
                         self.run.seed)
        # The teacher is the float model, whose key every phase already has.
        taught = [c.distillation.model_dump()] if c.distillation.enabled else []
        if c.pruning.enabled:
            self._plan_phase("pruned", self.keys["float"], c.pruning.model_dump(), *taught)
        if c.qat.enabled:
            self._plan_phase("qat", self.keys["float"], c.qat.model_dump(), *taught)
        if c.qat.prune_preserving and c.pruning.enabled:
            self._plan_phase("pqat", self.keys["pruned"], c.qat.model_dump(), *taught)
        if c.channel_pruning.enabled:
            self._plan_phase("channel_pruned", self.keys["float"],
                             c.channel_pruning.model_dump(), self.run.seed, *taught)
        if any(variant_stage(v)[0] == "channel_pruned_sparse" for v in c.variants):
            self._plan_phase("channel_pruned_sparse", self.keys["channel_pruned"],
                             c.pruning.model_dump(), *taught)

    def _plan_phase(self, phase: str, *inputs) -> None:
        self.keys[phase] = stage_key(phase, *inputs, keras_io.phase_path(self.folder, phase).name)

    def check_feasible(self) -> None:
        """Ask the untrained model what the phases still to train can handle
        (pipelines/preflight.py); nothing to ask when every phase is saved."""
        pending = {phase for phase in TRAINING_PHASES if phase in self.keys and
                   self.stages.cached(self.config.name, phase, self.keys[phase],
                                      [keras_io.phase_path(self.folder, phase)]) is None}
        if pending:
            with self.stages.timed("preflight"):
                preflight.check_phases(self._initial_model(), self.data, self.config, pending)

    def _phase(self, phase: str, compute) -> None:
        """Run one Keras phase whose output is its saved model (keras_io.phase_path).
        Each phase starts from the run's seed, so a resumed run trains what an
        uninterrupted one would."""
        path = keras_io.phase_path(self.folder, phase)

        def run_phase() -> dict:
            set_seed(self.run.seed)
            model, record = compute()
            keras_io.save(model, path)
            self._keras[phase] = model
            return record

        self.records[phase] = self.stages.run(self.config.name, phase, self.keys[phase], [path],
                                              run_phase)

    def keras_model(self, phase: str) -> keras.Model:
        if phase not in self._keras:
            self._keras[phase] = keras_io.load(keras_io.phase_path(self.folder, phase))
        return self._keras[phase]

    def _initial_model(self) -> keras.Model:
        if self.given_model is not None:
            ensure_tf_keras_model(self.given_model)
            return self.given_model
        return build_model(self.config.builder, self.data.input_shape, self.data.num_classes,
                           self.config.options)

    def train(self) -> None:
        c = self.config

        def compute():
            model = self._initial_model()
            history = (optimize.train_float(model, self.data, c, self.folder / "logs" / "float")
                       if c.train.epochs else {})
            return model, {"history": history,
                           "keras_accuracy": accuracy(model, self.data.x_test, self.data.y_test)}

        self._phase("float", compute)

    def optimize(self) -> None:
        c = self.config
        logs = self.folder / "logs"

        def teacher() -> keras.Model | None:
            return self.keras_model("float") if c.distillation.enabled else None

        if "pruned" in self.keys:
            self._phase("pruned", lambda: optimize.prune(
                self.keras_model("float"), self.data, c, logs / "pruned", teacher()))
        if "qat" in self.keys:
            self._phase("qat", lambda: optimize.quantize_aware(
                self.keras_model("float"), self.data, c, logs / "qat", teacher()))
        if "pqat" in self.keys:
            pruned_layers = sorted({r["layer"] for r in self.records["pruned"]["layers"]})
            self._phase("pqat", lambda: optimize.prune_preserving_qat(
                self.keras_model("pruned"), self.data, c, logs / "pqat", pruned_layers,
                teacher()))
        if "channel_pruned" in self.keys:
            self._phase("channel_pruned", lambda: optimize.channel_prune(
                self.keras_model("float"), self.data, c, logs / "channel_pruned", self.run.seed,
                teacher()))
        if "channel_pruned_sparse" in self.keys:
            self._phase("channel_pruned_sparse", lambda: optimize.prune(
                self.keras_model("channel_pruned"), self.data, c,
                logs / "channel_pruned_sparse", teacher()))

    # -- conversion, validation, benchmark -------------------------------------------

    def keras_outputs(self, phase: str) -> np.ndarray:
        if phase not in self._keras_outputs:
            self._keras_outputs[phase] = predict(self.keras_model(phase), self.data.x_test)
        return self._keras_outputs[phase]

    def convert(self, variant: str) -> tuple[str, dict]:
        phase, quantization = variant_stage(variant)
        path = self.folder / "tflite" / f"{variant}.tflite"
        samples = self.config.representative_samples
        modes = lowering_modes(self.config, phase, quantization)
        # Calibration data only shapes builtin int8 variants; measured choices depend on
        # this host, its runtime and the thread counts they are timed at.
        calibration = samples if quantization == "int8" else None
        measured = [_host_cpu(), _runtime_digest(), self.run.benchmark.threads] \
            if "auto" in modes.values() else None
        key = stage_key("convert", self.keys[phase], variant, calibration, tf.__version__, modes,
                        lowering_versions(modes), measured, _conversion_code())
        self.keys[f"convert_{variant}"] = key

        def compute() -> dict:
            model = self.keras_model(phase)
            flatbuffer, lowering = convert_variant(model, phase, quantization, modes,
                                                   self.data.x_train[:samples],
                                                   self.run.benchmark.threads)
            atomic.write_bytes(path, flatbuffer)
            weights = pruning.layer_sparsity(model)
            return {"path": str(path.relative_to(self.run.output_dir)),
                    "quantization": quantization,
                    "sparse_tensors": len(inspect_model(flatbuffer).sparse_tensors),
                    "file_bytes": len(flatbuffer),
                    "gzip_bytes": len(gzip.compress(flatbuffer, compresslevel=9)),
                    "sparsity": pruning.overall_sparsity(weights), "lowering": lowering}

        return key, self.stages.run(self.config.name, f"convert_{variant}", key, [path], compute,
                                    kind="convert")

    def validate(self, variant: str, convert_key: str) -> dict:
        phase, _ = variant_stage(variant)
        key = self.keys[f"validate_{variant}"] = stage_key("validate", convert_key,
                                                            self.keys["data"], _runtime_digest())
        path = self.folder / "tflite" / f"{variant}.tflite"
        return self.stages.run(
            self.config.name, f"validate_{variant}", key, [],
            lambda: validate_variant(path, self.keras_outputs(phase), self.data.x_test,
                                     self.data.y_test), kind="validate")

    def benchmark(self, variant: str) -> list[dict]:
        """Every target and thread count; finished measurements are journalled in
        <model>/benchmarks/<variant>.jsonl as they complete, and a later run (or a
        resumed one) skips those whose model, runner and settings are unchanged."""
        settings = self.run.benchmark
        path = self.folder / "tflite" / f"{variant}.tflite"
        journal = self.folder / "benchmarks" / f"{variant}.jsonl"
        records = []
        with self.stages.timed("benchmark"):
            for target in settings.targets:
                records += measure_target(target, path, settings, journal)
        return records

    def variants(self) -> list[dict]:
        rows, failures = [], []
        for variant in self.config.variants:
            convert_key, converted = self.convert(variant)
            validation = self.validate(variant, convert_key)
            if variant_stage(variant)[1] == "float32":
                try:
                    check_float32(self.config.name, variant, validation,
                                  self.run.validation.float32_tolerance)
                except ValidationFailed as e:
                    failures.append(str(e))
                    continue
            rows.append({"model": self.config.name, "name": variant, **converted, **validation,
                         **self.phase_cost(variant_stage(variant)[0]), "benchmarks": []})
        if failures:
            raise ValidationFailed("validation failed: " + " ".join(failures))
        for row in rows:
            row["benchmarks"] = self.benchmark(row["name"])
        return rows

    def summary(self) -> dict:
        c = self.config
        cost = self._float_cost
        entry = {"name": c.name, "builder": c.builder, "options": c.options,
                 "data": self.data.description, "input_shape": list(self.data.input_shape),
                 "num_classes": self.data.num_classes, "params": cost.total_params,
                 "mult_adds": cost.total_mult_adds,
                 "keras_accuracy": self.records["float"]["keras_accuracy"],
                 "stage_keys": dict(self.keys)}
        for phase, field in (("pruned", "pruning"), ("pqat", "pqat"),
                             ("channel_pruned_sparse", "channel_pruned_sparse")):
            if phase in self.records:
                record = self.records[phase]
                entry[field] = {k: record[k] for k in ("schedule", "sparsity", "layers")
                                if k in record}
        if "channel_pruned" in self.records:
            record = self.records["channel_pruned"]
            entry["channel_pruning"] = {k: record[k] for k in CHANNEL_PRUNING_SUMMARY}
        return entry

    def phase_cost(self, phase: str) -> dict[str, int]:
        """Parameters and mult-adds of a phase's model: channel pruning shrinks them;
        sparsity and QAT leave the float model's dense counts as they are."""
        if phase.startswith("channel_pruned"):
            record = self.records["channel_pruned"]
            return {"params": record["params"]["after"], "mult_adds": record["mult_adds"]["after"]}
        return {"params": self._float_cost.total_params,
                "mult_adds": self._float_cost.total_mult_adds}

    @functools.cached_property
    def _float_cost(self):
        """models.summary of the float model, counted once for the summary and every row."""
        return summarize(self.keras_model("float"))


@functools.cache
def _conversion_code() -> str:
    """The converter and lowering code, whose thresholds and encodings shape every
    .tflite file (a change to them reconverts)."""
    return modules_digest([tflite_convert, sparse_gru_lowering, sparse_separable_lowering,
                           flatbuffer_rewrite, conversion, lowering_choice])


@functools.cache
def _host_cpu() -> str:
    """What the `auto` lowering's timings were measured on."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        cpuinfo = ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{platform.machine()} {model} x{os.cpu_count()}"


@functools.cache
def _runtime_digest() -> str:
    """The native runtime and the LiteRT library validation runs on."""
    return stage_key("runtime", files_digest([runtime_library_path(), litert_library()]),
                     importlib.metadata.version("ai-edge-litert"))


def _host() -> dict:
    return {"platform": platform.platform(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "tensorflow": tf.__version__}


def run_pipeline(config: RunConfig, datasets: dict[str, Dataset] | None = None,
                 keras_models: dict[str, keras.Model] | None = None) -> dict:
    """Run every configured model through every stage and write the report.

    results.json and report.md keep the entries of models in them that this run
    did not run (e.g. `edgepipe run --models a`); the models run replace theirs.

    `datasets` and `keras_models` (by model name) let Python callers hand in a
    tf.data-derived Dataset or an in-memory tf_keras model instead of the config's.
    """
    datasets, keras_models = datasets or {}, keras_models or {}
    unknown = sorted((set(datasets) | set(keras_models)) - {m.name for m in config.models})
    if unknown:
        raise UserError(f"no model named {unknown[0]!r} in the config; models are "
                        f"{', '.join(m.name for m in config.models)}.")
    # Checked again as a whole: Python callers may have changed lists in place.
    config = checked(RunConfig, config.model_dump())
    output_dir = Path(config.output_dir)
    atomic.check_writable_folder(output_dir, "output_dir")
    with locked_folder(output_dir, "output_dir"):
        return _run_models(config, datasets, keras_models)


def _run_models(config: RunConfig, datasets: dict[str, Dataset],
                keras_models: dict[str, keras.Model]) -> dict:
    output_dir = Path(config.output_dir)
    previous = report.read_results(output_dir)
    stages = StageRunner(output_dir)
    runs = []
    for model_config in config.models:
        with stages.timed("data"):
            data = datasets.get(model_config.name) or load_dataset(model_config.data)
        run = ModelRun(model_config, config, stages, data, keras_models.get(model_config.name))
        run.plan()
        run.check_feasible()
        runs.append(run)
    model_entries, variant_rows = [], []
    for run in runs:
        logging.info("model %s: %s", run.config.name, run.config.builder)
        run.train()
        run.optimize()
        variant_rows += run.variants()
        model_entries.append(run.summary())
    results = report.build_results(
        {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "host": _host(), "config": to_dict(config),
         "stage_seconds": {k: round(v, 2) for k, v in stages.seconds.items()}},
        model_entries, variant_rows)
    results = report.merge_results(previous, results)
    report.write_report(results, output_dir)
    return results

"""Run configuration: YAML files checked into typed dataclasses.

Every section is a dataclass, so a misspelt key is caught when the file is read
(with the list of valid keys) instead of being silently ignored mid-run.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from android_bench.runner import RunSettings
from core.errors import UserError

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"

QUANTIZATIONS = ("float32", "dynamic_range", "int8", "float16")
PRUNING_SCHEDULES = ("polynomial_decay", "constant", "narang", "m_by_n")
GRU_LOWERINGS = ("builtin", "sparse_gru")
# Variants SparseGRU serves: float32 weights, or int8 weights with float activations.
SPARSE_GRU_QUANTIZATIONS = ("float32", "dynamic_range")


@dataclass
class DataConfig:
    """Where the examples come from and how they are split."""

    source: str = "digits"  # "digits", a .npz file, or an image folder (class per sub-folder)
    kind: str = "image"  # digits only: "image" (CNN) or "sequence" (rows as time steps)
    resolution: int = 32  # images are resized to resolution x resolution
    channels: int = 1  # image folders: 1 (grayscale) or 3 (RGB)
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    seed: int = 0


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 2e-3


@dataclass
class PruningConfig:
    """TFMOT pruning fine-tune of the trained float model.

    `layers` are regular expressions over layer names; matched layers are wrapped
    with prune_low_magnitude. Steps count optimizer steps of the pruning phase.
    For the "narang" schedule, begin/ramp/end steps and frequency are Narang et
    al.'s start_itr/ramp_itr/end_itr/freq, and `target_sparsity` picks q as that
    percentile of each layer's absolute weights.
    """

    enabled: bool = True
    schedule: str = "polynomial_decay"
    target_sparsity: float = 0.8
    initial_sparsity: float = 0.0
    begin_step: int = 0
    ramp_step: int | None = None  # narang only; default: 40% of the way to end_step
    end_step: int | None = None  # default: half of the pruning phase's steps
    frequency: int = 20
    block_size: list[int] = field(default_factory=lambda: [1, 1])
    m_by_n: list[int] = field(default_factory=lambda: [2, 4])  # m_by_n schedule only
    layers: list[str] = field(default_factory=lambda: [".*"])
    epochs: int = 8
    learning_rate: float = 5e-4


@dataclass
class QatConfig:
    """Quantization-aware training (from the float model) and prune-preserving QAT
    (from the pruned model, keeping its zeros)."""

    enabled: bool = False
    prune_preserving: bool = False
    epochs: int = 2
    learning_rate: float = 1e-4


@dataclass
class ModelConfig:
    name: str
    builder: str  # registry name, "package.module:function", or a saved model path
    options: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    qat: QatConfig = field(default_factory=QatConfig)
    variants: list[str] = field(default_factory=lambda: ["float32", "int8"])
    representative_samples: int = 200
    # "sparse_gru": every GRU layer converts to one SparseGRU custom op (tflite/ops/SPARSE_GRU.md)
    # instead of the builtin WHILE loop.
    gru_lowering: str = "builtin"


@dataclass
class BenchmarkConfig:
    """Targets are "host", device serials (as `adb devices` lists them) or "all"
    devices; every target runs the native runner for each thread count. How it
    measures defaults to RunSettings' defaults, the project's one set of them."""

    targets: list[str] = field(default_factory=lambda: ["host"])
    threads: list[int] = field(default_factory=lambda: [1])
    warmup_runs: int = RunSettings.warmup_runs
    warmup_min_secs: float = RunSettings.warmup_min_secs
    num_runs: int = RunSettings.num_runs
    min_secs: float = RunSettings.min_secs
    affinity: str | None = RunSettings.affinity  # taskset CPU mask in hex, e.g. "f0"
    # Shapes of dynamic inputs, benchmark_model's syntax ("a,b" and "1,224,224,3:1,20").
    input_layer: str = RunSettings.input_layer
    input_layer_shape: str = RunSettings.input_layer_shape
    max_tensor_bytes: int = RunSettings.max_tensor_bytes  # 0: the runtime's default
    device_runner: str | None = None  # default: the host build in .native/
    device_libraries: list[str] = field(default_factory=list)  # default: the wheel's libLiteRt.so


@dataclass
class ValidationConfig:
    float32_tolerance: float = 1e-4  # max abs error allowed between float32 TFLite and Keras


@dataclass
class RunConfig:
    models: list[ModelConfig]
    output_dir: str = "runs/default"
    seed: int = 0
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


def variant_stage(variant: str) -> tuple[str, str]:
    """Split a variant name into (training stage, quantization): "pruned_int8" ->
    ("pruned", "int8"), "float32" -> ("float", "float32")."""
    for stage in ("pruned", "pqat", "qat"):
        if variant.startswith(stage + "_"):
            return stage, variant[len(stage) + 1:]
    return "float", variant


def _check_variant(model: ModelConfig, variant: str) -> None:
    stage, quantization = variant_stage(variant)
    if quantization not in QUANTIZATIONS:
        raise UserError(
            f"model {model.name!r}: unknown variant {variant!r}. A variant is a quantization "
            f"({', '.join(QUANTIZATIONS)}), optionally prefixed with pruned_, qat_ or pqat_ "
            "(e.g. pruned_int8).")
    if stage in ("qat", "pqat") and quantization != "int8":
        raise UserError(f"model {model.name!r}: variant {variant!r}: QAT models convert to int8 "
                        f"only; use {stage}_int8.")
    if stage == "pruned" and not model.pruning.enabled:
        raise UserError(f"model {model.name!r}: variant {variant!r} needs pruning.enabled: true.")
    if stage == "qat" and not model.qat.enabled:
        raise UserError(f"model {model.name!r}: variant {variant!r} needs qat.enabled: true.")
    if stage == "pqat" and not (model.qat.prune_preserving and model.pruning.enabled):
        raise UserError(f"model {model.name!r}: variant {variant!r} needs pruning.enabled: true "
                        "and qat.prune_preserving: true.")


def _check_model(model: ModelConfig) -> None:
    where = f"model {model.name!r}"
    if model.pruning.schedule not in PRUNING_SCHEDULES:
        raise UserError(f"{where}: pruning.schedule {model.pruning.schedule!r} is not one of "
                        f"{', '.join(PRUNING_SCHEDULES)}.")
    if not 0.0 <= model.pruning.target_sparsity < 1.0:
        raise UserError(f"{where}: pruning.target_sparsity must be in [0, 1), "
                        f"got {model.pruning.target_sparsity}.")
    if model.pruning.frequency < 1:
        raise UserError(f"{where}: pruning.frequency must be at least 1 step.")
    if len(model.pruning.block_size) != 2 or len(model.pruning.m_by_n) != 2:
        raise UserError(f"{where}: pruning.block_size and pruning.m_by_n take two integers, "
                        "e.g. [1, 4] and [2, 4].")
    if model.data.kind not in ("image", "sequence"):
        raise UserError(f"{where}: data.kind must be 'image' or 'sequence', "
                        f"got {model.data.kind!r}.")
    if model.train.epochs < 0 or model.train.batch_size < 1:
        raise UserError(f"{where}: train.epochs must be >= 0 (0 keeps a saved model's weights) "
                        "and train.batch_size >= 1.")
    if not model.variants:
        raise UserError(f"{where}: variants is empty; list at least one, e.g. [float32].")
    # Adam with 0 never learns, with a negative rate it climbs the loss, and NaN
    # turns every weight into NaN.
    for name, rate in (("train", model.train.learning_rate),
                       ("pruning", model.pruning.learning_rate), ("qat", model.qat.learning_rate)):
        if not (math.isfinite(rate) and rate > 0):
            raise UserError(f"{where}: {name}.learning_rate is {rate}; it must be a finite number "
                            "above 0, e.g. 1e-3.")
    if model.gru_lowering not in GRU_LOWERINGS:
        raise UserError(f"{where}: gru_lowering must be one of {', '.join(GRU_LOWERINGS)}, "
                        f"got {model.gru_lowering!r}.")
    if model.gru_lowering == "sparse_gru":
        for variant in model.variants:
            if variant_stage(variant)[1] not in SPARSE_GRU_QUANTIZATIONS:
                raise UserError(
                    f"{where}: variant {variant!r} cannot use gru_lowering: sparse_gru, which "
                    "keeps activations float and serves only float32 and dynamic_range variants "
                    "(optionally pruned_). Drop the variant or set gru_lowering: builtin.")
    for variant in model.variants:
        _check_variant(model, variant)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys by name."""
    if not isinstance(data, dict):
        raise UserError(f"config {where or 'file'}: expected a mapping, got {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"config {where or 'top level'}: unknown key {unknown[0]!r}; valid keys "
                        f"are {', '.join(sorted(fields))}.")
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        kwargs[key] = _convert(hints[key], value, path)
    try:
        return cls(**kwargs)
    except TypeError as e:
        missing = [n for n, f in fields.items() if n not in data
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        raise UserError(f"config {where or 'top level'}: missing key {missing[0]!r}.") from e


def _convert(tp: Any, value: Any, path: str) -> Any:
    """Check `value` against type hint `tp` (dataclass, list[...], scalars, Optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(tp) if t is not type(None)]
        return None if value is None else _convert(options[0], value, path)
    if _is_dataclass_type(tp):
        return _build(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"config {path}: expected a list, got {value!r}.")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config {path}: expected a mapping, got {value!r}.")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp)
                                              and not (tp is int and isinstance(value, bool))):
        raise UserError(f"config {path}: expected {tp.__name__}, got {value!r}.")
    return value


def parse_config(data: dict[str, Any]) -> RunConfig:
    """Typed, checked configuration from a plain mapping (as read from YAML)."""
    config = _build(RunConfig, data, "")
    names = [m.name for m in config.models]
    if not names:
        raise UserError("config: models is empty; add at least one model.")
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise UserError(f"config: model name {sorted(duplicates)[0]!r} is used twice; names "
                        "must be unique (they name the artifacts).")
    for model in config.models:
        _check_model(model)
    return config


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist; pass --config with a YAML "
                        f"file, or omit it to use the default ({DEFAULT_CONFIG}).")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping at the top level.")
    return data


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply "dotted.key=value" to the raw config; models are addressed by name,
    e.g. "models.gru.train.epochs=3". The value is parsed as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise UserError(f"--set {assignment!r}: expected KEY=VALUE, e.g. "
                        "models.mobilenet.train.epochs=3.")
    value = yaml.safe_load(raw)
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            matches = [m for m in node if isinstance(m, dict) and m.get("name") == part]
            if not matches:
                names = [m.get("name") for m in node if isinstance(m, dict)]
                raise UserError(f"--set {assignment!r}: no model named {part!r}; models are "
                                f"{', '.join(map(str, names))}.")
            node = matches[0]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise UserError(f"--set {assignment!r}: {'.'.join(parts[:i + 1])} is not a section.")
    if not isinstance(node, dict):
        raise UserError(f"--set {assignment!r}: {'.'.join(parts[:-1])} is not a section.")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    data = load_yaml(path or DEFAULT_CONFIG)
    for assignment in overrides:
        apply_override(data, assignment)
    return parse_config(data)


def to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)

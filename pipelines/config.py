"""Run configuration: YAML files checked by pydantic models, in this one place.

Every section is a strict pydantic model with `extra="forbid"`, so a misspelt key,
a wrong type, an out-of-range number or an impossible combination is refused when
the file is read, with one message naming the key by its `--set` path, instead of
failing (or silently doing something else) mid-run.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from android_bench.runner import RunSettings
from core.errors import UserError
from tflite.runner_io import parse_input_layers

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"

QUANTIZATIONS = ("float32", "dynamic_range", "int8", "float16")
# Variants the custom ops serve: float32 weights, or int8 weights with float activations.
CUSTOM_OP_QUANTIZATIONS = ("float32", "dynamic_range")
# A model's name is its folder in the run folder and its key in `--set models.NAME...`.
MODEL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
# Folders of a run folder that are not models' (see pipelines/run.py).
RESERVED_NAMES = ("plots",)

Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]


def _usable_learning_rate(rate: float) -> float:
    """Adam with 0 never learns, with a negative rate it climbs the loss, and NaN or
    inf turn every weight into NaN."""
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"{rate} is not a usable learning rate; it must be a finite number "
                         "above 0, e.g. 1e-3.")
    return rate


LearningRate = Annotated[float, AfterValidator(_usable_learning_rate)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]


def _regular_expressions(layers: list[str]) -> list[str]:
    for i, pattern in enumerate(layers):
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"{pattern!r} (item {i}) is not a valid regular expression "
                             f"({e}); e.g. 'conv_pw_.*' selects conv_pw_1, conv_pw_2, ...")
    return layers


LayerPatterns = Annotated[list[str], AfterValidator(_regular_expressions)]
OpenFraction = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]


class Section(BaseModel):
    """Strict (no "3" for 3, no true for 1), closed to unknown keys, and checked again
    when a field is assigned (e.g. by the CLI's --threads)."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)

    def __setattr__(self, name: str, value: Any) -> None:
        """An assignment from Python (`config.benchmark.threads = [0]`): the UserError a
        file gives, the section named by its class. (Construction from Python raises
        pydantic's ValidationError: an overridden __init__ would also run for nested
        sections and hide their location.)"""
        try:
            super().__setattr__(name, value)
        except ValidationError as error:
            raise _user_error(type(self), {name: value}, error, type(self).__name__) from None


class DataConfig(Section):
    """Where the examples come from and how they are split."""

    source: Annotated[str, Field(min_length=1)] = "digits"  # "digits", a .npz, or an image folder
    kind: Literal["image", "sequence"] = "image"  # digits only: CNN images or rows as time steps
    resolution: Annotated[int, Field(ge=1, le=4096)] = 32  # images become resolution x resolution
    channels: Literal[1, 3] = 1  # image folders: grayscale or RGB
    test_fraction: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = 0.2
    val_fraction: Fraction = 0.1
    seed: Seed = 0

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataConfig:
        if self.test_fraction + self.val_fraction >= 1:
            raise ValueError(f"test_fraction {self.test_fraction} + val_fraction "
                             f"{self.val_fraction} leave nothing for training; keep their sum "
                             "below 1, e.g. 0.2 and 0.1.")
        return self


class TrainConfig(Section):
    epochs: Count = 20  # 0 keeps a saved model's weights
    batch_size: Positive = 32
    learning_rate: LearningRate = 2e-3


class PruningConfig(Section):
    """TFMOT pruning fine-tune of the trained float model.

    `layers` are regular expressions over layer names; matched layers are wrapped
    with prune_low_magnitude. Steps count optimizer steps of the pruning phase.
    For the "narang" schedule, begin/ramp/end steps and frequency are Narang et
    al.'s start_itr/ramp_itr/end_itr/freq, and `target_sparsity` picks q as that
    percentile of each layer's absolute weights.
    """

    enabled: bool = True
    schedule: Literal["polynomial_decay", "constant", "narang", "m_by_n"] = "polynomial_decay"
    target_sparsity: Fraction = 0.8
    initial_sparsity: Fraction = 0.0
    begin_step: Count = 0
    ramp_step: Count | None = None  # narang only; default: 40% of the way to end_step
    end_step: Positive | None = None  # default: half of the pruning phase's steps
    frequency: Positive = 20
    block_size: Annotated[list[Positive], Field(min_length=2, max_length=2)] = [1, 1]
    m_by_n: Annotated[list[Positive], Field(min_length=2, max_length=2)] = [2, 4]  # m_by_n only
    layers: Annotated[LayerPatterns, Field(min_length=1)] = [".*"]
    epochs: Positive = 8
    learning_rate: LearningRate = 5e-4

    @model_validator(mode="after")
    def _steps_and_shapes_agree(self) -> PruningConfig:
        m, n = self.m_by_n
        if m >= n:
            raise ValueError(f"m_by_n {self.m_by_n} keeps m of every n weights, so m must be "
                             "below n, e.g. [2, 4].")
        if self.schedule == "polynomial_decay" and self.initial_sparsity > self.target_sparsity:
            raise ValueError(f"initial_sparsity {self.initial_sparsity} is above target_sparsity "
                             f"{self.target_sparsity}; the schedule only ever adds zeros.")
        given = [s for s in (self.begin_step, self.ramp_step, self.end_step) if s is not None]
        if given != sorted(given):
            raise ValueError(f"the steps must satisfy begin_step <= ramp_step <= end_step; got "
                             f"{self.begin_step}, {self.ramp_step}, {self.end_step}.")
        return self


class QatConfig(Section):
    """Quantization-aware training (from the float model) and prune-preserving QAT
    (from the pruned model, keeping its zeros)."""

    enabled: bool = False
    prune_preserving: bool = False
    epochs: Count = 2
    learning_rate: LearningRate = 1e-4


class ChannelPruningConfig(Section):
    """Molchanov et al.'s iterative channel pruning of the trained float model
    (pipelines/channel_pruning.py): every `prune_every` updates the
    `channels_per_step` lowest-ranked feature maps go, until the model is down to
    `target_mult_adds` of its mult-adds (or `target_channels` of the selected
    channels); then `finetune_epochs` of fine-tuning. `layers` are regular
    expressions over channel groups' and their producers' names (empty: all)."""

    enabled: bool = False
    criterion: Literal["taylor", "l1", "random"] = "taylor"
    flops_regularization: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1e-3
    target_mult_adds: OpenFraction | None = 0.5
    target_channels: OpenFraction | None = None
    prune_every: Positive = 10
    # The paper removes one map at a time; every removal rebuilds and retraces the
    # model (seconds), so one would take hours on a MobileNet.
    channels_per_step: Positive = 16
    finetune_epochs: Count = 2
    layers: LayerPatterns = []
    learning_rate: LearningRate = 1e-3

    @model_validator(mode="before")
    @classmethod
    def _channels_replace_the_default_target(cls, data: Any) -> Any:
        """Giving target_channels alone means that target, not both."""
        if isinstance(data, dict) and data.get("target_channels") is not None \
                and "target_mult_adds" not in data:
            return {**data, "target_mult_adds": None}
        return data

    @model_validator(mode="after")
    def _one_target(self) -> ChannelPruningConfig:
        if (self.target_mult_adds is None) == (self.target_channels is None):
            raise ValueError("set exactly one of target_mult_adds and target_channels (the other "
                             f"null); got {self.target_mult_adds} and {self.target_channels}.")
        return self


class AttentionTransferConfig(Section):
    """Zagoruyko & Komodakis' attention transfer: `layers` are regular expressions over
    the float model's layer names, each matched layer paired with the student's layer
    of that name (empty: the last layer at each spatial size of the float model)."""

    enabled: bool = False
    beta: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1e3
    layers: LayerPatterns = []


class DistillationConfig(Section):
    """The float model teaches every fine-tuning phase (channel pruning, pruning, QAT,
    prune-preserving QAT) with Hinton's soft targets at `temperature`, weighted
    `alpha` against the labels' 1 - alpha (pipelines/distillation.py)."""

    enabled: bool = False
    temperature: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 4.0
    alpha: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.9
    attention_transfer: AttentionTransferConfig = AttentionTransferConfig()


# Training stages a variant's name starts with, longest first.
STAGE_PREFIXES = ("channel_pruned_sparse", "channel_pruned", "pruned", "pqat", "qat")


def variant_stage(variant: str) -> tuple[str, str]:
    """Split a variant name into (training stage, quantization): "pruned_int8" ->
    ("pruned", "int8"), "float32" -> ("float", "float32")."""
    for stage in STAGE_PREFIXES:
        if variant.startswith(stage + "_"):
            return stage, variant[len(stage) + 1:]
    return "float", variant


class ModelConfig(Section):
    name: str
    builder: Annotated[str, Field(min_length=1)]  # registry name, "module:function" or a path
    options: dict[str, Any] = {}
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    pruning: PruningConfig = PruningConfig()
    qat: QatConfig = QatConfig()
    channel_pruning: ChannelPruningConfig = ChannelPruningConfig()
    distillation: DistillationConfig = DistillationConfig()
    variants: Annotated[list[str], Field(min_length=1)] = ["float32", "int8"]
    representative_samples: Positive = 200
    # "sparse_gru": every GRU layer converts to one SparseGRU custom op (tflite/ops/SPARSE_GRU.md)
    # instead of the builtin WHILE loop; "sparse_separable": every depthwise-separable block
    # it can compute to one SparseSeparableConv (tflite/ops/SPARSE_SEPARABLE.md). "auto": in
    # pruned variants, the op only where it is faster on this host (pipelines/lowering_choice.py).
    gru_lowering: Literal["builtin", "sparse_gru", "auto"] = "auto"
    separable_lowering: Literal["builtin", "sparse_separable", "auto"] = "auto"

    @field_validator("name")
    @classmethod
    def _name_is_plain(cls, name: str) -> str:
        if not MODEL_NAME.fullmatch(name):
            raise ValueError(f"model name {name!r} is not a plain identifier; use a letter "
                             "followed by up to 63 letters, digits, _ or - (it names the model's "
                             "folder in output_dir), e.g. mobilenet_small.")
        if name.lower() in RESERVED_NAMES:
            raise ValueError(f"model name {name!r} is the run folder's {name.lower()}/ folder; "
                             "choose another name.")
        return name

    @model_validator(mode="after")
    def _variants_are_possible(self) -> ModelConfig:
        duplicated = sorted({v for v in self.variants if self.variants.count(v) > 1})
        if duplicated:
            raise ValueError(f"variant {duplicated[0]!r} is listed twice.")
        for variant in self.variants:
            self._check_variant(variant)
        return self

    def _check_variant(self, variant: str) -> None:
        stage, quantization = variant_stage(variant)
        if quantization not in QUANTIZATIONS:
            raise ValueError(
                f"unknown variant {variant!r}. A variant is a quantization "
                f"({', '.join(QUANTIZATIONS)}), optionally prefixed with "
                f"{', '.join(prefix + '_' for prefix in STAGE_PREFIXES)} (e.g. pruned_int8).")
        for key, op in (("gru_lowering", "sparse_gru"), ("separable_lowering", "sparse_separable")):
            if getattr(self, key) == op and quantization not in CUSTOM_OP_QUANTIZATIONS:
                raise ValueError(
                    f"variant {variant!r} cannot use {key}: {op}, which keeps activations "
                    "float and serves only float32 and dynamic_range variants (optionally "
                    f"pruned_). Drop the variant or set {key}: auto (builtin ops where the op "
                    "cannot serve).")
        if stage in ("qat", "pqat") and quantization != "int8":
            raise ValueError(f"variant {variant!r}: QAT models convert to int8 only; use "
                             f"{stage}_int8.")
        if stage == "pruned" and not self.pruning.enabled:
            raise ValueError(f"variant {variant!r} needs pruning.enabled: true.")
        if stage == "qat" and not self.qat.enabled:
            raise ValueError(f"variant {variant!r} needs qat.enabled: true.")
        if stage == "pqat" and not (self.qat.prune_preserving and self.pruning.enabled):
            raise ValueError(f"variant {variant!r} needs pruning.enabled: true and "
                             "qat.prune_preserving: true.")
        if stage.startswith("channel_pruned") and not self.channel_pruning.enabled:
            raise ValueError(f"variant {variant!r} needs channel_pruning.enabled: true.")
        if stage == "channel_pruned_sparse" and not self.pruning.enabled:
            raise ValueError(f"variant {variant!r} prunes the channel-pruned model's weights "
                             "with the pruning settings, so it needs pruning.enabled: true.")


class BenchmarkConfig(Section):
    """Targets are "host", device serials (as `adb devices` lists them) or "all"
    devices; every target runs the native runner for each thread count. How it
    measures defaults to RunSettings' defaults, the project's one set of them."""

    targets: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] = ["host"]
    threads: Annotated[list[Annotated[int, Field(ge=1, le=1024)]], Field(min_length=1)] = [1]
    warmup_runs: Count = RunSettings.warmup_runs
    warmup_min_secs: Seconds = RunSettings.warmup_min_secs
    num_runs: Positive = RunSettings.num_runs
    min_secs: Seconds = RunSettings.min_secs
    affinity: str | None = RunSettings.affinity  # taskset CPU mask in hex, e.g. "f0"
    # Shapes of dynamic inputs, benchmark_model's syntax ("a,b" and "1,224,224,3:1,20").
    input_layer: str = RunSettings.input_layer
    input_layer_shape: str = RunSettings.input_layer_shape
    max_tensor_bytes: Count = RunSettings.max_tensor_bytes  # 0: the runtime's default
    device_runner: str | None = None  # default: the host build in .native/
    device_libraries: list[str] = []  # default: the wheel's libLiteRt.so
    # LiteRT's official Android benchmark_model binary: also run on every device of its
    # ABI, on models without custom ops, beside our runner (android_bench/adb_harness.py).
    benchmark_model: str | None = None

    @field_validator("affinity")
    @classmethod
    def _affinity_is_a_mask(cls, affinity: str | None) -> str | None:
        if affinity is not None and not re.fullmatch(r"(0x)?[0-9a-fA-F]+", affinity):
            raise ValueError(f"{affinity!r} is not a CPU mask in hex as taskset takes it, e.g. "
                             "f0 for CPUs 4-7.")
        return affinity

    @field_validator("benchmark_model")
    @classmethod
    def _benchmark_model_exists(cls, path: str | None) -> str | None:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{path!r} is not a file: give the path of LiteRT's Android "
                             "benchmark_model binary (from LiteRT's releases), or leave it unset.")
        return path

    @model_validator(mode="after")
    def _targets_and_inputs_agree(self) -> BenchmarkConfig:
        if "all" in self.targets and set(self.targets) - {"all", "host"}:
            raise ValueError(f"targets {self.targets}: 'all' already means every device; list "
                             "serials or all, not both.")
        if self.benchmark_model and self.targets == ["host"]:
            raise ValueError("benchmark_model runs on Android devices only and the targets are "
                             "[host]; add device targets (e.g. all) or leave benchmark_model unset.")
        try:
            parse_input_layers(self.input_layer, self.input_layer_shape)
        except UserError as e:
            raise ValueError(str(e)) from None
        return self


class ValidationConfig(Section):
    # max abs error allowed between float32 TFLite and Keras
    float32_tolerance: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1e-4


class RunConfig(Section):
    models: Annotated[list[ModelConfig], Field(min_length=1)]
    output_dir: Annotated[str, Field(min_length=1)] = "runs/default"
    seed: Seed = 0
    benchmark: BenchmarkConfig = BenchmarkConfig()
    validation: ValidationConfig = ValidationConfig()

    @model_validator(mode="after")
    def _names_are_unique(self) -> RunConfig:
        # Case-insensitive: on macOS and Windows file systems "GRU" and "gru" are one folder.
        names = [m.name.lower() for m in self.models]
        twice = sorted({m.name for m in self.models if names.count(m.name.lower()) > 1})
        if twice:
            raise ValueError(f"model name {twice[0]!r} is used twice (names are compared "
                             "ignoring case); names must be unique, they name the artifacts.")
        return self


def checked(section: type[Section], data: Any, where: str = "config", flags: bool = False) -> Any:
    """`section` built from `data`; every problem in one UserError that names the key
    (models by name, as `--set` addresses them; `flags`: as --key, with no `where`
    prefix needed: the CLI names the command) and what would be valid."""
    try:
        return section.model_validate(data)
    except ValidationError as error:
        raise _user_error(section, data, error, where, flags) from None


def _user_error(section: type[Section], data: Any, error: ValidationError, where: str,
                flags: bool = False) -> UserError:
    problems = [_describe(section, data, e) for e in error.errors()]
    if flags:
        problems = ["--" + problem for problem in problems]
    return UserError((f"{where}: " if where else "") + " ".join(problems))


def _describe(section: type[Section], data: Any, error: dict) -> str:
    location = list(error["loc"])
    path = _dotted(location, data)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        parent = _section_at(section, location[:-1])
        keys = ", ".join(sorted(parent.model_fields)) if parent else "none"
        return f"{_dotted(location[:-1], data) or 'top level'}: unknown key {location[-1]!r}; " \
               f"valid keys are {keys}."
    if error["type"] == "missing":
        return f"{_dotted(location[:-1], data) or 'top level'}: missing key {location[-1]!r}."
    if error["type"] == "value_error":
        return f"{path}: {message}" if path else message
    return f"{path or 'top level'}: {message[0].lower()}{message[1:]} (got {error['input']!r})."


def _dotted(location: list, data: Any) -> str:
    """("models", 0, "train") -> "models.mobilenet.train" when model 0 has a name."""
    parts, node = [], data
    for i, part in enumerate(location):
        if isinstance(part, int):
            item = node[part] if isinstance(node, list) and _has(node, part) else None
            name = item.get("name") if isinstance(item, dict) else None
            if location[i - 1:i] == ["models"] and isinstance(name, str) and \
                    MODEL_NAME.fullmatch(name):
                parts[-1] += f".{name}"
            else:
                parts[-1] += f"[{part}]"
        else:
            parts.append(str(part))
        node = node[part] if isinstance(node, (list, dict)) and _has(node, part) else None
    return ".".join(parts)


def _has(node: list | dict, part: Any) -> bool:
    return part in node if isinstance(node, dict) else isinstance(part, int) and part < len(node)


def _section_at(section: type[Section], location: list) -> type[Section] | None:
    """The Section class a location points into, for listing its valid keys."""
    current: Any = section
    for part in location:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) else None
        if field is None:
            return None
        current = field.annotation
        args = getattr(current, "__args__", ())
        if args and isinstance(args[0], type) and issubclass(args[0], Section):
            current = args[0]
    return current if isinstance(current, type) and issubclass(current, Section) else None


def parse_config(data: dict[str, Any]) -> RunConfig:
    """Typed, checked configuration from a plain mapping (as read from YAML)."""
    return checked(RunConfig, data)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist; pass --config with a YAML "
                        f"file, or omit it to use the default ({DEFAULT_CONFIG}).")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping at the top level.")
    return data


def parse_yaml_value(text: str, what: str) -> Any:
    """A command-line value in YAML syntax ("3", "[1, 2]", "{alpha: 0.5}")."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = str(e).splitlines()[0]
        raise UserError(f"{what}: the value {text!r} is not valid YAML ({problem}); quote "
                        "strings that contain ':', '[' or '{', e.g. \"'a: b'\".") from None


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply "dotted.key=value" to the raw config; models are addressed by name,
    e.g. "models.gru.train.epochs=3". The value is parsed as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise UserError(f"--set {assignment!r}: expected KEY=VALUE, e.g. "
                        "models.mobilenet.train.epochs=3.")
    value = parse_yaml_value(raw, f"--set {assignment!r}")
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


def to_dict(config: Section) -> dict[str, Any]:
    return config.model_dump(mode="json")

"""Turn the config's model name into a tf_keras model.

A name is one of three things:
- a registered builder ("mobilenet_v1", "gru_classifier", or one added with
  `register`);
- a user builder "package.module:function", imported from sys.path or the current
  directory and called as `function(input_shape=..., num_classes=..., **options)`;
- a saved model: a `.keras` or `.h5` file or a SavedModel directory.

Every model is checked to be a tf_keras (Keras 2) model, because TFMOT cannot wrap
Keras 3 layers, and to match the data's input shape and number of classes.
"""
import contextlib
import difflib
import importlib
import inspect
import json
import os
import re
import sys
import traceback
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.keras_env import keras
from models.gru import gru_classifier
from models.mobilenet import mobilenet_v1

Builder = Callable[..., keras.Model]

_BUILDERS: dict[str, Builder] = {}
_NAME = re.compile(r"[A-Za-z_][\w-]*")
_BUILDER_REF = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*")
_SAVED_SUFFIXES = (".keras", ".h5", ".hdf5")
_DATA_ARGS = ("input_shape", "num_classes")
_KERAS3_FIX = (
    "TensorFlow Model Optimization, which edgepipe uses for pruning and quantization, "
    "only supports Keras 2 (tf_keras). Rebuild the model with `import tf_keras as keras` "
    "(or set TF_USE_LEGACY_KERAS=1 before importing TensorFlow and use tf.keras), "
    "then pass it or save it again."
)


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator that makes a builder selectable by `name` in the config."""
    if not _NAME.fullmatch(name):
        raise UserError(
            f"Model name {name!r} cannot be registered: use letters, digits, '_' and '-', "
            "starting with a letter (':' and '/' select user builders and saved models)."
        )

    def add(builder: Builder) -> Builder:
        if name in _BUILDERS and _BUILDERS[name] is not builder:
            raise UserError(f"Model name {name!r} is already registered; choose another name.")
        _BUILDERS[name] = builder
        return builder

    return add


register("mobilenet_v1")(mobilenet_v1)
register("gru_classifier")(gru_classifier)


def list_models() -> list[str]:
    """Registered builder names, sorted."""
    return sorted(_BUILDERS)


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    options: dict[str, Any] | None = None,
) -> keras.Model:
    """Build or load the model `name` and check it fits the data."""
    options = dict(options or {})
    input_shape = tuple(input_shape)
    if name in _BUILDERS:
        model = _call_builder(name, _BUILDERS[name], input_shape, num_classes, options)
    elif _looks_like_path(name):
        if options:
            raise UserError(
                f"Model options {sorted(options)} do not apply to the saved model {name!r}; "
                "remove them from the config."
            )
        model = _load_saved(Path(name))
    elif _BUILDER_REF.fullmatch(name):
        with _cwd_on_path():
            builder = _import_builder(name)
            model = _call_builder(name, builder, input_shape, num_classes, options)
    else:
        raise _unknown_model(name)
    model = ensure_tf_keras_model(model, f"model {name!r}")
    _check_fits(model, name, input_shape, num_classes)
    return model


def builder_sources(name: str) -> list[Path]:
    """The files `name` stands for, whose contents decide the model: the builder's
    module source, or the saved model (a file or a SavedModel folder)."""
    if name in _BUILDERS:
        builder = _BUILDERS[name]
    elif _looks_like_path(name):
        if not Path(name).exists():
            raise UserError(f"Saved model {name!r} not found; check the model path in the config.")
        return [Path(name)]
    elif _BUILDER_REF.fullmatch(name):
        with _cwd_on_path():
            builder = _import_builder(name)
    else:
        raise _unknown_model(name)
    source = inspect.getsourcefile(builder)
    return [Path(source)] if source else []


def _unknown_model(name: str) -> UserError:
    return UserError(
        f"Unknown model {name!r}. Use a registered name ({', '.join(list_models())}), "
        "a builder function as 'package.module:function', or the path of a saved "
        "model (.keras, .h5 or a SavedModel directory)."
    )


def ensure_tf_keras_model(model: Any, source: str = "the model") -> keras.Model:
    """Return `model` if it is a tf_keras Model; else raise a UserError saying how to fix it."""
    if isinstance(model, keras.Model):
        return model
    if any(cls.__module__.split(".")[0] == "keras" for cls in type(model).__mro__):
        raise UserError(f"{source} is a Keras 3 model ({type(model).__name__}), but " + _KERAS3_FIX)
    raise UserError(
        f"{source} is a {type(model).__module__}.{type(model).__name__}, not a tf_keras "
        "Model; build it with `import tf_keras as keras` and return a keras.Model."
    )


def _call_builder(
    name: str,
    builder: Builder,
    input_shape: tuple[int, ...],
    num_classes: int,
    options: dict[str, Any],
) -> Any:
    """Call `builder` after checking `options` against its signature."""
    signature = inspect.signature(builder)
    parameters = signature.parameters
    missing = [arg for arg in _DATA_ARGS if arg not in parameters]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if missing and not takes_any:
        raise UserError(
            f"Model builder {name!r} must accept the keyword arguments input_shape and "
            f"num_classes; it lacks {', '.join(missing)}."
        )
    accepted = [
        p.name
        for p in parameters.values()
        if p.name not in _DATA_ARGS
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    for option in options:
        if option in _DATA_ARGS:
            raise UserError(
                f"Model option {option!r} for {name!r} comes from the data set; remove it "
                "from the model options."
            )
        if option not in accepted and not takes_any:
            close = difflib.get_close_matches(option, accepted, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UserError(
                f"Unknown option {option!r} for model {name!r}; it accepts: "
                f"{', '.join(accepted) or 'no options'}.{hint}"
            )
    try:
        signature.bind(input_shape=input_shape, num_classes=num_classes, **options)
    except TypeError as error:
        raise UserError(
            f"Model builder {name!r} cannot be called with these options: {error}."
        ) from error
    try:
        return builder(input_shape=input_shape, num_classes=num_classes, **options)
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - the builder is the user's code
        raise _code_failed(name, "building the model", error, inspect.getsourcefile(builder)) \
            from None


def _code_failed(name: str, doing: str, error: Exception, source: str | None) -> UserError:
    """A builder's exception as one message pointing at the line of its code that failed
    (the innermost frame in the builder's file, else the innermost of all)."""
    if isinstance(error, SyntaxError):
        place = f"{error.filename}:{error.lineno}"
    else:
        frames = traceback.extract_tb(error.__traceback__)
        own = [f for f in frames if source and f.filename == source]
        frame = (own or frames)[-1]
        place = f"{frame.filename}:{frame.lineno}"
    message = str(error).splitlines()[0][:300] if str(error) else ""
    return UserError(f"Model builder {name!r} failed while {doing}: {type(error).__name__}"
                     f"{': ' + message if message else ''} (at {place}); fix the builder and "
                     "rerun.")


def _import_builder(ref: str) -> Callable[..., Any]:
    """Import 'package.module:function' and return the function."""
    module_name, function_name = ref.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise UserError(
                f"Model builder {ref!r}: no module named {error.name!r} on the Python path "
                f"or in the current directory ({os.getcwd()}); check the spelling or add "
                "its folder to PYTHONPATH."
            ) from error
        raise UserError(
            f"Model builder {ref!r}: importing {module_name!r} failed: {error}."
        ) from error
    except Exception as error:  # noqa: BLE001 - a syntax error or failure in the user's module
        raise _code_failed(ref, f"importing {module_name!r}", error, None) from None
    builder = getattr(module, function_name, None)
    if not callable(builder):
        raise UserError(
            f"Model builder {ref!r}: module {module_name!r} has no function {function_name!r}."
        )
    return builder


@contextlib.contextmanager
def _cwd_on_path() -> Iterator[None]:
    """Let user builders in the current directory import (the CLI's sys.path lacks it)."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        yield
    finally:
        if added:
            sys.path.remove(cwd)


def _looks_like_path(name: str) -> bool:
    return name.endswith(_SAVED_SUFFIXES) or "/" in name or os.sep in name or os.path.isdir(name)


def _load_saved(path: Path) -> keras.Model:
    """Load a saved model with tf_keras, telling Keras 3 files apart first."""
    if not path.exists():
        raise UserError(f"Saved model {str(path)!r} not found; check the model path in the config.")
    if path.is_dir() and not (path / "saved_model.pb").exists():
        raise UserError(
            f"{str(path)!r} is a directory but not a SavedModel (no saved_model.pb); give a "
            ".keras or .h5 file or a directory written by tf_keras model.save()."
        )
    version = _saved_keras_version(path)
    if version is not None and version.split(".")[0] == "3":
        raise UserError(
            f"Saved model {str(path)!r} was written by Keras {version}, but " + _KERAS3_FIX
        )
    if path.is_dir() and not (path / "keras_metadata.pb").exists():
        raise UserError(
            f"SavedModel {str(path)!r} has no Keras metadata (keras_metadata.pb), so it "
            "cannot be trained; Keras 3 model.export() writes such folders. " + _KERAS3_FIX
        )
    try:
        return keras.models.load_model(str(path), compile=False)
    except Exception as error:  # noqa: BLE001 - any loader failure is a bad file to the user
        raise UserError(
            f"Could not load saved model {str(path)!r} with tf_keras: {error}. Save it with "
            "tf_keras model.save() as .keras, .h5 or a SavedModel directory."
        ) from error


def _saved_keras_version(path: Path) -> str | None:
    """The Keras version recorded in a .keras or .h5 file, if any."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if "metadata.json" in archive.namelist():
                return json.loads(archive.read("metadata.json")).get("keras_version")
        return None
    if path.suffix in (".h5", ".hdf5"):
        import h5py  # installed with TensorFlow; only needed for .h5 files

        with h5py.File(path, "r") as handle:
            version = handle.attrs.get("keras_version")
        return version.decode() if isinstance(version, bytes) else version
    return None


def _check_fits(
    model: keras.Model, name: str, input_shape: tuple[int, ...], num_classes: int
) -> None:
    """Reject a model whose single input and output do not match the data."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UserError(
            f"Model {name!r} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
            "edgepipe needs exactly one of each."
        )
    model_input = tuple(model.input_shape[1:])
    fits = len(model_input) == len(input_shape) and all(
        m is None or m == d for m, d in zip(model_input, input_shape)
    )
    if not fits:
        raise UserError(
            f"Model {name!r} takes inputs of shape {model_input} but the data has shape "
            f"{input_shape}; use a model built for this data or reshape the data."
        )
    model_classes = model.output_shape[-1]
    if model_classes != num_classes:
        raise UserError(
            f"Model {name!r} outputs {model_classes} classes but the data has {num_classes}; "
            "use a model built for this data or change the labels."
        )

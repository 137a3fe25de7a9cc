"""The saved Keras model of each training phase (<model>/keras/), written so that
it loads back to the same model: a resumed run converts and validates exactly what
an uninterrupted one would.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from core import atomic
from core.keras_env import keras
from pipelines import optimize

# Phases whose models hold TFMOT quantize layers and wrappers.
QUANTIZED_PHASES = ("qat", "pqat")


def phase_path(folder: Path, phase: str) -> Path:
    """QAT phases are HDF5, the format TFMOT's quantize_scope restores: the .keras loader
    builds a QuantizeLayer twice (its build() never sets `built`) and then refuses the
    3 saved variables for the 5 it made."""
    suffix = ".h5" if phase in QUANTIZED_PHASES else ".keras"
    return folder / "keras" / f"{phase}{suffix}"


def save(model: keras.Model, path: Path) -> None:
    """Save atomically: Keras writes a temporary file of the same format, then it is
    renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        with warnings.catch_warnings():
            # HDF5 is chosen on purpose (see phase_path); Keras calls it legacy.
            warnings.filterwarnings("ignore", "You are saving your model as an HDF5 file")
            model.save(temporary)
        os.replace(temporary, path)
    except OSError as e:
        if atomic.is_disk_full(e):
            raise atomic.disk_full(path, e) from None
        raise
    finally:
        temporary.unlink(missing_ok=True)


def load(path: Path) -> keras.Model:
    with optimize.load_scope():
        return keras.models.load_model(path, compile=False)

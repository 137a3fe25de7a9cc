"""Digests of what a stage depends on beyond its config: source code, saved files,
a model's weights, native libraries. A stage keyed by these is recomputed when any
of them changes, instead of reusing a result that no longer matches its inputs."""
from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import numpy as np

from core.keras_env import keras

DIGEST_CHARS = 16
_CHUNK = 1 << 20


def files_digest(paths: Iterable[str | os.PathLike]) -> str:
    """Names and contents of files, folders walked in sorted order (a SavedModel
    folder is its files)."""
    digest = hashlib.sha256()
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
            with open(file, "rb") as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
    return digest.hexdigest()[:DIGEST_CHARS]


def modules_digest(modules: Iterable[ModuleType]) -> str:
    """The source files of Python modules: editing the code changes the digest."""
    return files_digest(inspect.getsourcefile(m) for m in modules)


def arrays_digest(*arrays: np.ndarray) -> str:
    """Values, shapes and types of arrays (a data set's splits)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:DIGEST_CHARS]


def keras_model_digest(model: keras.Model) -> str:
    """Architecture and every weight's values: new weights in the same architecture
    are a different model."""
    digest = hashlib.sha256(model.to_json().encode())
    digest.update(arrays_digest(*model.get_weights()).encode())
    return digest.hexdigest()[:DIGEST_CHARS]

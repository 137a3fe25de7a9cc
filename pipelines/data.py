"""Data sets: the built-in digits, a user's .npz or image folder, or a tf.data set.

Everything becomes in-memory NumPy arrays, because validation, int8 calibration
and the benchmarks all need the same examples again and again. Splits are
seeded random permutations, so a run is repeatable.
"""
from __future__ import annotations

import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import UserError
from pipelines.config import DataConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclass
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    description: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def check_finite(name: str, x: np.ndarray) -> None:
    """Refuse NaN or infinite inputs, naming the array and the first bad element."""
    if not np.issubdtype(x.dtype, np.inexact):
        return
    bad = ~np.isfinite(x)
    if bad.any():
        value = _value_at(x, bad)
        what = "nan" if np.isnan(value) else ("inf" if value > 0 else "-inf")
        raise UserError(f"data: {name}[{_first_index(bad)}] is {what}; clean the data or drop "
                        "that sample.")


def _first_index(mask: np.ndarray) -> str:
    return ", ".join(str(int(i)) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def _value_at(x: np.ndarray, mask: np.ndarray):
    return x[np.unravel_index(int(np.argmax(mask)), mask.shape)].item()


def check_labels(labels: dict[str, np.ndarray], num_classes: int | None = None
                 ) -> dict[str, np.ndarray]:
    """Refuse labels that cannot be class indices and return them all as int32, in order.

    Labels must be finite, integral and non-negative; a maximum label of 10x the
    number of distinct labels or more (one label 1000 among classes 0..9) would make
    a model of mostly empty classes, so it is refused too.
    """
    converted = {}
    for name, y in labels.items():
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]  # a column of labels
        if y.ndim != 1:
            hint = " (one-hot labels? store y.argmax(axis=1))" if y.ndim == 2 else ""
            raise UserError(f"data: {name} has shape {y.shape}; labels must be one class index "
                            f"per example, a 1-D array{hint}.")
        if y.dtype == bool or not (np.issubdtype(y.dtype, np.integer)
                                   or np.issubdtype(y.dtype, np.floating)):
            raise UserError(f"data: {name} has dtype {y.dtype}; labels must be integer class "
                            "indices 0, 1, 2, ...")
        if np.issubdtype(y.dtype, np.floating):
            check_finite(name, y)
            fractional = y != np.floor(y)
            if fractional.any():
                index = _first_index(fractional)
                raise UserError(f"data: {name}[{index}] is {_value_at(y, fractional)!r}, not an "
                                "integer class index; labels must be whole numbers 0, 1, 2, ... "
                                "(round or re-encode them).")
        negative = y < 0
        if negative.any():
            raise UserError(f"data: {name}[{_first_index(negative)}] is "
                            f"{_value_at(y, negative)!r}; labels must be class indices 0, 1, 2, "
                            "... (re-encode negative labels).")
        if y.size and y.max() > np.iinfo(np.int32).max:
            raise UserError(f"data: {name} has label {y.max().item()!r}, too large for a class "
                            "index; re-encode the labels as 0, 1, 2, ...")
        converted[name] = y.astype(np.int32)
    every = np.concatenate([y.ravel() for y in converted.values()])
    if every.size:
        distinct = np.unique(every)
        largest = int(distinct[-1])
        if largest >= 10 * len(distinct):
            name = next(n for n, y in converted.items() if y.size and y.max() == largest)
            edges = np.concatenate([[-1], distinct])
            gap = int(np.argmax(np.diff(edges)))
            missing = f"{edges[gap] + 1}..{edges[gap + 1] - 1}"
            raise UserError(f"data: {name} has label {largest} but only {len(distinct)} distinct "
                            f"labels, so a {largest + 1}-class model would have no examples of "
                            f"classes {missing}; re-encode the labels as 0..N-1.")
        if num_classes is not None and largest >= num_classes:
            raise UserError(f"data: label {largest} does not fit num_classes={num_classes}; pass "
                            f"num_classes={largest + 1} or more, or re-encode the labels.")
    return converted


def split(x: np.ndarray, y: np.ndarray, config: DataConfig, num_classes: int,
          description: str) -> Dataset:
    """Deterministic train/val/test split of one pool of examples."""
    if len(x) != len(y):
        raise UserError(f"data {description}: {len(x)} inputs but {len(y)} labels.")
    order = np.random.default_rng(config.seed).permutation(len(x))
    n_test = max(1, int(round(len(x) * config.test_fraction)))
    n_val = int(round(len(x) * config.val_fraction))
    test, val, train = np.split(order, [n_test, n_test + n_val])
    if len(train) == 0:
        raise UserError(f"data {description}: only {len(x)} examples, none left for training.")
    return Dataset(x[train], y[train], x[val], y[val], x[test], y[test], num_classes, description)


def _resize_images(images: np.ndarray, resolution: int) -> np.ndarray:
    from core.keras_env import tf
    return tf.image.resize(images, (resolution, resolution), method="bilinear").numpy()


def load_digits(config: DataConfig) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 examples, shipped with the package).

    As images they are scaled to [0, 1] and resized for the CNN; as sequences each
    of the 8 rows is one time step of 8 features, for the GRU.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = (digits.images / 16.0).astype(np.float32)
    check_finite("digits", images)
    labels = digits.target.astype(np.int32)
    if config.kind == "sequence":
        return split(images, labels, config, 10, "digits (8 time steps x 8 features)")
    images = _resize_images(images[..., None], config.resolution).astype(np.float32)
    return split(images, labels, config, 10,
                 f"digits ({config.resolution}x{config.resolution}x1 images)")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a .npz, refusing files NumPy cannot read without pickle."""
    if not zipfile.is_zipfile(path):
        raise UserError(f"data file {str(path)!r} is not a .npz archive (a .npz is a zip of "
                        ".npy arrays); write it with numpy.savez(path, x=..., y=...).")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if not isinstance(arrays, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single array, not named arrays")
            return {name: arrays[name] for name in arrays.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"data file {str(path)!r} is not a .npz of plain numeric arrays ({e}); "
                        "write it with numpy.savez(path, x=..., y=...) from numeric arrays (no "
                        "object arrays, no pickles).") from None


def load_npz(path: Path, config: DataConfig) -> Dataset:
    """A .npz with either x, y (split here) or x_train, y_train, x_test, y_test."""
    arrays = _read_npz(path)
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        labels = check_labels({"y_train": arrays["y_train"], "y_test": arrays["y_test"]})
        y_train, y_test = labels["y_train"], labels["y_test"]
        x_train = _as_float_or_int(arrays["x_train"])
        x_test = _as_float_or_int(arrays["x_test"])
        check_finite("x_train", x_train)
        check_finite("x_test", x_test)
        num_classes = int(max(y_train.max(), y_test.max())) + 1
        n_val = int(round(len(x_train) * config.val_fraction))
        order = np.random.default_rng(config.seed).permutation(len(x_train))
        val, train = order[:n_val], order[n_val:]
        return Dataset(x_train[train], y_train[train], x_train[val], y_train[val],
                       x_test, y_test, num_classes, f"{path.name}")
    if {"x", "y"} <= arrays.keys():
        y = check_labels({"y": arrays["y"]})["y"]
        x = _as_float_or_int(arrays["x"])
        check_finite("x", x)
        return split(x, y, config, int(y.max()) + 1 if y.size else 0, path.name)
    raise UserError(f"data file {str(path)!r} holds arrays {sorted(arrays)}; it needs either "
                    "'x' and 'y', or 'x_train', 'y_train', 'x_test' and 'y_test'.")


def _as_float_or_int(x: np.ndarray) -> np.ndarray:
    """Token ids stay integers (for Embedding inputs); everything else becomes float32."""
    if np.issubdtype(x.dtype, np.integer) and x.ndim == 2:
        return x.astype(np.int32)
    with np.errstate(over="ignore", invalid="ignore"):  # check_finite names what overflowed
        return x.astype(np.float32)


def _read_image(file: Path, mode: str, resolution: int) -> np.ndarray:
    """One image scaled to [0, 1]; unreadable files and decompression bombs (images
    over PIL's pixel limit, which would take gigabytes to decode) are refused."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                image = image.convert(mode).resize((resolution, resolution))
                return np.asarray(image, dtype=np.float32) / 255.0
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UserError(f"image {str(file)!r} is too large to decode safely ({e}); resize it to "
                        "a few thousand pixels a side or remove it.") from None
    except (OSError, ValueError) as e:
        raise UserError(f"image {str(file)!r} cannot be read ({e}); remove it or replace it "
                        "with a valid image.") from None


def load_image_folder(root: Path, config: DataConfig) -> Dataset:
    """One sub-folder per class; images are resized and scaled to [0, 1]."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise UserError(f"image folder {str(root)!r} needs one sub-folder per class (at least "
                        f"two); found {len(classes)}.")
    mode = {1: "L", 3: "RGB"}[config.channels]
    images, labels = [], []
    for label, name in enumerate(classes):
        found = len(images)
        for file in sorted((root / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            pixels = _read_image(file, mode, config.resolution)
            images.append(pixels.reshape(config.resolution, config.resolution, config.channels))
            labels.append(label)
        if len(images) == found:
            raise UserError(f"image folder {str(root / name)!r} has no images "
                            f"({', '.join(IMAGE_SUFFIXES)}), so class {name!r} would never be "
                            "seen; add images to it or remove the folder.")
    if not images:
        raise UserError(f"image folder {str(root)!r} has no images ({', '.join(IMAGE_SUFFIXES)}).")
    images = np.stack(images)
    check_finite("images", images)
    return split(images, np.array(labels, np.int32), config, len(classes), root.name)


def from_tf_dataset(dataset, config: DataConfig, num_classes: int | None = None) -> Dataset:
    """Materialize a (possibly batched) tf.data.Dataset of (x, y) pairs and split it.

    For use from Python: `run_pipeline(config, datasets={"mymodel": from_tf_dataset(ds, ...)})`.
    """
    xs, ys = [], []
    for x, y in dataset.as_numpy_iterator():
        batched = np.ndim(y) > 0
        xs.append(x if batched else x[None])
        ys.append(np.atleast_1d(y))
    if not xs:
        raise UserError("the tf.data dataset is empty.")
    x = _as_float_or_int(np.concatenate(xs))
    check_finite("x", x)
    y = check_labels({"y": np.concatenate(ys)}, num_classes)["y"]
    return split(x, y, config, num_classes or int(y.max()) + 1, "tf.data dataset")


def load_dataset(config: DataConfig) -> Dataset:
    """The data set a model config names."""
    if config.source == "digits":
        return load_digits(config)
    path = Path(config.source).expanduser()
    if path.is_dir():
        return load_image_folder(path, config)
    if path.suffix == ".npz" and path.is_file():
        return load_npz(path, config)
    raise UserError(f"data.source {config.source!r} is neither 'digits', an existing .npz file "
                    "nor an image folder with one sub-folder per class.")

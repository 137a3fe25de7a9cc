"""NaN and inf never pass validation or training (issue 11): real models, real data."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.errors import UserError
from core.keras_env import keras
from pipelines.config import load_config
from pipelines.data import Dataset
from pipelines.train import fit, predict
from pipelines.validate import ValidationFailed, check_float32, validate_variant
from tflite.convert import convert_model


def _dense_model() -> keras.Model:
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))


def _dataset(x: np.ndarray) -> Dataset:
    y = (np.arange(len(x)) % 3).astype(np.int32)
    return Dataset(x, y, x[:0], y[:0], x[:6], y[:6], 3, "test data")


RESULT = {"max_abs_error": 1e-7, "top1_agreement": 1.0, "accuracy": 0.9, "keras_accuracy": 0.9}


@pytest.mark.parametrize("field", ["max_abs_error", "accuracy", "top1_agreement"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_check_float32_refuses_non_finite(field, value):
    with pytest.raises(ValidationFailed, match=rf"variant 'float32'.*{field} is {value}, not a "
                                               "finite number"):
        check_float32("cnn", "float32", {**RESULT, field: value}, 1e-4)


def test_check_float32_still_passes_and_fails_on_tolerance():
    check_float32("cnn", "float32", RESULT, 1e-4)
    with pytest.raises(ValidationFailed, match="differs from Keras by 0.01"):
        check_float32("cnn", "float32", {**RESULT, "max_abs_error": 0.01}, 1e-4)


def test_validate_variant_with_one_nan_input_fails(tmp_path):
    model = _dense_model()
    path = tmp_path / "float32.tflite"
    path.write_bytes(convert_model(model, "none"))
    x = np.random.default_rng(0).random((10, 6)).astype(np.float32)
    y = np.arange(10) % 3
    assert validate_variant(path, predict(model, x), x, y)["max_abs_error"] < 1e-4
    x[4, 2] = np.nan
    with pytest.raises(ValidationFailed, match=r"float32.tflite: the TFLite model's outputs on "
                                               "the test set are not finite"):
        validate_variant(path, predict(model, x), x, y)


@pytest.mark.parametrize("text, shown", [("-1.0e-3", "-0.001"), ("0.0", "0.0"), (".nan", "nan"),
                                         (".inf", "inf")])
@pytest.mark.parametrize("phase", ["train", "pruning", "qat"])
def test_config_refuses_bad_learning_rate(text, shown, phase):
    with pytest.raises(UserError, match=rf"{phase}.learning_rate: {shown} is not a usable "
                                        r"learning rate; it must be "
                                        r"a finite number above 0, e\.g\. 1e-3\.$"):
        load_config(overrides=[f"models.mobilenet.{phase}.learning_rate={text}"])


def test_fit_refuses_a_diverged_loss(tmp_path):
    # Finite inputs so large that the first Dense layer overflows: the loss is NaN.
    data = _dataset(np.full((12, 6), 3e38, np.float32))
    with pytest.raises(UserError, match=r"training \(float phase\): loss became nan during "
                                        r"training, so the model diverged; lower that phase's "
                                        r"learning_rate \(now 0.001\)"):
        fit(_dense_model(), data, epochs=2, batch_size=4, learning_rate=1e-3,
            log_dir=tmp_path / "float")


def _run(tmp_path: Path, learning_rate: str, x: np.ndarray) -> subprocess.CompletedProcess:
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(len(x)) % 2)
    config = tmp_path / "c.yaml"
    config.write_text(f"""
output_dir: {tmp_path / 'run'}
models:
  - name: rnn
    builder: gru_classifier
    options: {{units: [4]}}
    data: {{source: {tmp_path / 'd.npz'}}}
    train: {{epochs: 1, learning_rate: {learning_rate}}}
    pruning: {{enabled: false}}
    variants: [float32]
benchmark: {{targets: [host], threads: [1], warmup_runs: 1, num_runs: 1}}
""")
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=600)


def test_cli_run_with_nan_input_exits_1(tmp_path):
    x = np.random.default_rng(0).random((20, 4, 3))
    x[12, 3, 1] = np.nan
    result = _run(tmp_path, "1.0e-3", x)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "edgepipe run: error: data: x[12, 3, 1] is nan; clean the data" in result.stderr


def test_cli_run_with_nan_learning_rate_exits_1(tmp_path):
    result = _run(tmp_path, ".nan", np.random.default_rng(0).random((20, 4, 3)))
    assert result.returncode == 1, result.stderr[-2000:]
    assert "train.learning_rate: nan is not a usable learning rate; it must be a finite number" \
        in result.stderr

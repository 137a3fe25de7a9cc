"""run_pipeline from Python: in-memory models and data, and the mistakes that stop it early."""
import keras as keras3
import numpy as np
import pytest

from core.errors import UserError
from core.keras_env import tf
from pipelines.config import parse_config
from pipelines.data import from_tf_dataset
from pipelines.run import run_pipeline
from pipelines.validate import ValidationFailed, check_float32, compare


def config(tmp_path, **model):
    return parse_config({"output_dir": str(tmp_path), "models": [
        {"name": "m", "builder": "gru_classifier", "train": {"epochs": 1},
         "pruning": {"enabled": False}, "variants": ["float32"], **model}],
        "benchmark": {"num_runs": 2, "warmup_runs": 0}})


def test_keras3_model_is_refused_before_anything_is_written(tmp_path):
    inputs = keras3.Input((8, 8))
    model = keras3.Model(inputs, keras3.layers.Dense(10, activation="softmax")(
        keras3.layers.Flatten()(inputs)))
    with pytest.raises(UserError, match="Keras 3"):
        run_pipeline(config(tmp_path, data={"kind": "sequence"}), keras_models={"m": model})
    assert not list(tmp_path.rglob("*.tflite"))


def test_unknown_model_name_in_python_arguments(tmp_path):
    with pytest.raises(UserError, match="no model named 'other'"):
        run_pipeline(config(tmp_path), datasets={"other": None})


def test_tf_data_dataset_runs_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((120, 5, 3)).astype(np.float32)
    y = (x[:, :, 0].mean(axis=1) > 0.5).astype(np.int32)
    model_config = config(tmp_path)
    data = from_tf_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(16),
                           model_config.models[0].data)
    results = run_pipeline(model_config, datasets={"m": data})
    (variant,) = results["variants"]
    assert variant["name"] == "float32" and variant["max_abs_error"] <= 1e-4
    assert results["models"][0]["input_shape"] == [5, 3]


def test_float32_drift_fails_the_stage_with_the_numbers():
    keras_outputs = np.array([[0.9, 0.1], [0.2, 0.8]])
    drifted = compare(keras_outputs + 0.01, keras_outputs, np.array([0, 1]))
    assert drifted["top1_agreement"] == 1.0 and drifted["max_abs_error"] == pytest.approx(0.01)
    with pytest.raises(ValidationFailed, match=r"differs from Keras by 0.01 \(allowed: 0.0001\)"):
        check_float32("m", "float32", drifted, 1e-4)

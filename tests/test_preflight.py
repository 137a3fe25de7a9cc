"""Settings that cannot work are refused before any training starts (issue 11,
class 12): QAT on a model with integer inputs, a GRU SparseGRU cannot compute, a layer
TFMOT cannot prune, pruning steps outside the phase. Each names the layer and the
option, and the run folder holds no trained model."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from fixtures.cli import assert_user_error, edgepipe

BUILDERS = """\
import tf_keras as keras

def tokens(input_shape, num_classes):
    inputs = keras.Input(input_shape, dtype="int32")
    x = keras.layers.Embedding(50, 8, name="embedding")(inputs)
    x = keras.layers.GRU(8, name="gru")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))

def backwards(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    x = keras.layers.GRU(8, go_backwards=True, name="reverse_gru")(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))

def parametric(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    x = keras.layers.PReLU(name="prelu")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))
"""


@pytest.fixture
def builders(tmp_path, monkeypatch):
    (tmp_path / "preflight_builders.py").write_text(textwrap.dedent(BUILDERS))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "preflight_builders"


def run(tmp_path: Path, builder: str, *sets: str, source: str = "digits"):
    args = ["run", "--output_dir", str(tmp_path / "out"), "--models", "gru",
            "--set", f"models.gru.builder={builder}", "--set", "models.gru.options={}",
            "--set", f"models.gru.data.source={source}", "--set", "models.gru.train.epochs=50"]
    for assignment in sets:
        args += ["--set", assignment]
    return edgepipe(*args)


def assert_nothing_trained(tmp_path: Path) -> None:
    model = tmp_path / "out" / "gru"
    assert not (model / "keras").exists() and not (model / "logs").exists()


def test_qat_on_integer_inputs(tmp_path, builders):
    data = tmp_path / "tokens.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.integers(0, 50, (60, 10)), y=np.arange(60) % 3)
    result = run(tmp_path, f"{builders}:tokens", "models.gru.qat.enabled=true",
                 "models.gru.pruning.layers=[gru]",
                 "models.gru.variants=[float32,qat_int8]", source=str(data))
    assert_user_error(result, "model 'gru': qat.enabled: the model's input")
    assert "is int32 (ids into layer 'embedding')" in result.stderr
    assert_nothing_trained(tmp_path)


def test_a_gru_sparse_gru_cannot_compute(tmp_path, builders):
    result = run(tmp_path, f"{builders}:backwards", "models.gru.gru_lowering=sparse_gru",
                 "models.gru.pruning.enabled=false", "models.gru.variants=[float32]")
    assert_user_error(result, "GRU layer 'reverse_gru' of model")
    assert "has go_backwards=True; SparseGRU computes only go_backwards=False" in result.stderr
    assert "gru_lowering: builtin" in result.stderr
    assert_nothing_trained(tmp_path)


def test_a_layer_tfmot_cannot_prune(tmp_path, builders):
    result = run(tmp_path, f"{builders}:parametric", "models.gru.pruning.layers=['.*']")
    assert_user_error(result, "layer 'prelu' (PReLU) matches pruning.layers but "
                              "TFMOT cannot prune it")
    assert_nothing_trained(tmp_path)


def test_pruning_steps_outside_the_phase(tmp_path):
    result = run(tmp_path, "gru_classifier", "models.gru.options={units: [8]}",
                 "models.gru.pruning.begin_step=100000")
    assert_user_error(result, "pruning steps must satisfy begin_step <= ramp_step <= end_step; "
                              "got 100000")
    assert_nothing_trained(tmp_path)

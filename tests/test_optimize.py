"""QAT and prune-preserving QAT on tiny models, and the QAT-on-GRU message."""
import tempfile
from pathlib import Path

import numpy as np
import pytest

from core.errors import UserError
from core.keras_env import keras
from models.gru import gru_classifier
from pipelines.config import ModelConfig, PruningConfig, QatConfig, TrainConfig
from pipelines.data import Dataset
from pipelines.optimize import prune, prune_preserving_qat, quantize_aware


def toy_images(n=64) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.random((n, 8, 8, 1)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(np.int32)
    return Dataset(x, y, x[:8], y[:8], x[:16], y[:16], 2, "toy images")


def small_cnn() -> keras.Model:
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(inp)
    x = keras.layers.BatchNormalization(name="conv1_bn")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.Conv2D(32, 1, use_bias=False, name="conv_pw_1")(x)
    x = keras.layers.BatchNormalization(name="conv_pw_1_bn")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(2, activation="softmax", name="predictions")(x)
    return keras.Model(inp, out)


CONFIG = ModelConfig(name="tiny", builder="x", train=TrainConfig(batch_size=16),
                     pruning=PruningConfig(target_sparsity=0.7, layers=["conv_pw_1"], epochs=2,
                                           frequency=1, end_step=4),
                     qat=QatConfig(enabled=True, prune_preserving=True, epochs=1))


def test_prune_preserving_qat_keeps_the_zeros():
    data = toy_images()
    pruned, record = prune(small_cnn(), data, CONFIG, Path(tempfile.mkdtemp()))
    assert record["sparsity"] == pytest.approx(0.7, abs=0.01)
    pqat, pqat_record = prune_preserving_qat(pruned, data, CONFIG, Path(tempfile.mkdtemp()),
                                             ["conv_pw_1"])
    assert [r["layer"] for r in pqat_record["layers"]] == ["quant_conv_pw_1"]
    assert pqat_record["sparsity"] >= record["sparsity"] - 1e-6


def test_qat_wraps_a_cnn():
    qat, record = quantize_aware(small_cnn(), toy_images(), CONFIG, Path(tempfile.mkdtemp()))
    assert any(type(layer).__name__.startswith("Quantize") for layer in qat.layers)
    assert len(record["history"]["loss"]) == 1


def test_qat_of_a_gru_names_the_layer_and_the_way_out():
    data = Dataset(*(np.zeros((8, 4, 3), np.float32), np.zeros(8, np.int32)) * 3, 2, "seq")
    with pytest.raises(UserError, match=r"cannot wrap gru_1 .*Remove the qat_\* and pqat_\* "
                                        r"variants.*post-training quantization"):
        quantize_aware(gru_classifier((4, 3), 2, units=[4]), data, CONFIG, Path(tempfile.mkdtemp()))

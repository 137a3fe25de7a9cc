"""Pruning: schedules (Narang's threshold math), layer selection, pitfalls, sparsity."""
import logging
import tempfile
from pathlib import Path

import numpy as np
import pytest

from core.errors import UserError
from core.keras_env import keras
from models.gru import gru_classifier
from pipelines import pruning
from pipelines.config import ModelConfig, PruningConfig, TrainConfig
from pipelines.data import Dataset
from pipelines.optimize import prune

RNG = np.random.default_rng(0)


def toy_data(input_shape, n=96, classes=3) -> Dataset:
    x = RNG.random((n, *input_shape)).astype(np.float32)
    y = (x.reshape(n, -1).sum(axis=1) * 7).astype(np.int32) % classes
    return Dataset(x, y, x[:16], y[:16], x[:16], y[:16], classes, "toy")


def dense_model() -> keras.Model:
    inp = keras.Input((16,))
    x = keras.layers.Dense(32, activation="relu", name="fc1")(inp)
    out = keras.layers.Dense(3, activation="softmax", name="head")(x)
    return keras.Model(inp, out)


def conv_model() -> keras.Model:
    inp = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inp)
    x = keras.layers.Conv2D(16, 1, name="conv_pw_1")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(3, activation="softmax", name="head")(x)
    return keras.Model(inp, out)


def run_prune(model, data, **pruning_options):
    config = ModelConfig(name="t", builder="x", train=TrainConfig(batch_size=16),
                         pruning=PruningConfig(**{"epochs": 2, "frequency": 2, **pruning_options}))
    return prune(model, data, config, Path(tempfile.mkdtemp()))


def test_narang_threshold_matches_equation_one():
    steps = pruning.PhaseSteps(begin=100, ramp=400, end=1000, frequency=10)
    q = 0.3
    schedule = pruning.NarangThreshold(steps, q)
    assert schedule.theta == pytest.approx(2 * q * 10 / (2 * 300 + 3 * 600))
    assert schedule.phi == pytest.approx(1.5 * schedule.theta)
    assert schedule(99) == 0.0
    assert schedule(100) == pytest.approx(schedule.theta / 10)
    thresholds = [schedule(s) for s in range(100, 1200, 10)]
    assert all(a <= b for a, b in zip(thresholds, thresholds[1:]))
    # The threshold ends at q (up to the +1 in the paper's step counts).
    assert schedule(999) == pytest.approx(q, rel=0.01)
    assert schedule(5000) == schedule(999)
    slope_before = schedule(300) - schedule(299)
    slope_after = schedule(700) - schedule(699)
    assert slope_after == pytest.approx(1.5 * slope_before)


def test_narang_schedule_prunes_gru_input_and_recurrent_kernels():
    data = toy_data((5, 4))
    model = gru_classifier((5, 4), 3, units=[16])
    pruned, record = run_prune(model, data, schedule="narang", target_sparsity=0.8,
                               layers=["gru_.*"], frequency=1)
    weights = {r["weight"]: r["sparsity"] for r in record["layers"]}
    assert set(weights) == {"kernel", "recurrent_kernel"}
    for value in weights.values():
        assert 0.6 <= value <= 0.9
    gru = pruned.get_layer("gru_1")
    assert np.mean(gru.cell.recurrent_kernel.numpy() == 0) == pytest.approx(
        weights["recurrent_kernel"])


def test_polynomial_decay_reaches_target_and_leaves_unselected_layers_dense():
    data = toy_data((16,))
    model = dense_model()
    before = model.get_layer("head").kernel.numpy().copy()
    pruned, record = run_prune(model, data, target_sparsity=0.5, layers=["fc1"], end_step=6)
    assert [r["layer"] for r in record["layers"]] == ["fc1"]
    assert record["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert np.mean(pruned.get_layer("head").kernel.numpy() == 0) == 0
    # Pruning trains a copy: the float model handed in is untouched.
    np.testing.assert_array_equal(model.get_layer("head").kernel.numpy(), before)


def test_block_sparsity_zeroes_whole_blocks():
    data = toy_data((16,))
    pruned, record = run_prune(dense_model(), data, schedule="constant", target_sparsity=0.5,
                               layers=["fc1"], block_size=[1, 4], end_step=4)
    kernel = pruned.get_layer("fc1").kernel.numpy()
    blocks = kernel.reshape(16, 8, 4)
    all_zero = np.all(blocks == 0, axis=-1)
    any_zero = np.any(blocks == 0, axis=-1)
    np.testing.assert_array_equal(all_zero, any_zero)
    assert record["sparsity"] == pytest.approx(0.5, abs=0.05)


def test_two_out_of_four_sparsity():
    data = toy_data((16,))
    pruned, _ = run_prune(dense_model(), data, schedule="m_by_n", layers=["fc1"])
    kernel = pruned.get_layer("fc1").kernel.numpy()
    # TFMOT groups 4 consecutive weights along the input dimension.
    groups = kernel.T.reshape(32, 4, 4)
    assert np.all(np.sum(groups == 0, axis=-1) >= 2)


def test_block_size_on_a_4d_kernel_names_the_layer_and_option():
    with pytest.raises(UserError, match=r"layer 'conv_pw_1' \(Conv2D\).*pruning.block_size"):
        run_prune(conv_model(), toy_data((8, 8, 2)), block_size=[1, 4], layers=["conv_pw_1"])


def test_layer_tfmot_cannot_prune_is_named():
    class Scale(keras.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight("w", shape=(shape[-1],))

        def call(self, x):
            return x * self.w

    inp = keras.Input((16,))
    out = keras.layers.Dense(3, activation="softmax")(Scale(name="scale")(inp))
    with pytest.raises(UserError, match=r"layer 'scale' \(Scale\).*TFMOT cannot prune it"):
        run_prune(keras.Model(inp, out), toy_data((16,)))


def test_selection_of_no_layer():
    with pytest.raises(UserError, match="selects no prunable layer.*fc1, head"):
        run_prune(dense_model(), toy_data((16,)), layers=["conv.*"])


def test_frequency_larger_than_steps_warns_with_the_fix(caplog):
    with caplog.at_level(logging.WARNING):
        steps = pruning.resolve_steps(PruningConfig(frequency=500), total_steps=120)
    assert steps.end == 60
    assert "pruning.frequency=500 is larger than the 120 optimizer steps" in caplog.text
    assert "nothing is pruned" in caplog.text and "Set pruning.frequency to at most 120" in caplog.text


def test_end_step_after_the_phase_warns(caplog):
    with caplog.at_level(logging.WARNING):
        pruning.resolve_steps(PruningConfig(end_step=1000), total_steps=100)
    assert "target_sparsity 0.80 is not reached" in caplog.text


def test_inconsistent_steps():
    """A begin_step after the default end_step (half of the phase's steps)."""
    with pytest.raises(UserError, match="begin_step <= ramp_step <= end_step; got 80, 68, 50 "
                                        r"\(end_step defaults to half of the phase's 100 steps\)"):
        pruning.resolve_steps(PruningConfig(begin_step=80), total_steps=100)

"""Distillation (pipelines/distillation.py): the loss terms against NumPy, layer pairing
and its errors, a teacher that never changes, transfer on a learnable task, and
pruning-wrapped and QAT students."""
import math

import numpy as np
import pytest

from core.errors import UserError
from core.keras_env import keras, tf
from pipelines import distillation, train
from pipelines.data import Dataset
from pipelines.distillation import (DistillationSettings, Distiller, attention_loss,
                                    attention_map, distillation_losses, fit_distilled,
                                    resolve_layer)

import tensorflow_model_optimization as tfmot  # noqa: E402  (after core.keras_env)

# ----------------------------------------------------------------------------------
# NumPy references of the formulas.


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_kd(p_t, p_s, temperature):
    """T^2 * KL(softmax(log p_t / T) || softmax(log p_s / T)) per sample."""
    q_t = np_softmax(np.log(np.clip(p_t, 1e-7, 1)) / temperature)
    q_s = np_softmax(np.log(np.clip(p_s, 1e-7, 1)) / temperature)
    return temperature ** 2 * np.sum(q_t * (np.log(q_t) - np.log(q_s)), axis=-1)


def np_attention(a):
    q = (a.astype(np.float64) ** 2).sum(axis=-1).reshape(len(a), -1)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


P_STUDENT = np.array([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.4, 0.1], [0.05, 0.05, 0.1, 0.8]],
                     np.float32)
P_TEACHER = np.array([[0.6, 0.3, 0.05, 0.05], [0.1, 0.1, 0.7, 0.1], [0.2, 0.1, 0.1, 0.6]],
                     np.float32)
LABELS = np.array([0, 1, 3], np.int32)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_kd_loss_matches_numpy(temperature, alpha):
    settings = DistillationSettings(temperature=temperature, alpha=alpha)
    losses = distillation_losses(LABELS, P_STUDENT, P_TEACHER, settings)
    ce = -np.log(P_STUDENT[np.arange(3), LABELS])
    kd = np_kd(P_TEACHER, P_STUDENT, temperature)
    np.testing.assert_allclose(losses["ce_loss"].numpy(), ce, rtol=1e-5)
    np.testing.assert_allclose(losses["kd_loss"].numpy(), kd, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(losses["loss"].numpy(), (1 - alpha) * ce + alpha * kd,
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(losses["at_loss"].numpy(), 0)
    if alpha == 0:  # plain cross-entropy, as every other phase trains
        np.testing.assert_allclose(losses["loss"].numpy(), ce, rtol=1e-6)
    if temperature == 1:  # T = 1 is the KL divergence of the model outputs themselves
        np.testing.assert_allclose(
            kd, np.sum(P_TEACHER * np.log(P_TEACHER / P_STUDENT), axis=-1), rtol=1e-5)


def test_attention_map_and_loss_match_numpy():
    rng = np.random.default_rng(1)
    student = rng.normal(size=(2, 3, 3, 2)).astype(np.float32)
    teacher = rng.normal(size=(2, 3, 3, 6)).astype(np.float32)  # more channels, same H x W
    np.testing.assert_allclose(attention_map(student).numpy(), np_attention(student), rtol=1e-5)
    # beta over the map's 3 x 3 elements, as the paper sets it
    expected = 1e3 / 2 / 9 * np.linalg.norm(np_attention(student) - np_attention(teacher),
                                            axis=-1)
    np.testing.assert_allclose(attention_loss(student, teacher, 1e3).numpy(), expected,
                               rtol=1e-4)

    # identical activations: zero loss, and a zero (not NaN) gradient, so a student
    # that starts as a copy of its teacher trains
    same = tf.constant(teacher)
    with tf.GradientTape() as tape:
        tape.watch(same)
        loss = attention_loss(same, teacher, 1e3)
    np.testing.assert_array_equal(loss.numpy(), 0)
    np.testing.assert_array_equal(tape.gradient(loss, same).numpy(), 0)


@pytest.mark.parametrize("changes, message", [
    ({"temperature": 0}, "temperature must be > 0"),
    ({"temperature": float("nan")}, "temperature must be a finite number"),
    ({"alpha": -0.1}, "alpha must be between 0 and 1"),
    ({"alpha": 1.5}, "alpha must be between 0 and 1"),
    ({"beta": -1.0}, "beta must be >= 0"),
    ({"attention_layers": {"conv": ""}}, "two non-empty strings"),
])
def test_settings_are_validated(changes, message):
    with pytest.raises(UserError, match=message):
        DistillationSettings(**changes)


def test_settings_are_immutable():
    layers = {"relu": "relu"}
    settings = DistillationSettings(attention_layers=layers)
    layers["conv"] = "conv"  # the caller's dict is copied
    assert dict(settings.attention_layers) == {"relu": "relu"}
    with pytest.raises(TypeError):
        settings.attention_layers["x"] = "y"
    assert settings == DistillationSettings(attention_layers={"relu": "relu"})


# ----------------------------------------------------------------------------------
# Models and a learnable task: three classes of 8x8x1 images, class k brightens rows
# 3k..3k+2 (rows 6-7 for class 2) under noise.


def make_task(seed=0, n=480):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype(np.int32)
    x = rng.normal(0, 0.6, (n, 8, 8, 1)).astype(np.float32)
    for k in range(3):
        x[y == k, 3 * k:3 * k + 3] += 1.0
    return Dataset(x[:384], y[:384], x[384:432], y[384:432], x[432:], y[432:], 3, "bands")


def teacher_model():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="teacher")


def student_model(channels=2):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(channels, 3, padding="same", name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="student")


def copy_of(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """The task and a teacher trained on it (module-wide: it is never changed)."""
    keras.utils.set_random_seed(0)
    data = make_task()
    teacher = teacher_model()
    train.fit(teacher, data, epochs=4, batch_size=32, learning_rate=1e-2,
              log_dir=tmp_path_factory.mktemp("teacher"))
    assert train.accuracy(teacher, data.x_test, data.y_test) >= 0.9
    return data, teacher


def weights_of(model):
    return [w.numpy().copy() for w in model.weights]


def assert_same_weights(model, expected):
    actual = weights_of(model)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a, e)


# ----------------------------------------------------------------------------------
# Layer pairs.


def test_pair_errors_name_the_layers_and_shapes(task):
    _, teacher = task
    student = student_model()
    settings = DistillationSettings(attention_layers={"relu": "pool"})
    with pytest.raises(UserError) as e:
        Distiller(student, teacher, settings)
    message = str(e.value)
    for part in ("'relu'", "'pool'", "(None, 8, 8, 2)", "(None, 4, 4, 8)", "same spatial size"):
        assert part in message

    with pytest.raises(UserError, match=r"student model 'student' has no layer 'rleu'.*"
                                        r"did you mean 'relu'"):
        Distiller(student, teacher, DistillationSettings(attention_layers={"rleu": "relu"}))
    with pytest.raises(UserError, match="teacher model 'teacher' has no layer 'conv_pw_1'"):
        Distiller(student, teacher, DistillationSettings(attention_layers={"relu": "conv_pw_1"}))
    with pytest.raises(UserError, match="'head' outputs .None, 3., which has no spatial axes"):
        Distiller(student, teacher, DistillationSettings(attention_layers={"head": "head"}))


def test_wrapped_layer_names_resolve():
    model = student_model()
    pruned = tfmot.sparsity.keras.prune_low_magnitude(
        copy_of(model), pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, 0))
    qat = tfmot.quantization.keras.quantize_model(copy_of(model))
    assert resolve_layer(pruned, "conv", "student").name == "prune_low_magnitude_conv"
    assert resolve_layer(pruned, "prune_low_magnitude_conv", "student").name == (
        "prune_low_magnitude_conv")
    assert resolve_layer(qat, "relu", "student").name == "quant_relu"
    assert resolve_layer(qat, "prune_low_magnitude_relu", "student").name == "quant_relu"
    assert resolve_layer(model, "quant_relu", "teacher").name == "relu"
    with pytest.raises(UserError, match="has no layer 'quant_nothing'"):
        resolve_layer(qat, "quant_nothing", "student")


# ----------------------------------------------------------------------------------
# Training.


def test_teacher_unchanged_student_trained(task, tmp_path):
    data, teacher = task
    before = weights_of(teacher)
    student = student_model(channels=2)  # fewer channels than the teacher's 8, same 8x8
    student_before = weights_of(student)
    settings = DistillationSettings(temperature=4, alpha=0.5, attention_layers={"relu": "relu"})
    history = fit_distilled(student, teacher, data, settings, epochs=1, batch_size=64,
                            learning_rate=1e-2, log_dir=tmp_path / "distill")
    assert_same_weights(teacher, before)  # bit-identical, BatchNorm statistics included
    assert any(not np.array_equal(a, b) for a, b in zip(weights_of(student), student_before))
    for name in ("loss", "accuracy", "kd_loss", "at_loss", "val_loss", "val_accuracy"):
        assert len(history[name]) == 1 and math.isfinite(history[name][0]), name
    assert history["at_loss"][0] > 0
    # val_loss is the student's plain cross-entropy on the labels
    probabilities = train.predict(student, data.x_val)
    ce = -np.mean(np.log(np.clip(probabilities[np.arange(len(data.y_val)), data.y_val],
                                 1e-7, 1)))
    assert history["val_loss"][0] == pytest.approx(ce, rel=1e-4)


def test_distillation_transfers_the_teachers_predictions(task, tmp_path):
    """alpha=1 with labels that carry nothing (random ones): whatever the student learns
    comes from the teacher. The bands are linearly separable, so this student can
    represent the teacher's decisions. With seed 0 the test agreement goes from 0.52
    (untrained) to 0.98 (0.90 to 1.0 over seeds 0-2, where the teacher is 100%
    accurate), so 0.8, well above the 1/3 of chance, holds with a wide margin."""
    data, teacher = task
    rng = np.random.default_rng(5)
    noise = Dataset(data.x_train, rng.integers(0, 3, len(data.y_train)).astype(np.int32),
                    data.x_val, data.y_val, data.x_test, data.y_test, 3, "bands, random labels")
    student = student_model(channels=2)
    teacher_top1 = np.argmax(train.predict(teacher, data.x_test), axis=-1)

    def agreement():
        return float(np.mean(np.argmax(train.predict(student, data.x_test), -1) == teacher_top1))

    start = agreement()
    fit_distilled(student, teacher, noise, DistillationSettings(temperature=4, alpha=1.0),
                  epochs=4, batch_size=32, learning_rate=1e-2, log_dir=tmp_path / "kd")
    end = agreement()
    assert end >= 0.8, (start, end)
    assert end > start + 0.2, (start, end)


def test_pruned_student_distilled_with_update_pruning_step(task):
    """A pruning clone made on the teacher itself (Conv2D and Dense wrapped, every
    other layer the teacher's own object, as TFMOT's clone functions return them; only
    pipelines.pruning.wrap_for_pruning copies the model first): the two models share
    weights and the unwrapped layers have a node in each. The Distiller teaches from a
    frozen copy, and Keras' own fit with TFMOT's UpdatePruningStep prunes the student
    through `distiller.layers`."""
    data, trained = task
    teacher = copy_of(trained)
    original = weights_of(teacher)
    sparsity = tfmot.sparsity.keras
    schedule = sparsity.ConstantSparsity(0.5, begin_step=0, frequency=1)

    def wrap(layer):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            return sparsity.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    student = keras.models.clone_model(teacher, clone_function=wrap)
    assert student.get_layer("relu") is teacher.get_layer("relu")
    distiller = Distiller(student, teacher,
                          DistillationSettings(attention_layers={"conv": "conv",
                                                                 "relu": "relu"}))
    assert distiller.attention_pairs == (("prune_low_magnitude_conv", "conv"), ("relu", "relu"))
    assert distiller.teacher is not teacher
    assert {v.ref() for v in distiller.trainable_variables} == {
        v.ref() for v in student.trainable_variables}
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    epochs, batch_size = 2, 64
    history = distiller.fit(data.x_train, data.y_train, epochs=epochs, batch_size=batch_size,
                            callbacks=[sparsity.UpdatePruningStep()], verbose=0)
    assert all(math.isfinite(v) for v in history.history["at_loss"])
    steps = epochs * train.steps_per_epoch(data, batch_size)
    assert int(student.get_layer("prune_low_magnitude_conv").pruning_step.numpy()) == steps
    assert_same_weights(distiller.teacher, original)  # the teaching copy never trains
    stripped = sparsity.strip_pruning(distillation.student_model(distiller))
    for name in ("conv", "head"):
        kernel = stripped.get_layer(name).kernel.numpy()
        assert abs(np.mean(kernel == 0) - 0.5) < 0.02, (name, np.mean(kernel == 0))


def test_qat_student_trains(task, tmp_path):
    data, teacher = task
    small = Dataset(data.x_train[:128], data.y_train[:128], data.x_val[:0], data.y_val[:0],
                    data.x_test, data.y_test, 3, "bands (small)")
    student = tfmot.quantization.keras.quantize_model(student_model())
    settings = DistillationSettings(attention_layers={"quant_relu": "relu"})
    history = fit_distilled(student, teacher, small, settings, epochs=1, batch_size=64,
                            learning_rate=1e-3, log_dir=tmp_path / "qat")
    assert all(math.isfinite(history[name][0]) for name in ("loss", "kd_loss", "at_loss"))


def test_compile_refuses_a_loss_it_would_ignore(task):
    _, teacher = task
    distiller = Distiller(student_model(), teacher)
    with pytest.raises(ValueError, match="computes its own loss"):
        distiller.compile(optimizer="adam", loss="mse")
    distiller.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(),
                      metrics=["accuracy"])  # what pipelines.train.compile_model passes

"""Iterative channel pruning (Molchanov et al.): the criteria against direct computations,
the loop on a MobileNet and a residual model, with the float model teaching, and the
settings' and targets' edge cases."""
import json

import numpy as np
import pytest

from core.errors import UserError
from core.keras_env import keras, tf
from models.mobilenet import mobilenet_v1
from models.summary import summarize
from pipelines.channel_pruning import (ChannelPruningSettings, PruningTrainer, Teacher,
                                       channel_scores, choose_removals, mult_adds_per_channel,
                                       prune_channels, select_groups)
from pipelines.channel_surgery import shrink
from pipelines.data import Dataset
from pipelines.distillation import DistillationSettings, distillation_losses
from fixtures.channel_models import residual_net

L = keras.layers


def _plain_cnn() -> keras.Model:
    inputs = keras.Input((16, 16, 3))
    x = inputs
    for name, filters in (("c1", 8), ("c2", 12)):
        x = L.Conv2D(filters, 3, padding="same", name=name)(x)
        x = L.ReLU(name=f"{name}_relu")(L.BatchNormalization(name=f"{name}_bn")(x))
        x = L.MaxPooling2D(name=f"{name}_pool")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(5, activation="softmax", name="predictions")(x))


def _data(model: keras.Model, examples: int = 32) -> Dataset:
    """Random images whose label is the sign pattern of two pixel means: learnable, fixed."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(examples, *model.input_shape[1:])).astype(np.float32)
    classes = model.output_shape[-1]
    y = (np.argmax(x.reshape(examples, -1)[:, :classes], axis=1)).astype(np.int32)
    return Dataset(x, y, x[:8], y[:8], x[:8], y[:8], classes, "synthetic")


def _prune(model: keras.Model, tmp_path, **settings) -> tuple[keras.Model, dict]:
    return prune_channels(model, _data(model), ChannelPruningSettings(**settings),
                          batch_size=16, learning_rate=1e-3, log_dir=tmp_path, seed=0)


def _direct_taylor(model: keras.Model, maps: dict[str, list[str]], x, y) -> dict[str, np.ndarray]:
    """sum over a group's maps of |mean over batch and positions of a * dL/da|."""
    names = [name for group in maps.values() for name in group]
    tapped = keras.Model(model.inputs, [model.output, *(model.get_layer(n).output for n in names)])
    with tf.GradientTape() as tape:
        probabilities, *activations = tapped(x, training=True)
        loss = keras.losses.SparseCategoricalCrossentropy()(y, probabilities)
    gradients = tape.gradient(loss, activations)
    terms = {name: np.abs(np.mean(a.numpy() * g.numpy(), axis=tuple(range(a.shape.rank - 1))))
             for name, a, g in zip(names, activations, gradients)}
    return {group: sum(terms[name] for name in group_maps) for group, group_maps in maps.items()}


# --- criteria ---------------------------------------------------------------------


def test_taylor_is_activation_times_gradient_averaged_and_l2_normalised():
    model = residual_net()
    groups, _ = select_groups(model, ())
    data = _data(model)
    batches = [(data.x_train[:8], data.y_train[:8]), (data.x_train[8:16], data.y_train[8:16])]
    maps = {"stem": ["stem_relu"], "b+a+c": ["add1_relu", "add2"], "head": ["gap"]}
    direct = [_direct_taylor(model, maps, x, y) for x, y in batches]
    trainer = PruningTrainer(model, groups, learning_rate=0.0)  # weights fixed for both batches
    for x, y in batches:
        trainer.step(x, y)
    raw = trainer.taylor()
    scores = channel_scores(model, groups, "taylor", flops_regularization=0.0, taylor=raw)
    assert sorted(raw) == sorted(maps)
    for name in maps:
        expected = (direct[0][name] + direct[1][name]) / 2
        np.testing.assert_allclose(raw[name], expected, rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(scores[name], expected / np.linalg.norm(expected), rtol=1e-4)


def test_l1_is_the_normalised_filter_norm_summed_over_tied_producers():
    model = residual_net()
    groups, _ = select_groups(model, ())
    scores = channel_scores(model, groups, "l1", flops_regularization=0.0)
    norms = sum(np.abs(model.get_layer(name).kernel.numpy()).sum(axis=(0, 1, 2)) for name in "abc")
    np.testing.assert_allclose(scores["b+a+c"], norms / np.linalg.norm(norms), rtol=1e-6)
    head = np.abs(model.get_layer("head").kernel.numpy()).sum(axis=(0, 1, 2))
    np.testing.assert_allclose(scores["head"], head / np.linalg.norm(head), rtol=1e-6)


def test_random_is_reproducible_by_seed():
    model = residual_net()
    groups, _ = select_groups(model, ())

    def draw(seed: int) -> dict[str, np.ndarray]:
        return channel_scores(model, groups, "random", flops_regularization=0.0,
                              rng=np.random.default_rng(seed))

    first, again, other = draw(7), draw(7), draw(8)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
        assert not np.array_equal(first[name], other[name])


def test_choose_removals_takes_the_lowest_across_groups_and_leaves_one():
    assert choose_removals({"a": np.array([0.5, 0.1]), "b": np.array([0.2, 0.3, 0.05])}, 3) == {
        "a": [1], "b": [0, 2]}
    assert choose_removals({"a": np.array([0.1]), "b": np.array([0.3, 0.2])}, 3) == {"b": [1]}


def test_flops_regularization_removes_the_most_expensive_group_first(tmp_path):
    model = _plain_cnn()
    groups, _ = select_groups(model, ())
    # c1: its filters (3*3*3 at 16x16) and c2's input rows (3*3*12 at 8x8);
    # c2: its filters (3*3*8 at 8x8) and the classifier's rows (5).
    assert mult_adds_per_channel(model, groups) == {"c1": 13824, "c2": 4613}
    scores = channel_scores(model, groups, "l1", flops_regularization=1e6)
    assert scores["c1"].max() < scores["c2"].min()
    _, record = _prune(model, tmp_path, flops_regularization=1e6, target_mult_adds=None,
                       target_channels=0.85, channels_per_step=3, prune_every=1,
                       finetune_epochs=0)
    assert record["reached"] and record["removal_steps"] == 1
    removed = record["steps"][0]["removed"]
    assert list(removed) == ["c1"] and len(removed["c1"]) == 3


def test_a_channel_with_an_all_zero_map_goes_first_and_changes_nothing(tmp_path):
    model = _plain_cnn()
    conv, bn = model.get_layer("c1"), model.get_layer("c1_bn")
    kernel, bias = conv.get_weights()
    kernel[..., 3], bias[3] = 0.0, 0.0
    conv.set_weights([kernel, bias])
    gamma, beta, mean, variance = bn.get_weights()
    beta[3] = mean[3] = 0.0
    bn.set_weights([gamma, beta, mean, variance])
    groups, _ = select_groups(model, ())
    trainer = PruningTrainer(model, groups, learning_rate=1e-3)
    data = _data(model)
    for start in (0, 16):
        trainer.step(data.x_train[start:start + 16], data.y_train[start:start + 16])
    scores = channel_scores(model, groups, "taylor", flops_regularization=0.0,
                            taylor=trainer.taylor())
    assert scores["c1"][3] == 0.0 and min(s.min() for s in scores.values()) == 0.0
    assert choose_removals(scores, 1) == {"c1": [3]}
    shrunk = shrink(model, {"c1": [0, 1, 2, 4, 5, 6, 7]})
    np.testing.assert_allclose(shrunk(data.x_test, training=False).numpy(),
                               model(data.x_test, training=False).numpy(), atol=1e-6)
    _, record = _prune(model, tmp_path, flops_regularization=0.0, target_mult_adds=None,
                       target_channels=0.95, prune_every=2, channels_per_step=1,
                       finetune_epochs=0)
    assert record["steps"][0]["removed"] == {"c1": [3]}


# --- the loop ---------------------------------------------------------------------


def _check_group_records(model: keras.Model, pruned: keras.Model, record: dict) -> None:
    """Every recorded group's counts are its producers' filters before and after."""
    groups, _ = select_groups(model, ())
    for group in groups:
        counts = record["groups"][group.name]
        for producer in group.producers:
            assert model.get_layer(producer).filters == counts["channels_before"]
            assert pruned.get_layer(producer).filters == counts["channels_after"]


def test_mobilenet_reaches_the_mult_adds_target(tmp_path):
    model = mobilenet_v1((32, 32, 1), 10, alpha=0.25)
    pruned, record = _prune(model, tmp_path, target_mult_adds=0.5, prune_every=2,
                            channels_per_step=400, finetune_epochs=0)
    before, after = summarize(model), summarize(pruned)
    assert record["reached"] and record["note"] is None
    assert after.total_mult_adds <= 0.5 * before.total_mult_adds
    assert record["mult_adds"] == {"before": before.total_mult_adds,
                                   "after": after.total_mult_adds}
    assert record["params"] == {"before": before.total_params, "after": after.total_params}
    assert record["achieved"]["mult_adds"] == after.total_mult_adds / before.total_mult_adds
    assert record["removal_steps"] == len(record["steps"]) >= 2  # trained after a surgery
    _check_group_records(model, pruned, record)
    assert model.get_layer("conv_pw_13").filters == 256  # the input model is left as it was
    losses = record["history"]["pruning"]["loss"]
    assert losses and all(np.isfinite(losses))
    images = np.zeros((3, 32, 32, 1), np.float32)
    probabilities = pruned.predict(images, verbose=0)
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    json.dumps(record)


def test_residual_model_reaches_the_target_and_fine_tunes(tmp_path):
    model = residual_net()
    pruned, record = _prune(model, tmp_path, criterion="l1", target_mult_adds=0.6,
                            prune_every=2, channels_per_step=4, finetune_epochs=1)
    assert record["reached"]
    assert summarize(pruned).total_mult_adds <= 0.6 * summarize(model).total_mult_adds
    _check_group_records(model, pruned, record)
    stream = record["groups"]["b+a+c"]["channels_after"]
    assert pruned.get_layer("c").kernel.shape[2] == stream
    assert pruned.get_layer("head").kernel.shape[2] == stream
    assert np.all(np.isfinite(record["history"]["finetune"]["loss"]))
    assert pruned.predict(np.zeros((2, 8, 8, 3), np.float32), verbose=0).shape == (2, 4)
    json.dumps(record)


def test_layers_restrict_the_groups_and_report_unprunable_matches(tmp_path):
    model = _plain_cnn()
    pruned, record = _prune(model, tmp_path, layers=("c2", "pred.*"), target_mult_adds=None,
                            target_channels=0.5, channels_per_step=6, prune_every=1,
                            finetune_epochs=0)
    assert record["reached"] and list(record["groups"]) == ["c2"]
    assert record["groups"]["c2"] == {"channels_before": 12, "channels_after": 6,
                                      "removal_steps": 1}
    assert pruned.get_layer("c1").filters == 8 and pruned.get_layer("c2").filters == 6
    assert list(record["unprunable"]) == ["predictions"]
    assert "'predictions' is a model output" in record["unprunable"]["predictions"]


def test_a_pattern_matches_tied_producers_and_a_typo_is_refused():
    groups, unprunable = select_groups(residual_net(), ("a",))
    assert [group.name for group in groups] == ["b+a+c"] and unprunable == {}
    with pytest.raises(UserError, match=r"layers \['conv9'\] match no channel group"):
        select_groups(_plain_cnn(), ("conv9",))


def test_an_unreachable_target_returns_reached_false(tmp_path):
    model = _plain_cnn()
    pruned, record = _prune(model, tmp_path, layers=("c1",), target_mult_adds=0.05,
                            channels_per_step=100, prune_every=1, finetune_epochs=0)
    assert record["reached"] is False
    assert record["groups"]["c1"]["channels_after"] == pruned.get_layer("c1").filters == 1
    assert record["achieved"]["mult_adds"] > 0.05
    assert "no selected group can lose another channel (each keeps at least 1)" in record["note"]
    _, record = _prune(model, tmp_path, layers=("predictions",), target_channels=0.5,
                       target_mult_adds=None, finetune_epochs=0)
    assert record["reached"] is False and record["removal_steps"] == 0
    assert record["groups"] == {} and list(record["unprunable"]) == ["predictions"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"criterion": "magnitude"}, "criterion 'magnitude' is not one of taylor, l1, random"),
        ({"flops_regularization": -1.0}, "flops_regularization -1.0 must be a finite number >= 0"),
        ({"flops_regularization": float("nan")}, "flops_regularization nan must be a finite"),
        ({"target_channels": 0.5}, "set exactly one of target_mult_adds and target_channels"),
        ({"target_mult_adds": None}, "set exactly one of target_mult_adds and target_channels "
                                     "(got none)"),
        ({"target_mult_adds": 1.0}, "target_mult_adds 1.0 must be a fraction strictly between"),
        ({"target_mult_adds": None, "target_channels": 0}, "target_channels 0 must be a fraction"),
        ({"prune_every": 0}, "prune_every 0 must be an integer >= 1"),
        ({"channels_per_step": 1.5}, "channels_per_step 1.5 must be an integer >= 1"),
        ({"finetune_epochs": -1}, "finetune_epochs -1 must be an integer >= 0"),
        ({"layers": "conv.*"}, "layers 'conv.*' must be a tuple of regular expressions"),
        ({"layers": ("conv[",)}, "layers pattern 'conv[' is not a regular expression"),
    ],
)
def test_bad_settings_are_one_clear_error(settings, message):
    with pytest.raises(UserError) as error:
        ChannelPruningSettings(**settings)
    assert message in str(error.value)


# --- with a teacher ---------------------------------------------------------------


def test_with_a_teacher_each_update_trains_on_the_distillation_loss():
    keras.utils.set_random_seed(1)
    student, teacher = residual_net(), residual_net()
    settings = DistillationSettings(temperature=2.0, alpha=0.7, beta=10.0,
                                    attention_layers={"add1_relu": "add1_relu"})
    groups, _ = select_groups(student, ())
    data = _data(student)
    x, y = data.x_train[:8], data.y_train[:8]
    features = keras.Model(student.inputs, [student.output, student.get_layer("add1_relu").output])
    taught = keras.Model(teacher.inputs, [teacher.output, teacher.get_layer("add1_relu").output])
    probabilities, attended = features(x, training=True)
    teacher_probabilities, teacher_map = taught(x, training=False)
    expected = np.mean(distillation_losses(y, probabilities, teacher_probabilities, settings,
                                           [attended], [teacher_map])["loss"].numpy())
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    trainer = PruningTrainer(student, groups, learning_rate=1e-3,
                             teacher=Teacher(teacher, settings))
    loss, _ = trainer.step(x, y)
    assert loss == pytest.approx(float(expected), rel=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(teacher.get_weights(), teacher_weights))
    assert all(np.all(np.isfinite(terms)) for terms in trainer.taylor().values())


def test_pruning_taught_by_the_float_model_reaches_the_target(tmp_path):
    model = residual_net()
    weights = [w.copy() for w in model.get_weights()]
    pruned, record = prune_channels(
        model, _data(model), ChannelPruningSettings(criterion="taylor", target_mult_adds=0.6,
                                                    prune_every=2, channels_per_step=4),
        batch_size=16, learning_rate=1e-3, log_dir=tmp_path, seed=0,
        teacher=Teacher(model, DistillationSettings(attention_layers={"add2": "add2"})))
    assert record["reached"]
    assert summarize(pruned).total_mult_adds <= 0.6 * summarize(model).total_mult_adds
    finetune = record["history"]["finetune"]
    assert np.all(np.isfinite(finetune["kd_loss"])) and np.all(np.isfinite(finetune["at_loss"]))
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights))
    assert pruned.loss is not None  # compiled for its own loss again
    assert pruned.predict(np.zeros((2, 8, 8, 3), np.float32), verbose=0).shape == (2, 4)


def test_an_attention_pair_of_other_spatial_sizes_is_one_error():
    model = residual_net()
    groups, _ = select_groups(model, ())
    settings = DistillationSettings(attention_layers={"stem_relu": "gap"})
    with pytest.raises(UserError, match=r"teacher layer 'gap' outputs \(None, 10\), which has "
                                        r"no spatial axes"):
        PruningTrainer(model, groups, 1e-3, Teacher(residual_net(), settings))

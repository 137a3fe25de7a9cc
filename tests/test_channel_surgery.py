"""Channel surgery: which feature maps can go, and the smaller model without them.

The key check: the shrunk model computes what the original computes with the removed
feature maps zeroed where their consumers read them (their kernels' input slices)."""
import numpy as np
import pytest

from core.errors import UserError
from core.keras_env import keras
from models.mobilenet import mobilenet_v1
from models.summary import summarize
from fixtures.channel_models import residual_net
from fixtures.user_models import separable_net
from pipelines.channel_surgery import channel_groups, shrink

L = keras.layers


def _randomized(model: keras.Model) -> keras.Model:
    """Random biases and BatchNorm statistics, so that no BN is the identity."""
    rng = np.random.default_rng(1)
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, variance = (w.shape for w in weights)
            weights = [rng.uniform(0.5, 1.5, gamma), rng.normal(0, 0.2, beta),
                       rng.normal(0, 0.2, mean), rng.uniform(0.5, 1.5, variance)]
        else:
            weights = [w if w.ndim > 1 else rng.normal(0, 0.2, w.shape) for w in weights]
        layer.set_weights(weights)
    return model


def _mobilenet() -> keras.Model:
    return _randomized(mobilenet_v1((32, 32, 1), 10, alpha=0.25))


def _plain_cnn() -> keras.Model:
    inputs = keras.Input((16, 16, 3), name="image")
    x = inputs
    for name, filters in (("c1", 8), ("c2", 12)):
        x = L.Conv2D(filters, 3, padding="same", name=name)(x)
        x = L.BatchNormalization(name=f"{name}_bn")(x)
        x = L.ReLU(name=f"{name}_relu")(x)
        x = L.MaxPooling2D(name=f"{name}_pool")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(5, activation="softmax", name="predictions")(x)
    return _randomized(keras.Model(inputs, outputs))


def _sequential() -> keras.Model:
    return _randomized(keras.Sequential([
        keras.Input((8, 8, 2)), L.Conv2D(6, 3, name="conv"), L.BatchNormalization(name="bn"),
        L.Activation("relu", name="relu"), L.GlobalMaxPooling2D(name="gmp"),
        L.Dense(8, activation="tanh", name="hidden"), L.Dropout(0.5, name="drop"),
        L.Dense(3, name="predictions"),
    ]))


def _masked(model: keras.Model, keep: dict[str, list[int]]) -> keras.Model:
    """The original model with the removed channels zeroed in every consumer's kernel."""
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    groups = _groups(model)
    for name, kept in keep.items():
        removed = sorted(set(range(groups[name].size)) - set(kept))
        for consumer in groups[name].consumers:
            layer = masked.get_layer(consumer)
            kernel, *rest = layer.get_weights()
            kernel[..., removed, :] = 0.0
            layer.set_weights([kernel, *rest])
    return masked


def _images(model: keras.Model) -> np.ndarray:
    return np.random.default_rng(2).normal(size=(4, *model.input_shape[1:])).astype(np.float32)


def _groups(model: keras.Model) -> dict:
    return {group.name: group for group in channel_groups(model)}


# --- groups -----------------------------------------------------------------------


def test_mobilenet_groups_end_at_the_classifier():
    groups = _groups(_mobilenet())
    assert list(groups) == ["conv1", *(f"conv_pw_{i}" for i in range(1, 14)), "predictions"]
    assert all(groups[name].prunable for name in list(groups)[:-1])
    assert groups["conv1"].size == 8 and groups["conv_pw_13"].size == 256
    assert groups["conv_pw_1"].followers == (
        "conv_pw_1_bn", "conv_pw_1_relu", "conv_dw_2", "conv_dw_2_bn", "conv_dw_2_relu")
    assert groups["conv_pw_1"].consumers == ("conv_pw_2",)
    assert groups["conv_pw_13"].followers == (
        "conv_pw_13_bn", "conv_pw_13_relu", "global_pool", "dropout")
    assert groups["conv_pw_13"].consumers == ("predictions",)
    assert not groups["predictions"].prunable
    assert "'predictions' is a model output" in groups["predictions"].reason


def test_explicit_padding_mobilenet_follows_zero_padding():
    groups = _groups(mobilenet_v1((32, 32, 1), 10, alpha=0.25, explicit_padding=True))
    assert "conv_dw_2_pad" in groups["conv_pw_1"].followers
    assert groups["conv_pw_1"].prunable


def test_plain_cnn_groups():
    groups = _groups(_plain_cnn())
    assert [(g.name, g.prunable, g.consumers) for g in groups.values()] == [
        ("c1", True, ("c2",)), ("c2", True, ("predictions",)), ("predictions", False, ())]
    assert groups["c1"].followers == ("c1_bn", "c1_relu", "c1_pool")


def test_add_ties_producers_into_one_group():
    groups = _groups(_randomized(residual_net()))
    assert list(groups) == ["stem", "b+a+c", "head", "predictions"]
    stream = groups["b+a+c"]
    assert stream.prunable and stream.size == 6
    assert stream.producers == ("b", "a", "c")  # model.layers order: b, b_bn, a, add1, ...
    assert stream.followers == ("b_bn", "add1", "add1_relu", "add2")
    assert stream.consumers == ("c", "head")
    assert groups["stem"].consumers == ("b", "a")


def test_sequential_groups():
    groups = _groups(_sequential())
    assert [(g.name, g.prunable) for g in groups.values()] == [
        ("conv", True), ("hidden", True), ("predictions", False)]
    assert groups["hidden"].followers == ("drop",)


def _single_conv_model(middle) -> keras.Model:
    """image -> Conv2D 'conv' -> `middle(x, image)` -> GAP -> Dense."""
    inputs = keras.Input((8, 8, 4), name="image")
    x = middle(L.Conv2D(4, 3, padding="same", name="conv")(inputs), inputs)
    x = L.GlobalAveragePooling2D()(x) if len(x.shape) == 4 else x
    return keras.Model(inputs, L.Dense(3, name="predictions")(x))


def _shared_twice(x, inputs):
    shared = L.Conv2D(4, 1, name="shared")
    return L.Add(name="sum")([shared(x), shared(inputs)])


@pytest.mark.parametrize(
    ("middle", "reason"),
    [
        (_shared_twice, "'shared' is shared (called 2 times)"),
        (lambda x, _: L.Flatten(name="flat")(x), "reach Flatten 'flat'"),
        (lambda x, _: L.Reshape((64, 4), name="reshape")(x), "reach Reshape 'reshape'"),
        (lambda x, i: L.Concatenate(name="cat")([x, i]), "reach Concatenate 'cat'"),
        (lambda x, i: L.Add(name="residual")([x, i]),
         "Add 'residual' also adds 'image', whose channels cannot shrink"),
        (lambda x, _: L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x),
         "'dw' has depth_multiplier=2"),
        (lambda x, _: L.Activation("softmax", name="mix")(x), "'mix' has activation 'softmax'"),
        (lambda x, _: L.Conv2D(4, 1, groups=2, name="grouped")(x),
         "consumer 'grouped' is a grouped convolution"),
        (lambda x, _: L.BatchNormalization(axis=1, name="rows")(x), "normalizes axis [1]"),
    ],
)
def test_unfollowable_layers_make_a_group_unprunable(middle, reason):
    group = _groups(_single_conv_model(middle))["conv"]
    assert not group.prunable
    assert reason in group.reason


def test_grouped_producer_and_output_producer_are_unprunable():
    inputs = keras.Input((8, 8, 4))
    x = L.Conv2D(4, 3, groups=2, name="grouped")(inputs)
    model = keras.Model(inputs, [L.ReLU(name="features")(x), L.Conv2D(2, 1, name="side")(x)])
    groups = _groups(model)
    assert "producer 'grouped' is a grouped convolution (groups=2)" in groups["grouped"].reason
    assert "'features' is a model output" in groups["grouped"].reason
    assert "'side' is a model output" in groups["side"].reason


def test_unknown_layer_kinds_are_named():
    groups = _groups(separable_net((16, 16, 3), 4))
    assert groups["stem"].reason == (
        "the channels reach SeparableConv2D 'sep_a', which channel surgery does not follow")
    assert "SeparableConv2D 'sep_c'" in groups["pw_b"].reason


# --- surgery ----------------------------------------------------------------------


def _check_same_outputs(model: keras.Model, keep: dict[str, list[int]]) -> keras.Model:
    """Shrink, and check against the masked original; returns the shrunk model."""
    shrunk = shrink(model, keep)
    images = _images(model)
    expected = _masked(model, keep)(images, training=False).numpy()
    assert not np.allclose(expected, model(images, training=False).numpy(), atol=1e-4)
    np.testing.assert_allclose(shrunk(images, training=False).numpy(), expected, atol=1e-5)
    return shrunk


def test_shrunk_mobilenet_equals_the_masked_original():
    model = _mobilenet()
    keep = {"conv1": [0, 2, 3, 5, 7], "conv_pw_1": [1, 4, 6, 8, 9, 15],
            "conv_pw_6": list(range(0, 128, 2)), "conv_pw_13": list(range(3, 200))}
    shrunk = _check_same_outputs(model, keep)
    assert [layer.name for layer in shrunk.layers] == [layer.name for layer in model.layers]
    assert shrunk.input_shape == model.input_shape
    assert shrunk.get_layer("conv1").filters == 5
    assert shrunk.get_layer("conv1_bn").gamma.shape == (5,)
    assert shrunk.get_layer("conv_dw_1").depthwise_kernel.shape == (3, 3, 5, 1)
    assert shrunk.get_layer("conv_pw_1").kernel.shape == (1, 1, 5, 6)
    assert shrunk.get_layer("conv_dw_2_bn").moving_variance.shape == (6,)
    assert shrunk.get_layer("conv_pw_2").kernel.shape == (1, 1, 6, 32)
    assert shrunk.get_layer("conv_pw_7").kernel.shape == (1, 1, 64, 128)
    assert shrunk.get_layer("predictions").kernel.shape == (197, 10)
    before, after = summarize(model), summarize(shrunk)
    assert after.total_params < before.total_params
    assert after.total_mult_adds < before.total_mult_adds


def test_shrunk_plain_cnn_equals_the_masked_original_and_saves_exactly_the_removed():
    model = _plain_cnn()
    shrunk = _check_same_outputs(model, {"c1": [0, 1, 4, 6, 7], "c2": [2, 5, 11]})
    assert shrunk.get_layer("c1").kernel.shape == (3, 3, 3, 5)
    assert shrunk.get_layer("c1").bias.shape == (5,)
    assert shrunk.get_layer("c2").kernel.shape == (3, 3, 5, 3)
    assert shrunk.get_layer("c2_bn").moving_mean.shape == (3,)
    assert shrunk.get_layer("predictions").kernel.shape == (3, 5)
    c1_saved = 3 * (3 * 3 * 3 + 1 + 4)  # three filters with bias, three BN channels
    c2_saved = 3 * 3 * 3 * 12 + 9 * (3 * 3 * 5 + 1 + 4) + 9 * 5  # c2 inputs, filters, rows
    assert summarize(model).total_params - summarize(shrunk).total_params == c1_saved + c2_saved


def test_shrunk_residual_model_equals_the_masked_original():
    model = _randomized(residual_net())
    shrunk = _check_same_outputs(model, {"b+a+c": [0, 2, 3], "stem": [1, 2, 4, 5, 6, 7]})
    assert [shrunk.get_layer(name).kernel.shape[-1] for name in "abc"] == [3, 3, 3]
    assert shrunk.get_layer("a").kernel.shape[2] == 6
    assert shrunk.get_layer("c").kernel.shape == (3, 3, 3, 3)
    assert shrunk.get_layer("head").kernel.shape == (3, 3, 3, 10)
    assert shrunk.get_layer("b_bn").beta.shape == (3,)


def test_shrunk_sequential_equals_the_masked_original():
    model = _sequential()
    shrunk = _check_same_outputs(model, {"conv": [1, 3], "hidden": [0, 5, 6, 7]})
    assert shrunk.get_layer("hidden").kernel.shape == (2, 4)
    assert shrunk.get_layer("predictions").kernel.shape == (4, 3)


def test_kept_weights_are_bit_identical_and_other_layers_untouched():
    model = _plain_cnn()
    kept = [0, 3, 7]
    shrunk = shrink(model, {"c1": kept})
    for name in ("c1", "c1_bn"):
        for old, new in zip(model.get_layer(name).get_weights(),
                            shrunk.get_layer(name).get_weights()):
            np.testing.assert_array_equal(new, np.take(old, kept, axis=-1))
    old_kernel, old_bias = model.get_layer("c2").get_weights()
    new_kernel, new_bias = shrunk.get_layer("c2").get_weights()
    np.testing.assert_array_equal(new_kernel, old_kernel[:, :, kept, :])
    np.testing.assert_array_equal(new_bias, old_bias)
    for name in ("c2_bn", "predictions"):
        for old, new in zip(model.get_layer(name).get_weights(),
                            shrunk.get_layer(name).get_weights()):
            np.testing.assert_array_equal(new, old)


def test_unsorted_keep_is_sorted_and_empty_keep_copies():
    model = _plain_cnn()
    images = _images(model)
    unsorted = shrink(model, {"c1": np.array([5, 1])})
    np.testing.assert_array_equal(unsorted.predict(images, verbose=0),
                                  shrink(model, {"c1": [1, 5]}).predict(images, verbose=0))
    copy = shrink(model, {})
    assert copy is not model
    np.testing.assert_array_equal(copy.predict(images, verbose=0),
                                  model.predict(images, verbose=0))


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        ({"c3": [0]}, "no channel group 'c3'; prunable groups: c1, c2."),
        ({"predictions": [0]}, "channel group 'predictions' cannot be pruned ('predictions' is "
                               "a model output"),
        ({"c1": []}, "keep['c1'] is empty; keep at least one of its 8 channels"),
        ({"c1": [0, 8]}, "keep['c1'] has indices [8] out of range; the group's channels are 0..7"),
        ({"c1": [-1, 2]}, "keep['c1'] has indices [-1] out of range"),
        ({"c2": [3, 1, 3]}, "keep['c2'] repeats indices [3]; name each kept channel once."),
        ({"c1": [0.5]}, "keep['c1'] must be a sequence of integer channel indices, got [0.5]"),
        ({"c1": 3}, "keep['c1'] must be a sequence of integer channel indices, got 3"),
    ],
)
def test_bad_keep_is_one_clear_error(keep, message):
    with pytest.raises(UserError) as error:
        shrink(_plain_cnn(), keep)
    assert message in str(error.value)


class _Apply(L.Layer):
    """A user's layer holding a function and no get_config: it cannot be rebuilt."""

    def __init__(self, function):
        super().__init__(name="apply")
        self.function = function

    def call(self, x):
        return self.function(x)


def _double(tensor):
    return 2.0 * tensor


def test_a_layer_that_cannot_be_rebuilt_is_named():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="conv")(_Apply(_double)(inputs))
    model = keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(x)))
    with pytest.raises(UserError) as error:
        shrink(model, {"conv": [0, 1]})
    assert ("layer 'apply' (_Apply) cannot be rebuilt from its config (NotImplementedError)"
            in str(error.value))


def test_subclassed_model_is_refused():
    class Tiny(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Tiny()
    model(np.zeros((1, 3), np.float32))
    with pytest.raises(UserError, match="must be a built functional or Sequential"):
        channel_groups(model)

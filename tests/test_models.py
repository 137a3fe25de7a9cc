"""Model builders, the param/mult-add counter, and the model registry."""
import textwrap

import numpy as np
import pytest

from core.errors import UserError
from core.keras_env import keras, tf
from models import registry
from models.gru import gru_classifier
from models.mobilenet import mobilenet_v1, scaled_channels
from models.registry import build_model, ensure_tf_keras_model, list_models, register
from models.summary import format_summary, summarize

# --- MobileNet v1 -------------------------------------------------------------


def test_small_mobilenet_shape_and_layer_names():
    model = mobilenet_v1((32, 32, 1), 10, alpha=0.25)
    assert model.output_shape == (None, 10)
    names = {layer.name for layer in model.layers}
    for i in range(1, 14):
        assert {f"conv_dw_{i}", f"conv_dw_{i}_bn", f"conv_pw_{i}", f"conv_pw_{i}_bn"} <= names
    assert {"conv1", "conv1_bn", "predictions"} <= names
    pointwise = model.get_layer("conv_pw_13")
    assert pointwise.kernel_size == (1, 1) and not pointwise.use_bias
    assert pointwise.filters == 256  # 1024 * 0.25
    assert model.get_layer("conv_pw_13_relu").output_shape == (None, 1, 1, 256)
    probs = model.predict(np.zeros((2, 32, 32, 1), np.float32), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("channels", "alpha", "expected"),
    [(32, 0.25, 8), (1024, 0.75, 768), (64, 0.1, 8), (32, 0.35, 16), (512, 1.3, 664)],
)
def test_scaled_channels_round_to_multiples_of_8(channels, alpha, expected):
    assert scaled_channels(channels, alpha) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0.0}, "alpha 0.0 must be > 0"),
        ({"input_shape": (16, 16, 3)}, "five stride-2 stages"),
        ({"input_shape": (32, 32)}, "(height, width, channels)"),
        ({"input_shape": (32, 32, 0)}, "channels 0 must be at least 1"),
        ({"num_classes": 1}, "num_classes 1 must be an integer >= 2"),
        ({"depth_multiplier": 0}, "depth_multiplier 0"),
        ({"dropout": 1.0}, "dropout 1.0 must be in [0, 1)"),
    ],
)
def test_mobilenet_rejects_bad_arguments(kwargs, message):
    args = {"input_shape": (32, 32, 1), "num_classes": 10, **kwargs}
    with pytest.raises(UserError) as error:
        mobilenet_v1(**args)
    assert message in str(error.value)


@pytest.fixture(scope="module")
def mobilenet_224():
    return summarize(mobilenet_v1((224, 224, 3), 1000))


def test_explicit_padding_builds_the_graph_xnnpack_sparse_inference_takes():
    """Symmetric ZeroPadding2D + "valid" on every stride-2 layer, "same" nowhere with
    stride 2, a MEAN at the end after conversion; same shapes and weights as "same"."""
    from tflite.convert import convert_model
    from tflite.inspect import inspect_model

    same = mobilenet_v1((64, 64, 3), 10, alpha=0.25)
    explicit = mobilenet_v1((64, 64, 3), 10, alpha=0.25, explicit_padding=True)
    strided = [layer for layer in explicit.layers if getattr(layer, "strides", (1, 1)) == (2, 2)]
    assert [layer.name for layer in strided] == ["conv1", "conv_dw_2", "conv_dw_4",
                                                  "conv_dw_6", "conv_dw_12"]
    assert all(layer.padding == "valid" for layer in strided)
    pads = [layer for layer in explicit.layers if isinstance(layer, keras.layers.ZeroPadding2D)]
    assert len(pads) == 5 and all(p.padding == ((1, 1), (1, 1)) for p in pads)
    assert explicit.count_params() == same.count_params()
    assert [layer.output_shape for layer in explicit.layers if layer not in pads] == \
        [layer.output_shape for layer in same.layers]
    ops = inspect_model(convert_model(explicit, "none")).op_counts
    assert ops["PAD"] == 5 and ops["MEAN"] == 1


def test_mobilenet_224_matches_paper(mobilenet_224):
    # Howard et al. 2017, Table 8: 1.0 MobileNet-224 has 4.2M params and 569M mult-adds.
    assert mobilenet_224.total_params == 4_253_864  # every weight, BN moving statistics included
    assert mobilenet_224.total_trainable_params == 4_231_976
    assert abs(mobilenet_224.total_trainable_params - 4.2e6) / 4.2e6 < 0.01
    assert abs(mobilenet_224.total_params - 4.2e6) / 4.2e6 < 0.02
    assert abs(mobilenet_224.total_mult_adds - 569e6) / 569e6 < 0.01


def test_pointwise_convolutions_dominate_mult_adds(mobilenet_224):
    # Paper, Table 2: 1x1 convolutions take 94.86% of the mult-adds.
    pointwise = sum(r.mult_adds for r in mobilenet_224.rows if r.name.startswith("conv_pw_"))
    assert pointwise / mobilenet_224.total_mult_adds == pytest.approx(0.9486, abs=0.002)


def test_width_and_resolution_multipliers_scale_mult_adds(mobilenet_224):
    half_width = summarize(mobilenet_v1((224, 224, 3), 1000, alpha=0.5)).total_mult_adds
    low_res = summarize(mobilenet_v1((160, 160, 3), 1000)).total_mult_adds
    # Roughly alpha**2 and rho**2; the paper reports 149M and 290M.
    assert half_width / mobilenet_224.total_mult_adds == pytest.approx(0.5**2, rel=0.06)
    assert low_res / mobilenet_224.total_mult_adds == pytest.approx((160 / 224) ** 2, rel=0.02)
    assert abs(half_width - 149e6) / 149e6 < 0.01
    assert abs(low_res - 290e6) / 290e6 < 0.01


def test_format_summary_lists_layers_and_totals(mobilenet_224):
    text = format_summary(mobilenet_224)
    assert "conv_pw_13" in text and "DepthwiseConv2D" in text
    assert "Total params: 4,253,864 (trainable 4,231,976" in text
    assert "(568.7 M)" in text


# --- GRU classifier -----------------------------------------------------------


def test_stacked_gru_on_float_features():
    model = gru_classifier((20, 8), 5, units=(16, 8))
    assert model.input.dtype == "float32"
    assert model.get_layer("gru_1").return_sequences
    assert not model.get_layer("gru_2").return_sequences
    assert model.get_layer("gru_1").output_shape == (None, 20, 16)
    assert model.predict(np.zeros((3, 20, 8), np.float32), verbose=0).shape == (3, 5)


def test_gru_with_embedding_takes_token_ids():
    model = gru_classifier((12,), 4, units=[8], vocab_size=50, embedding_dim=6, dropout=0.2)
    assert model.input.dtype == "int32"
    assert model.get_layer("embedding").output_shape == (None, 12, 6)
    assert model.get_layer("dropout").rate == 0.2
    assert model.predict(np.ones((2, 12), np.int32), verbose=0).shape == (2, 4)


def test_gru_reset_after_false_has_single_bias():
    units, features = 8, 3
    before = gru_classifier((5, features), 2, units=[units], reset_after=False).get_layer("gru_1")
    after = gru_classifier((5, features), 2, units=[units]).get_layer("gru_1")
    assert not before.reset_after and after.reset_after
    weights = 3 * (features * units + units * units)
    assert before.count_params() == weights + 3 * units
    assert after.count_params() == weights + 6 * units


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_shape": (20,)}, "set vocab_size for token ids"),
        ({"input_shape": (20, 8), "vocab_size": 10}, "drop vocab_size"),
        ({"units": []}, "one per GRU layer"),
        ({"units": [16, 0]}, "one per GRU layer"),
        ({"num_classes": 1}, "num_classes 1 must be an integer >= 2"),
        ({"input_shape": (20,), "vocab_size": 1}, "vocab_size 1 must be an integer >= 2"),
        ({"embedding_dim": 0}, "embedding_dim 0"),
        ({"dropout": -0.1}, "dropout -0.1 must be in [0, 1)"),
    ],
)
def test_gru_rejects_bad_arguments(kwargs, message):
    args = {"input_shape": (20, 8), "num_classes": 3, **kwargs}
    with pytest.raises(UserError) as error:
        gru_classifier(**args)
    assert message in str(error.value)


# --- Summary counter on small graphs -----------------------------------------


def test_summary_counts_gru_and_sequence_dense():
    steps, features, units = 10, 4, 8
    inputs = keras.Input((steps, features))
    x = keras.layers.GRU(units, return_sequences=True, name="gru")(inputs)
    x = keras.layers.Dense(6, name="per_step")(x)
    summary = summarize(keras.Model(inputs, x))
    costs = {r.name: r.mult_adds for r in summary.rows}
    assert costs["gru"] == steps * 3 * (features * units + units * units)
    assert costs["per_step"] == steps * units * 6
    assert summary.notes == ()


def test_summary_embedding_is_free_and_notes_unknowns():
    inputs = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(20, 4, name="embed")(inputs)
    x = keras.layers.GRU(5, name="gru")(x)
    summary = summarize(keras.Model(inputs, x))
    costs = {r.name: r.mult_adds for r in summary.rows}
    assert costs["embed"] == 0
    assert costs["gru"] == 3 * (4 * 5 + 5 * 5)  # unknown steps counted as one
    assert any("gru" in note and "unknown" in note for note in summary.notes)


def test_summary_notes_layers_without_a_rule_and_nested_models():
    inner = keras.Sequential(
        [keras.Input((4, 4, 2)), keras.layers.Conv2DTranspose(3, 2, name="up")], name="inner"
    )
    inputs = keras.Input((4, 4, 2))
    outputs = keras.layers.Conv2D(2, 1, name="mix")(inner(inputs))
    summary = summarize(keras.Model(inputs, outputs))
    names = [r.name for r in summary.rows]
    assert "inner/up" in names and "mix" in names
    assert summary.total_params == inner.count_params() + (3 * 2 + 2)
    assert any("inner/up: no mult-add rule for Conv2DTranspose" in n for n in summary.notes)
    assert "Note: inner/up" in format_summary(summary)


def test_summary_rejects_unbuilt_model():
    with pytest.raises(UserError, match="not built"):
        summarize(keras.Sequential([keras.layers.Dense(2)]))


# --- Registry -----------------------------------------------------------------


def test_registered_names():
    assert {"mobilenet_v1", "gru_classifier"} <= set(list_models())


def test_build_registered_model_with_options():
    model = build_model("gru_classifier", (6, 3), 2, {"units": [4], "reset_after": False})
    assert model.output_shape == (None, 2)
    assert not model.get_layer("gru_1").reset_after


def test_register_custom_builder(monkeypatch):
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))

    @register("tiny_dense")
    def tiny_dense(input_shape, num_classes):
        inputs = keras.Input(input_shape)
        return keras.Model(inputs, keras.layers.Dense(num_classes)(inputs))

    assert build_model("tiny_dense", (3,), 2, {}).output_shape == (None, 2)
    with pytest.raises(UserError, match="already registered"):
        register("tiny_dense")(lambda input_shape, num_classes: None)
    with pytest.raises(UserError, match="cannot be registered"):
        register("pkg.mod:fn")


def test_unknown_option_names_accepted_parameters():
    with pytest.raises(UserError) as error:
        build_model("mobilenet_v1", (32, 32, 1), 10, {"alpah": 0.5})
    message = str(error.value)
    assert "'alpah'" in message and "Did you mean 'alpha'" in message
    assert "alpha, depth_multiplier, dropout, batch_norm_momentum, explicit_padding, name" \
        in message


def test_data_arguments_are_not_options():
    with pytest.raises(UserError, match="comes from the data set"):
        build_model("mobilenet_v1", (32, 32, 1), 10, {"num_classes": 3})


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(UserError) as error:
        build_model("resnet50", (32, 32, 3), 10, {})
    message = str(error.value)
    for part in ("'resnet50'", "gru_classifier", "mobilenet_v1", "package.module:function"):
        assert part in message
    assert ".keras" in message and "SavedModel" in message


def _tiny_gru():
    return gru_classifier((6, 3), 2, units=[4])


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize("file_name", ["tiny.keras", "tiny.h5", "tiny_savedmodel"])
def test_saved_models_load_and_are_checked(tmp_path, file_name):
    original = _tiny_gru()
    path = str(tmp_path / file_name)
    original.save(path)
    loaded = build_model(path, (6, 3), 2, {})
    x = np.random.default_rng(0).normal(size=(2, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), original.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )
    mismatch = r"takes inputs of shape \(6, 3\) but the data has shape \(7, 3\)"
    with pytest.raises(UserError, match=mismatch):
        build_model(path, (7, 3), 2, {})
    with pytest.raises(UserError, match="outputs 2 classes but the data has 5"):
        build_model(path, (6, 3), 5, {})


def test_saved_model_path_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        build_model(str(tmp_path / "missing.keras"), (6, 3), 2, {})
    with pytest.raises(UserError, match="not a SavedModel"):
        build_model(str(tmp_path), (6, 3), 2, {})
    path = tmp_path / "tiny.keras"
    _tiny_gru().save(path)
    with pytest.raises(UserError, match="do not apply to the saved model"):
        build_model(str(path), (6, 3), 2, {"units": [8]})


_USER_MODULE = """
from core.keras_env import keras

def tiny(input_shape, num_classes, width=4):
    inputs = keras.Input(input_shape)
    hidden = keras.layers.Dense(width, name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(hidden))

def keras3_model(input_shape, num_classes):
    import keras as keras3
    return keras3.Sequential([keras3.Input(input_shape), keras3.layers.Dense(num_classes)])

not_a_function = 3
"""


def test_user_builder_from_sys_path(tmp_path, monkeypatch):
    (tmp_path / "user_builders_a.py").write_text(textwrap.dedent(_USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("user_builders_a:tiny", (5,), 3, {"width": 7})
    assert model.get_layer("hidden").units == 7
    with pytest.raises(UserError) as error:
        build_model("user_builders_a:tiny", (5,), 3, {"depth": 2})
    assert "'depth'" in str(error.value) and "it accepts: width" in str(error.value)
    with pytest.raises(UserError, match="has no function 'not_a_function'"):
        build_model("user_builders_a:not_a_function", (5,), 3, {})
    with pytest.raises(UserError, match="Keras 3 model"):
        build_model("user_builders_a:keras3_model", (5,), 3, {})


def test_user_builder_from_current_directory(tmp_path, monkeypatch):
    package = tmp_path / "user_pkg_b"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent(_USER_MODULE))
    monkeypatch.chdir(tmp_path)
    assert build_model("user_pkg_b.nets:tiny", (5,), 3, {}).output_shape == (None, 3)
    with pytest.raises(UserError, match="no module named 'user_pkg_c'"):
        build_model("user_pkg_c.nets:tiny", (5,), 3, {})
    (package / "broken.py").write_text("import user_pkg_missing_dependency\n")
    with pytest.raises(UserError, match="importing 'user_pkg_b.broken' failed"):
        build_model("user_pkg_b.broken:tiny", (5,), 3, {})


def test_keras3_model_object_is_rejected():
    import keras as keras3

    model = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)])
    with pytest.raises(UserError) as error:
        ensure_tf_keras_model(model)
    message = str(error.value)
    assert "Keras 3" in message and "only supports Keras 2 (tf_keras)" in message
    assert "import tf_keras as keras" in message and "TF_USE_LEGACY_KERAS=1" in message


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside Keras 3 saving
@pytest.mark.parametrize("file_name", ["k3.keras", "k3.h5"])
def test_keras3_saved_file_is_rejected(tmp_path, file_name):
    import keras as keras3

    path = tmp_path / file_name
    keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)]).save(path)
    with pytest.raises(UserError) as error:
        build_model(str(path), (4,), 2, {})
    assert "written by Keras 3." in str(error.value) and "TF_USE_LEGACY_KERAS=1" in str(error.value)


def test_savedmodel_without_keras_metadata_is_rejected(tmp_path):
    tf.saved_model.save(tf.Module(), str(tmp_path / "plain"))
    with pytest.raises(UserError, match="no Keras metadata"):
        build_model(str(tmp_path / "plain"), (4,), 2, {})


def test_non_model_object_is_rejected():
    with pytest.raises(UserError, match="not a tf_keras Model"):
        ensure_tf_keras_model(object())
    model = _tiny_gru()
    assert ensure_tf_keras_model(model) is model

"""The Python binding's side of the runtime's open (tflite/runtime/edgepipe_runtime.h):
dynamic inputs resized (batch 1 unless chosen), shapes by input name in
benchmark_model's syntax, and the cap on activation memory."""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import UserError
from core.keras_env import keras, tf
from tflite.runner_io import input_layer_strings, parse_input_layers
from tflite.runtime.binding import LiteRtRunner

RNG = np.random.default_rng(4)


@pytest.fixture(scope="module")
def dynamic_batch() -> tuple[bytes, keras.Model]:
    """A model as `from_keras_model` converts it: its batch is -1 in shape_signature."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    return tf.lite.TFLiteConverter.from_keras_model(model).convert(), model


def test_dynamic_batch_runs_at_one_by_default(dynamic_batch):
    data, model = dynamic_batch
    runner = LiteRtRunner(data)
    assert runner.batch_size == 1
    x = RNG.standard_normal((3, 4)).astype(np.float32)  # three runs of one
    np.testing.assert_allclose(runner.predict(x), model(x).numpy(), atol=1e-5)


def test_input_shapes_choose_the_batch(dynamic_batch):
    data, model = dynamic_batch
    name = LiteRtRunner(data).input_details[0]["name"]
    runner = LiteRtRunner(data, input_shapes={name: (5, 4)})
    assert runner.batch_size == 5 and runner.output_details[0]["shape"].tolist() == [5, 3]
    x = RNG.standard_normal((7, 4)).astype(np.float32)  # a full batch and a padded one
    np.testing.assert_allclose(runner.predict(x), model(x).numpy(), atol=1e-5)


def test_unknown_input_name_and_tensor_cap_are_refused(dynamic_batch):
    data, _ = dynamic_batch
    with pytest.raises(UserError, match=r"cannot run <bytes>: .*'image', which is not an input"):
        LiteRtRunner(data, input_shapes={"image": (1, 4)})
    with pytest.raises(UserError, match=r"cannot run <bytes>: .*max_tensor_bytes"):
        LiteRtRunner(data, max_tensor_bytes=1)


def test_what_python_refuses_before_the_runtime(dynamic_batch):
    data, _ = dynamic_batch
    for shapes, message in (({"a:b": (1, 4)}, "input name 'a:b' cannot be written"),
                            ({"x": (1, 0)}, "the shape of input 'x' must be integers of at "
                                            "least 1, got \\[1, 0\\]"),
                            ({"x": ()}, "the shape of input 'x' must be integers")):
        with pytest.raises(UserError, match=message):
            LiteRtRunner(data, input_shapes=shapes)
    with pytest.raises(UserError, match="max_tensor_bytes must be 0 .* got -1"):
        LiteRtRunner(data, max_tensor_bytes=-1)
    with pytest.raises(UserError, match="accelerator must be 'cpu' or 'gpu'"):
        LiteRtRunner(data, accelerator="tpu")


def test_benchmark_model_syntax_round_trips():
    shapes = {"image": (1, 224, 224, 3), "tokens": (1, 20)}
    assert input_layer_strings(shapes) == ("image,tokens", "1,224,224,3:1,20")
    assert parse_input_layers(*input_layer_strings(shapes)) == shapes
    assert input_layer_strings(None) == ("", "") and parse_input_layers("", "") == {}


@pytest.mark.parametrize("names, shapes, message", [
    ("x", "", "input_layer is set but input_layer_shape is not: give both"),
    ("", "1,4", "input_layer_shape is set but input_layer is not: give both"),
    ("a,,b", "1:1:1", "input names are comma-separated and not empty"),
    ("a,a", "1:1", "names an input twice"),
    ("x", "1,four", "input_layer_shape '1,four': each shape is comma-separated integers of at "
                    "least 1"),
    ("x", "1,-1", "each shape is comma-separated integers of at least 1"),
    ("x", "1,4:", "each shape is comma-separated integers"),
    ("a,b", "1,4", r"input_layer names 2 input\(s\) \(a, b\) but input_layer_shape gives 1 "
                   r"shape\(s\)"),
])
def test_benchmark_model_syntax_errors_name_the_problem(names, shapes, message):
    with pytest.raises(UserError, match=message):
        parse_input_layers(names, shapes)

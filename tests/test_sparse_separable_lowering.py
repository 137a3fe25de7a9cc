"""DEPTHWISE_CONV_2D + 1x1 CONV_2D -> SparseSeparableConv (tflite/ops/SPARSE_SEPARABLE.md).

The reference is checked against TFLite's builtin pair; the lowering is checked by
decoding every custom op from the rewritten flatbuffer and running the reference on
the builtin model's own activations: each op's output (and, along a chw chain, the
chain's composed output) must match the builtin CONV_2D's output within 1e-4. Parity
runs the lowered model on edgepipe's runtime, whose kernel must match the builtin model.
"""
import warnings

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter
from flatbuffers import flexbuffers

from core.errors import UserError
from core.keras_env import keras
from models.mobilenet import mobilenet_v1
from tflite.convert import convert_model
from tflite.flatbuffer_rewrite import ALIGNMENT
from tflite.inspect import inspect_model
from tflite.interpreter import TfliteRunner
from tflite.ops.sparse_separable_lowering import lower_separable_blocks
from tflite.ops.sparse_separable_reference import (StoredPointwise, dequantize, run_op,
                                                    unpack_inputs)
from tflite.runtime.binding import LiteRtRunner

TOLERANCE = 1e-4
_DTYPES = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT8: np.int8,
           schema.TensorType.UINT16: np.uint16, schema.TensorType.INT32: np.int32}
_KEYS = {"version", "kernel_size", "stride", "padding", "in_channels", "out_channels",
         "dw_activation", "pw_activation", "precision", "format", "block", "input_layout",
         "output_layout"}


# -- reading the rewritten flatbuffer -----------------------------------------------------

def _custom_ops(data: bytes) -> list[dict]:
    """Every SparseSeparableConv op: options, x and output names, constant inputs."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    graph = model.subgraphs[0]
    return [_decoded(data, model, graph, op) for op in graph.operators
            if model.operatorCodes[op.opcodeIndex].customCode == b"SparseSeparableConv"]


def _decoded(data: bytes, model, graph, op) -> dict:
    assert op.customOptionsFormat == schema.CustomOptionsFormat.FLEXBUFFERS
    output = graph.tensors[op.outputs[0]]
    return {"options": flexbuffers.Loads(bytes(bytearray(op.customOptions))),
            "x": graph.tensors[op.inputs[0]].name.decode(), "output": output.name.decode(),
            "output_shape": tuple(output.shape),
            "constants": [_stored(data, model, graph.tensors[i]) for i in op.inputs[1:]]}


def _stored(data: bytes, model, tensor) -> np.ndarray:
    """A constant input as the file holds it: 64-byte aligned, behind the flatbuffer."""
    buffer = model.buffers[tensor.buffer]
    assert buffer.offset > 1 and buffer.offset % ALIGNMENT == 0
    raw = data[buffer.offset:buffer.offset + buffer.size]
    return np.frombuffer(raw, _DTYPES[tensor.type]).reshape(tuple(tensor.shape))


def _pointwise(op: dict) -> StoredPointwise:
    return unpack_inputs(op["constants"], op["options"])[2]


def _pointwise_weights(op: dict) -> np.ndarray:
    """The op's stored pointwise weights as float32 [Cout, Cin]."""
    o = op["options"]
    return dequantize(_pointwise(op), o["out_channels"], o["in_channels"])


def _check_csr(op: dict) -> None:
    """The contract's CSR rules: row_ptr from 0 to nnz_blocks, columns increasing, < Cin."""
    o, pw = op["options"], _pointwise(op)
    assert pw.col_indices.dtype == np.uint16 and pw.row_ptr.dtype == np.int32
    assert pw.row_ptr.shape == (o["out_channels"] // o["block"] + 1,)
    assert pw.row_ptr[0] == 0
    assert pw.row_ptr[-1] == pw.col_indices.size == pw.values.size // o["block"]
    for row in range(pw.row_ptr.size - 1):
        span = pw.col_indices[pw.row_ptr[row]:pw.row_ptr[row + 1]].astype(np.int64)
        assert np.all(np.diff(span) > 0) and np.all(span < o["in_channels"])


# -- the builtin model's activations --------------------------------------------------------

def _activations(data: bytes, x: np.ndarray) -> tuple[dict[str, np.ndarray], Interpreter]:
    """Every tensor of the builtin model after running `x` (one sample), by name."""
    with warnings.catch_warnings():  # "intended for debugging": that is what it is for here
        warnings.simplefilter("ignore", UserWarning)
        interpreter = Interpreter(model_content=data, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    values = {}
    for detail in interpreter.get_tensor_details():
        try:
            values[detail["name"]] = interpreter.get_tensor(detail["index"])
        except ValueError:  # tensors the interpreter did not keep (scratch)
            continue
    return values, interpreter


def _check_against_builtin(original: bytes, lowered: bytes, x: np.ndarray) -> int:
    """Run the reference op by op (chw chains composed) on the builtin model's activations.

    Returns how many ops were checked.
    """
    builtin, _ = _activations(original, x)
    computed: dict[str, np.ndarray] = {}
    ops = _custom_ops(lowered)
    for op in ops:
        o = op["options"]
        source = computed[op["x"]] if o["input_layout"] == "chw" else builtin[op["x"]]
        got = run_op(source, op["constants"], o)
        assert got.shape == op["output_shape"]
        computed[op["output"]] = got
        nhwc = got.transpose(0, 2, 3, 1) if o["output_layout"] == "chw" else got
        np.testing.assert_allclose(nhwc, builtin[op["output"]], rtol=0, atol=TOLERANCE)
    return len(ops)


def _original_weights(original: bytes, interpreter: Interpreter,
                      record: dict) -> tuple[np.ndarray, ...]:
    """(dw [K, K, C], dw bias, pw [Cout, Cin], pw bias) as the builtin model computes with
    them (a DENSIFY op's output for sparse-encoded weights)."""
    graph = schema.Model.GetRootAs(original, 0).Subgraphs(0)
    dw, pw = graph.Operators(record["depthwise_op"]), graph.Operators(record["pointwise_op"])
    get = interpreter.get_tensor
    return (get(dw.Inputs(1))[0], get(dw.Inputs(2)), get(pw.Inputs(1))[:, 0, 0, :],
            get(pw.Inputs(2)))


# -- models -----------------------------------------------------------------------------------

def _map_pointwise(model: keras.Model, change) -> None:
    """Apply `change` to every 1x1 kernel: SeparableConv2D's pointwise or a 1x1 Conv2D's."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.SeparableConv2D):
            index = 1
        elif isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (1, 1):
            index = 0
        else:
            continue
        weights = layer.get_weights()
        weights[index] = change(weights[index])
        layer.set_weights(weights)


def _prune_pointwise(model: keras.Model, sparsity: float) -> None:
    """Zero the smallest-magnitude fraction of each 1x1 kernel, as magnitude pruning does."""
    if sparsity:
        _map_pointwise(model, lambda w: np.where(np.abs(w) < np.quantile(np.abs(w), sparsity),
                                                 0.0, w))


def _int8_steps(kernel: np.ndarray) -> np.ndarray:
    """A 1x1 kernel rounded to what int8 with per-output-channel scales holds. BatchNorm
    folding scales whole output channels, so folded kernels stay representable."""
    peak = np.abs(kernel).max(axis=(0, 1, 2))
    scales = np.where(peak > 0, peak / 127.0, 1.0)
    return np.round(kernel / scales) * scales


def _randomize(model: keras.Model, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and biases, so folding puts real values in the biases."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                               rng.normal(0, 0.2, mean.shape), rng.uniform(0.5, 2.0, var.shape)])
        elif getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None:
            weights = layer.get_weights()
            weights[-1] = rng.normal(0, 0.2, weights[-1].shape)
            layer.set_weights(weights)


def _mobilenet(shape: tuple[int, int, int], sparsity: float) -> keras.Model:
    model = mobilenet_v1(shape, 10, alpha=0.25)
    _randomize(model)
    _prune_pointwise(model, sparsity)
    return model


def _user_model(sparsity: float) -> keras.Model:
    """Not MobileNet: SeparableConv2D layers (5x5, valid, stride 2) and a residual Add."""
    inputs = keras.Input((20, 20, 3))
    stem = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)
    x = keras.layers.SeparableConv2D(16, 3, padding="same", activation="relu", name="sep_a")(stem)
    x = keras.layers.SeparableConv2D(16, 5, padding="same", name="sep_b")(x)
    x = keras.layers.Add(name="residual")([stem, x])
    x = keras.layers.SeparableConv2D(24, 3, strides=2, padding="valid", name="sep_c")(x)
    x = keras.layers.BatchNormalization(name="sep_c_bn")(x)
    x = keras.layers.ReLU(6.0, name="sep_c_relu")(x)
    x = keras.layers.SeparableConv2D(32, 5, strides=2, padding="same", activation="relu",
                                     name="sep_d")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(x), name="user_net")
    _randomize(model)
    _prune_pointwise(model, sparsity)
    return model


def _sample(model: keras.Model, seed: int = 1) -> np.ndarray:
    shape = (1, *model.inputs[0].shape[1:])
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _layouts(data: bytes) -> list[tuple[str, str]]:
    return [(op["options"]["input_layout"], op["options"]["output_layout"])
            for op in _custom_ops(data)]


# -- (a) the reference against TFLite's builtin pair -------------------------------------------

_ACTIVATION_LAYERS = {"none": None, "relu": lambda: keras.layers.ReLU(),
                      "relu6": lambda: keras.layers.ReLU(6.0)}
_STORAGE = {"csr1": (1, 1.0), "csr4": (4, 1.0), "dense": (1, 0.0)}  # block, dense_above


def _block_model(kernel_size: int, stride: int, padding: str, dw_act: str,
                 pw_act: str) -> keras.Model:
    """One DepthwiseConv2D (+activation) and one 1x1 Conv2D (+activation), odd-sized input."""
    inputs = keras.Input((9, 8, 3))
    x = keras.layers.DepthwiseConv2D(kernel_size, strides=stride, padding=padding,
                                     name="dw")(inputs)
    if _ACTIVATION_LAYERS[dw_act]:
        x = _ACTIVATION_LAYERS[dw_act]()(x)
    x = keras.layers.Conv2D(8, 1, name="pw")(x)
    if _ACTIVATION_LAYERS[pw_act]:
        x = _ACTIVATION_LAYERS[pw_act]()(x)
    model = keras.Model(inputs, x)
    _randomize(model)
    _prune_pointwise(model, 0.6)
    return model


def _reference_outputs(lowered: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    """The single op on x, in both layouts (chw input and output), as NHWC."""
    (op,) = _custom_ops(lowered)
    nhwc = run_op(x, op["constants"], op["options"])
    chw_options = {**op["options"], "input_layout": "chw", "output_layout": "chw"}
    chw = run_op(x.transpose(0, 3, 1, 2), op["constants"], chw_options)
    return {"nhwc": nhwc, "chw": chw.transpose(0, 2, 3, 1)}


@pytest.mark.parametrize("activations", [("none", "relu"), ("relu", "relu6"), ("relu6", "none")])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_reference_matches_builtin_depthwise_and_pointwise(precision, kernel_size, stride,
                                                           padding, activations):
    model = _block_model(kernel_size, stride, padding, *activations)
    if precision == "int8":
        _map_pointwise(model, _int8_steps)
    original = convert_model(model, "none")
    x = np.random.default_rng(2).normal(size=(1, 9, 8, 3)).astype(np.float32)
    expected = TfliteRunner(original).predict(x)
    for storage, (block, dense_above) in _STORAGE.items():
        lowered, (record,) = lower_separable_blocks(original, precision, block, dense_above)
        assert record["lowered"] and record["block"] == block
        assert record["format"] == ("dense" if storage == "dense" else "csr")
        (op,) = _custom_ops(lowered)
        assert (op["options"]["dw_activation"], op["options"]["pw_activation"]) == activations
        for layout, got in _reference_outputs(lowered, x).items():
            assert got.shape == expected.shape, (storage, layout)
            np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE,
                                       err_msg=f"{storage} {layout}")


# -- (b) the lowering on whole models ------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [0.0, 0.8, 0.9])
@pytest.mark.parametrize("shape", [(32, 32, 1), (64, 64, 3)])
def test_mobilenet_blocks_lower_to_one_chw_chain(shape, sparsity):
    model = _mobilenet(shape, sparsity)
    original = convert_model(model, "none")
    lowered, records = lower_separable_blocks(original)
    info = inspect_model(lowered)
    assert info.op_counts == {"CONV_2D": 1, "CUSTOM:SparseSeparableConv": 13, "MEAN": 1,
                              "FULLY_CONNECTED": 1, "SOFTMAX": 1}
    assert [r["layer"] for r in records] == [f"mobilenet_v1/conv_dw_{i}" for i in range(1, 14)]
    assert all(r["lowered"] for r in records)
    assert {r["format"] for r in records} == {"dense" if sparsity == 0 else "csr"}
    assert _layouts(lowered) == [("nhwc", "chw")] + [("chw", "chw")] * 11 + [("chw", "nhwc")]
    ops = _custom_ops(lowered)
    assert all(set(op["options"]) == _KEYS and op["options"]["version"] == 1 for op in ops)
    x = _sample(model)
    _, interpreter = _activations(original, x)
    for record, op in zip(records, ops):
        dw, dw_bias, pw, pw_bias = _original_weights(original, interpreter, record)
        for stored, expected in zip((op["constants"][0], op["constants"][1],
                                     _pointwise_weights(op), op["constants"][-1]),
                                    (dw, dw_bias, pw, pw_bias)):
            np.testing.assert_array_equal(stored, expected)
        assert record["density"] == pytest.approx(np.count_nonzero(pw) / pw.size)
        if op["options"]["format"] == "csr":
            _check_csr(op)
    assert _check_against_builtin(original, lowered, x) == 13


def test_sparse_encoded_conversion_is_decoded_through_densify():
    model = _mobilenet((32, 32, 1), 0.9)
    dense_file = convert_model(model, "none")
    sparse_file = convert_model(model, "none", sparse=True)
    assert inspect_model(sparse_file).op_counts.get("DENSIFY") == 13
    from_dense, _ = lower_separable_blocks(dense_file)
    from_sparse, records = lower_separable_blocks(sparse_file)
    assert "DENSIFY" not in inspect_model(from_sparse).op_counts
    assert all(r["lowered"] and r["format"] == "csr" for r in records)
    for a, b in zip(_custom_ops(from_dense), _custom_ops(from_sparse)):
        assert a["options"] == b["options"]
        for x, y in zip(a["constants"], b["constants"]):
            np.testing.assert_array_equal(x, y)
    assert _check_against_builtin(sparse_file, from_sparse, _sample(model)) == 13


@pytest.mark.parametrize("sparsity", [0.0, 0.8, 0.9])
def test_user_model_with_separable_convs_and_a_residual(sparsity):
    model = _user_model(sparsity)
    original = convert_model(model, "none")
    lowered, records = lower_separable_blocks(original, block=4)
    assert [r["layer"].split("/")[1] for r in records] == ["sep_a", "sep_b", "sep_c", "sep_d"]
    assert all(r["lowered"] for r in records)
    assert [(r["kernel_size"], r["stride"], r["padding"]) for r in records] == [
        (3, 1, "same"), (5, 1, "same"), (3, 2, "valid"), (5, 2, "same")]
    # sep_b's output feeds the Add, so it ends its chain in nhwc.
    assert _layouts(lowered) == [("nhwc", "chw"), ("chw", "nhwc"), ("nhwc", "chw"),
                                 ("chw", "nhwc")]
    ops = _custom_ops(lowered)
    assert [(op["options"]["dw_activation"], op["options"]["pw_activation"]) for op in ops] == [
        ("none", "relu"), ("none", "none"), ("none", "relu6"), ("none", "relu")]
    # 4x1 blocks: at 80% sparsity about 1 - 0.8**4 = 59% of the blocks are non-zero, so
    # the pointwise weights stay dense; at 90% about 34%, stored as 4x1-block CSR.
    for record, op in zip(records, ops):
        assert record["format"] == ("dense" if record["stored_density"] > 0.5 else "csr")
        if record["format"] == "csr":
            assert op["options"]["block"] == 4
            _check_csr(op)
    assert {r["format"] for r in records} == {"csr" if sparsity == 0.9 else "dense"}
    assert {"ADD", "CONV_2D", "MEAN", "FULLY_CONNECTED"} <= set(inspect_model(lowered).op_counts)
    assert _check_against_builtin(original, lowered, _sample(model)) == 4


def test_int8_pointwise_weights_are_per_channel_symmetric_within_half_a_step():
    model = _mobilenet((32, 32, 1), 0.8)
    original = convert_model(model, "none")
    lowered, records = lower_separable_blocks(original, precision="int8", block=4)
    _, interpreter = _activations(original, _sample(model))
    for record, op in zip(records, _custom_ops(lowered)):
        assert op["options"]["precision"] == "int8" and op["constants"][2].dtype == np.int8
        _, _, pw, _ = _original_weights(original, interpreter, record)
        scales = _pointwise(op).scales
        peak = np.abs(pw).max(axis=1)
        np.testing.assert_allclose(scales, np.where(peak > 0, peak / 127, 1.0), rtol=1e-6)
        stored = _pointwise_weights(op)
        assert np.all(np.abs(stored - pw) <= scales[:, None] / 2 + 1e-7)
        assert np.all(stored[pw == 0] == 0)


def test_blocks_the_op_cannot_compute_stay_builtin_with_the_reason():
    inputs = keras.Input((12, 12, 4))
    a = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="mult2")(inputs)
    a = keras.layers.Conv2D(8, 1, name="pw_mult2")(a)
    b = keras.layers.DepthwiseConv2D(3, dilation_rate=2, padding="same", name="dilated")(a)
    b = keras.layers.Conv2D(8, 1, name="pw_dilated")(b)
    c = keras.layers.DepthwiseConv2D(3, padding="same", name="into_3x3")(b)
    c = keras.layers.Conv2D(8, 3, padding="same", name="conv_3x3")(c)
    d = keras.layers.DepthwiseConv2D(3, padding="same", name="ok")(c)
    d = keras.layers.Conv2D(8, 1, name="pw_ok")(d)
    e = keras.layers.DepthwiseConv2D(3, padding="same", name="shared")(d)
    e = keras.layers.Add()([e, keras.layers.Conv2D(8, 1, name="pw_shared")(e)])
    model = keras.Model(inputs, e)
    _randomize(model)
    original = convert_model(model, "none")
    lowered, records = lower_separable_blocks(original)
    reasons = {r["layer"].split("/")[-1]: r.get("reason", "") for r in records if not r["lowered"]}
    assert set(reasons) == {"mult2", "dilated", "into_3x3", "shared"}
    assert "depth multiplier 2" in reasons["mult2"]
    assert "dilation 2x2" in reasons["dilated"]
    assert "not 1x1" in reasons["into_3x3"]
    assert "feeds 2 ops" in reasons["shared"]
    counts = inspect_model(lowered).op_counts
    assert counts["DEPTHWISE_CONV_2D"] == 4 and counts["CUSTOM:SparseSeparableConv"] == 1
    assert _layouts(lowered) == [("nhwc", "nhwc")]
    assert _check_against_builtin(original, lowered, _sample(model)) == 1


def test_a_model_without_lowerable_blocks_comes_back_unchanged():
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="only_dw")(inputs)
    original = convert_model(keras.Model(inputs, x), "none")
    lowered, (record,) = lower_separable_blocks(original)
    assert lowered == original and not record["lowered"]
    assert "model output" in record["reason"]


@pytest.mark.parametrize("kwargs, message", [
    ({"precision": "float16"}, "precision 'float16'"),
    ({"block": 2}, "block 2"),
    ({"dense_above": 1.5}, "dense_above 1.5"),
])
def test_bad_arguments_are_refused(tiny_tflite_bytes, kwargs, message):
    with pytest.raises(UserError, match=message):
        lower_separable_blocks(tiny_tflite_bytes, **kwargs)


@pytest.mark.parametrize("data, message", [
    (b"not a model at all", "TFL3"),
    (b"\x10\x00\x00\x00TFL3" + b"\xff" * 40, "damaged"),
])
def test_malformed_flatbuffers_are_refused(data, message):
    with pytest.raises(UserError, match=message):
        lower_separable_blocks(data)


# -- (c) parity on edgepipe's runtime (the SparseSeparableConv kernel) ---------------------------

def _with_int8_steps(model: keras.Model) -> keras.Model:
    _map_pointwise(model, _int8_steps)
    return model


def _features(model: keras.Model) -> keras.Model:
    """MobileNet up to its pooled features: the softmax would hide small errors."""
    return keras.Model(model.inputs, model.get_layer("global_pool").output)


@pytest.mark.parametrize("build, precision, block", [
    (lambda: _mobilenet((32, 32, 1), 0.9), "float32", 1),
    (lambda: _mobilenet((64, 64, 3), 0.0), "float32", 1),
    (lambda: _mobilenet((64, 64, 3), 0.9), "float32", 4),
    (lambda: _features(_mobilenet((32, 32, 1), 0.8)), "float32", 1),
    (lambda: _features(_mobilenet((64, 64, 3), 0.9)), "float32", 4),
    (lambda: _with_int8_steps(_features(_mobilenet((32, 32, 1), 0.8))), "int8", 1),
    (lambda: _with_int8_steps(_user_model(0.9)), "int8", 4),
    (lambda: _user_model(0.9), "float32", 4),
    (lambda: _user_model(0.0), "float32", 1),
    (lambda: _user_model(0.8), "float32", 1),
])
def test_lowered_model_matches_the_builtin_model_on_edgepipes_runtime(build, precision, block):
    model = build()
    original = convert_model(model, "none")
    lowered, records = lower_separable_blocks(original, precision, block)
    assert all(r["lowered"] for r in records)
    x = np.random.default_rng(3).uniform(-1, 1, (3, *model.inputs[0].shape[1:])).astype(np.float32)
    got = LiteRtRunner(lowered).predict(x)
    expected = TfliteRunner(original).predict(x)
    assert np.max(np.abs(got - expected)) <= TOLERANCE

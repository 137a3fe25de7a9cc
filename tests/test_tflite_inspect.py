"""Inspector: ops, I/O, quantization and sparsity read back from converted files."""
import numpy as np
import pytest

from core.errors import UserError
from core.keras_env import keras
from tflite.convert import convert_model
from tflite.inspect import format_model_info, inspect_model

RNG = np.random.default_rng(1)


@pytest.fixture(scope="module")
def conv() -> keras.Model:
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(4, activation="softmax")(x))


@pytest.fixture(scope="module")
def conv_int8(conv) -> bytes:
    return convert_model(conv, "int8", RNG.random((16, 8, 8, 3), dtype=np.float32))


def test_float_conv_ops_and_io(conv, tmp_path):
    path = tmp_path / "conv.tflite"
    path.write_bytes(convert_model(conv, "none"))
    info = inspect_model(path)
    assert info.subgraph_count == 1
    assert info.ops[0][0] == "CONV_2D"
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= set(info.op_counts)
    assert info.inputs[0].shape == (1, 8, 8, 3) and info.inputs[0].dtype == "float32"
    assert info.outputs[0].shape == (1, 4)
    assert info.inputs[0].quantization is None
    assert not info.custom_ops and not info.sparse_tensors
    assert info.size_bytes == path.stat().st_size


def test_int8_quantization_params(conv_int8):
    info = inspect_model(conv_int8)
    inp = info.inputs[0]
    assert inp.dtype == "int8" and len(inp.quantization.scales) == 1
    conv_weights = [t for t in info.tensors if t.is_constant and t.dtype == "int8" and len(t.shape) == 4]
    assert conv_weights
    # Conv kernels are quantized per output channel (axis 0 in TFLite's OHWI layout).
    per_channel = [t for t in conv_weights if len(t.quantization.scales) > 1]
    assert per_channel and per_channel[0].quantization.quantized_dimension in (0, 3)
    report = format_model_info(info)
    assert "CONV_2D" in report and "scale=" in report and "per-channel" in report


def test_gru_subgraphs_and_while():
    inp = keras.Input((5, 2))
    x = keras.layers.GRU(3)(inp)
    model = keras.Model(inp, keras.layers.Dense(2)(x))
    info = inspect_model(convert_model(model, "none"))
    assert info.subgraph_count == 3  # main, loop condition, loop body
    assert "WHILE" in info.ops[0]
    assert "FULLY_CONNECTED" in info.op_counts


def test_sparse_tensors_reported():
    inp = keras.Input((64,))
    dense = keras.layers.Dense(32)
    model = keras.Model(inp, dense(inp))
    kernel, bias = dense.get_weights()
    kernel[RNG.random(kernel.shape) < 0.8] = 0.0
    dense.set_weights([kernel, bias])
    info = inspect_model(convert_model(model, "none", sparse=True))
    (tensor,) = info.sparse_tensors
    assert tensor.shape == (32, 64)
    assert tensor.sparsity.dim_formats == ["DENSE", "SPARSE_CSR"]
    assert tensor.sparsity.traversal_order == [0, 1]
    assert tensor.zero_fraction is None  # the buffer holds only the non-zeros
    assert "SPARSE_CSR" in format_model_info(info)


def test_dense_weight_sparsity_measured():
    inp = keras.Input((64,))
    dense = keras.layers.Dense(32, use_bias=False)
    model = keras.Model(inp, dense(inp))
    (kernel,) = dense.get_weights()
    kernel[:, :16] = 0.0
    dense.set_weights([kernel])
    info = inspect_model(convert_model(model, "none"))
    assert info.weight_sparsity == pytest.approx(0.5)


def test_custom_op_names_listed(conv, with_custom_op):
    info = inspect_model(with_custom_op(convert_model(conv, "none"), "SOFTMAX", "EdgeSparseGru"))
    assert info.custom_ops == ["EdgeSparseGru"]
    assert "CUSTOM:EdgeSparseGru" in info.op_counts
    assert "Custom ops: EdgeSparseGru" in format_model_info(info)


def test_garbage_is_rejected():
    with pytest.raises(UserError, match="not a TFLite flatbuffer"):
        inspect_model(b"definitely not a model, just some bytes")
    with pytest.raises(UserError, match="not a TFLite flatbuffer"):
        inspect_model(b"")


def test_truncated_file_is_rejected(conv_int8, tmp_path):
    path = tmp_path / "cut.tflite"
    path.write_bytes(conv_int8[: len(conv_int8) // 3])
    with pytest.raises(UserError, match="not a TFLite flatbuffer"):
        inspect_model(path)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        inspect_model(tmp_path / "absent.tflite")


# -- weight sparsity of SparseGRU models (issue 11) ------------------------------------------

import re  # noqa: E402

from ai_edge_litert import schema_py_generated as schema  # noqa: E402
from flatbuffers import flexbuffers  # noqa: E402

from tflite.flatbuffer_rewrite import align_constant_buffers, pack_model  # noqa: E402
from tflite.ops.sparse_gru_lowering import convert_with_sparse_gru  # noqa: E402

UNITS, FEATURES = 8, 6  # W [24, 6] = 144 weights, R [24, 8] = 192


def _gru_model(zero_fraction: float, head_zero_columns: int = 0) -> keras.Model:
    """A GRU (zero-initialized bias) + Dense head; exactly `zero_fraction` of W and R zero."""
    rng = np.random.default_rng(7)
    inp = keras.Input((4, FEATURES))
    gru = keras.layers.GRU(UNITS, name="gru")
    head = keras.layers.Dense(3, name="head")
    model = keras.Model(inp, head(gru(inp)))
    kernel, recurrent, bias = gru.get_weights()
    for matrix in (kernel, recurrent):
        matrix[...] = np.where(rng.random(matrix.shape) < 0.5, 1, -1) * rng.uniform(
            0.1, 1.0, matrix.shape)  # no exact zeros, none that round to 0 in int8
        flat = matrix.reshape(-1)
        flat[rng.permutation(flat.size)[:round(zero_fraction * flat.size)]] = 0.0
    gru.set_weights([kernel, recurrent, bias])
    head_kernel, head_bias = head.get_weights()
    head_kernel[...] = 0.5
    head_kernel[:head_zero_columns] = 0.0
    head.set_weights([head_kernel, head_bias])
    return model


def _figures(report: str) -> list[float]:
    return [float(v) for v in re.findall(r"(-?[\d.]+)%", report)]


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_dense_sparse_gru_is_zero_percent_sparse(precision):
    # Before the fix W and R were miscounted and the all-zero bias counted: 66.7% (int8), 11.8% (float32).
    info = inspect_model(convert_with_sparse_gru(_gru_model(0.0), precision))
    assert info.op_counts["CUSTOM:SparseGRU"] == 1
    assert info.weight_sparsity == 0.0
    assert info.weight_sparsity_problems == []
    assert "weight sparsity (exact zeros of prunable weights): 0.0%" in format_model_info(info)


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_pruned_sparse_gru_counts_w_and_r_only(precision):
    model = _gru_model(0.75)
    data = convert_with_sparse_gru(model, precision)
    ops = _sparse_gru_options(data)
    assert [o["format"] for o in ops] == ["csr"] and ops[0]["precision"] == precision
    info = inspect_model(data)
    # W and R: 336 weights, 252 zeros; the head's kernel [3, 8] has no zeros; bias,
    # scales, column indices and row pointers are not weights.
    assert info.weight_sparsity == pytest.approx(252 / (336 + 24))
    gru_only = inspect_model(convert_with_sparse_gru(
        keras.Model(model.input, model.get_layer("gru").output), precision))
    assert gru_only.weight_sparsity == pytest.approx(0.75)
    assert "weight sparsity (exact zeros of prunable weights): 75.0%" in format_model_info(gru_only)


def test_builtin_weights_still_counted_next_to_sparse_gru():
    info = inspect_model(convert_with_sparse_gru(_gru_model(0.0, head_zero_columns=4)))
    assert info.weight_sparsity == pytest.approx(12 / (336 + 24))  # half the head's kernel


def _sparse_gru_options(data: bytes) -> list[dict]:
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    return [flexbuffers.Loads(bytes(op.customOptions)) for g in model.subgraphs
            for op in g.operators if op.customOptions is not None]


def _edit(data: bytes, change) -> bytes:
    """Apply `change(model, graph, op)` to the SparseGRU op and write an aligned model."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    for buffer in model.buffers:  # bring buffers stored past the flatbuffer back inline
        if buffer.offset > 1:
            buffer.data = np.frombuffer(data[buffer.offset:buffer.offset + buffer.size], np.uint8)
            buffer.offset = buffer.size = 0
    graph = model.subgraphs[0]
    (op,) = [op for op in graph.operators if op.customOptions is not None]
    change(model, graph, op)
    return align_constant_buffers(pack_model(model))


def _set_option(key, value):
    def change(model, graph, op):
        options = flexbuffers.Loads(bytes(op.customOptions))
        options[key] = value
        op.customOptions = list(flexbuffers.Dumps(options))
    return change


def _set_shape(position, shape):
    def change(model, graph, op):
        graph.tensors[op.inputs[position]].shape = shape
    return change


def _assert_unknown(data: bytes, reason: str):
    info = inspect_model(data)
    assert info.weight_sparsity is None
    report = format_model_info(info)
    line = next(line for line in report.splitlines() if "weight sparsity" in line)
    assert "unknown (inconsistent: " in line and re.search(reason, line), line
    assert all(0 <= v <= 100 for v in _figures(report)), report


def test_crafted_negative_weight_shape_is_unknown_not_impossible():
    # W values [24, 6] relabelled [-24, 10]: the old count weighted zeros by the
    # shape's product and printed 200.0% (48 bias zeros over 24 "weights").
    data = _edit(convert_with_sparse_gru(_gru_model(0.0)), _set_shape(1, [-24, 10]))
    _assert_unknown(data, r"W values has shape \[-24, 10\]")


def test_crafted_negative_builtin_shape_is_unknown_not_impossible():
    def change(model, graph, op):
        (kernel,) = [t for t in graph.tensors if list(t.shape) == [3, UNITS]
                     and model.buffers[t.buffer].data is not None]
        kernel.shape = [-30, UNITS]  # the old count printed -50.0%
    data = _edit(convert_with_sparse_gru(_gru_model(0.0, head_zero_columns=4)), change)
    _assert_unknown(data, r"negative dimension")


def test_crafted_csr_with_more_values_than_its_shape_is_unknown():
    data = convert_with_sparse_gru(_gru_model(0.75))
    # input_size 1: W is [24, 1] = 24 weights, but 36 values are stored.
    _assert_unknown(_edit(data, _set_option("input_size", 1)), r"36 values, more than")
    _assert_unknown(_edit(data, _set_option("units", -2)), r"units=-2 is not an integer >= 1")
    _assert_unknown(_edit(data, _set_option("format", "dense")), r"inputs, but dense")

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

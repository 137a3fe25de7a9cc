"""GRU -> SparseGRU lowering: the flatbuffer holds the contract (tflite/ops/SPARSE_GRU.md).

The arrays are decoded straight from the .tflite with the schema accessors and
compared with the Keras weights; parity runs the model on edgepipe's runtime.
"""
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from flatbuffers import flexbuffers

from core.errors import UserError
from core.keras_env import keras
from pipelines.pruning import layer_sparsity
from tflite.flatbuffer_rewrite import ALIGNMENT
from tflite.inspect import inspect_model
from tflite.ops.sparse_gru_lowering import (CSR_MAX_DENSITY, convert_with_sparse_gru,
                                            lower_sparse_gru)
from tflite.runtime.binding import LiteRtRunner

# int8 weights per row: each stored weight is off by at most max|row| / 254. On these
# layers (Glorot/orthogonal weights, 8-16 units, 6 steps) that moves outputs by
# well under this bound; the kernel itself must match the dequantized weights to 1e-5.
INT8_OUTPUT_BOUND = 0.05


def _prune(layer: keras.layers.Layer, sparsity: float) -> None:
    """Zero the smallest-magnitude fraction of every 2-D weight, as magnitude pruning does."""
    weights = []
    for w in layer.get_weights():
        if w.ndim == 2 and sparsity:
            w = np.where(np.abs(w) < np.quantile(np.abs(w), sparsity), 0.0, w).astype(w.dtype)
        weights.append(w)
    layer.set_weights(weights)


def _stacked(reset_after: bool, last_returns_sequences: bool, sparsity: float = 0.9,
             tokens: bool = False) -> keras.Model:
    """Two GRUs (first returns sequences) over float features or embedded tokens."""
    if tokens:
        inputs = keras.Input((6,), dtype="int32")
        x = keras.layers.Embedding(20, 5)(inputs)
    else:
        inputs = keras.Input((6, 5))
        x = inputs
    x = keras.layers.GRU(16, return_sequences=True, reset_after=reset_after, name="gru_1")(x)
    x = keras.layers.GRU(8, return_sequences=last_returns_sequences, reset_after=reset_after,
                         name="gru_2")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(x))
    for name in ("gru_1", "gru_2"):
        _prune(model.get_layer(name), sparsity)
    return model


def _sparse_gru_ops(data: bytes) -> list[dict]:
    """Every SparseGRU op: its options and its inputs as numpy arrays (None = absent)."""
    model = schema.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    found = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        if code.CustomCode() != b"SparseGRU":
            continue
        inputs = []
        for j in range(op.InputsLength()):
            index = op.Inputs(j)
            assert index >= 0, "absent inputs are left out (LiteRT crashes on -1)"
            tensor = graph.Tensors(index)
            buffer = model.Buffers(tensor.Buffer())
            dtype = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT8: np.int8,
                     schema.TensorType.UINT16: np.uint16,
                     schema.TensorType.INT32: np.int32}[tensor.Type()]
            shape = tuple(tensor.ShapeAsNumpy())
            if buffer.Offset() > 1:
                assert buffer.Offset() % ALIGNMENT == 0
                raw = data[buffer.Offset():buffer.Offset() + buffer.Size()]
                inputs.append(np.frombuffer(raw, dtype).reshape(shape))
            else:
                inputs.append(("activation", shape, dtype))
        options = flexbuffers.Loads(op.CustomOptionsAsNumpy().tobytes())
        assert op.CustomOptionsFormat() == schema.CustomOptionsFormat.FLEXBUFFERS
        # Back into the contract's ten slots: csr adds column indices and row
        # pointers, int8 adds the scales.
        csr, int8 = options["format"] == "csr", options["precision"] == "int8"
        present = [True, True, csr, csr, int8, True, csr, csr, int8, True]
        assert len(inputs) == sum(present)
        given = iter(inputs)
        inputs = [next(given) if p else None for p in present]
        found.append({"options": options, "inputs": inputs})
    return found


def _dense(values, cols, row_ptr, scales, shape) -> np.ndarray:
    """Decode one stored matrix back to float32 [rows, cols]."""
    rows = shape[0]
    if row_ptr is None:
        matrix = values.astype(np.float32).reshape(shape)
    else:
        assert row_ptr[0] == 0 and row_ptr[-1] == len(values) and np.all(np.diff(row_ptr) >= 0)
        matrix = np.zeros(shape, np.float32)
        for row in range(rows):
            span = slice(row_ptr[row], row_ptr[row + 1])
            assert np.all(np.diff(cols[span].astype(np.int64)) > 0) and np.all(cols[span] < shape[1])
            matrix[row, cols[span]] = values[span]
    if scales is not None:
        matrix *= scales[:, None]
    return matrix


def _stored_weights(op: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    o, ins = op["options"], op["inputs"]
    units, features = o["units"], o["input_size"]
    w = _dense(*ins[1:5], (3 * units, features))
    r = _dense(*ins[5:9], (3 * units, units))
    return w, r, ins[9]


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("last_returns_sequences", [True, False])
def test_pruned_stacked_grus_become_sparse_gru_ops_with_exact_weights(
        reset_after, last_returns_sequences):
    model = _stacked(reset_after, last_returns_sequences)
    conversion = lower_sparse_gru(model)
    info = inspect_model(conversion.flatbuffer)
    assert info.op_counts["CUSTOM:SparseGRU"] == 2
    assert info.custom_ops == ["SparseGRU"]
    assert info.subgraph_count == 1  # no WHILE loop left
    assert "FULLY_CONNECTED" in info.op_counts  # the head stays builtin

    ops = _sparse_gru_ops(conversion.flatbuffer)
    for op, name, units, features, seq in zip(ops, ("gru_1", "gru_2"), (16, 8), (5, 16),
                                               (True, last_returns_sequences)):
        assert op["options"] == {"version": 1, "units": units, "input_size": features,
                                 "reset_after": reset_after, "return_sequences": seq,
                                 "precision": "float32", "format": "csr"}
        kernel, recurrent, bias = model.get_layer(name).get_weights()
        w, r, stored_bias = _stored_weights(op)
        np.testing.assert_array_equal(w, kernel.T)
        np.testing.assert_array_equal(r, recurrent.T)
        np.testing.assert_array_equal(stored_bias, bias)
        assert op["inputs"][2].dtype == np.uint16 and op["inputs"][4] is None
    assert [layer.nnz_w + layer.nnz_r for layer in conversion.layers] == [
        int(np.count_nonzero(model.get_layer(n).get_weights()[0]))
        + int(np.count_nonzero(model.get_layer(n).get_weights()[1])) for n in ("gru_1", "gru_2")]
    last = info.outputs[0]
    assert last.shape == ((1, 6, 3) if last_returns_sequences else (1, 3))


def test_int8_weights_are_per_row_symmetric_within_half_a_step():
    model = _stacked(True, False)
    data = convert_with_sparse_gru(model, precision="int8", quantization_of_rest="dynamic_range")
    for op, name in zip(_sparse_gru_ops(data), ("gru_1", "gru_2")):
        assert op["options"]["precision"] == "int8"
        kernel, recurrent, _ = model.get_layer(name).get_weights()
        w, r, _ = _stored_weights(op)
        for stored, original, scales in ((w, kernel.T, op["inputs"][4]),
                                         (r, recurrent.T, op["inputs"][8])):
            assert op["inputs"][1].dtype == np.int8 and scales.dtype == np.float32
            peak = np.abs(original).max(axis=1)
            # All-zero rows (common at 90%) keep scale 1: any scale decodes them to zeros.
            np.testing.assert_allclose(scales, np.where(peak > 0, peak / 127, 1.0), rtol=1e-6)
            assert np.all(np.abs(stored - original) <= scales[:, None] / 2 + 1e-7)
            assert np.array_equal(stored == 0, original == 0)


def test_dense_gru_with_embedding_uses_dense_storage():
    model = _stacked(False, False, sparsity=0.0, tokens=True)
    conversion = lower_sparse_gru(model)
    assert all(layer.format == "dense" and layer.density > CSR_MAX_DENSITY
               for layer in conversion.layers)
    info = inspect_model(conversion.flatbuffer)
    assert info.inputs[0].dtype == "int32" and "GATHER" in info.op_counts
    for op, name in zip(_sparse_gru_ops(conversion.flatbuffer), ("gru_1", "gru_2")):
        assert op["options"]["format"] == "dense"
        assert all(op["inputs"][i] is None for i in (2, 3, 4, 6, 7, 8))
        np.testing.assert_array_equal(op["inputs"][1], model.get_layer(name).get_weights()[0].T)


def test_tfmot_pruned_and_stripped_gru_lowers_to_csr():
    from pipelines.pruning import strip
    import tensorflow_model_optimization as tfmot

    model = _stacked(True, False, sparsity=0.0)
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.9, begin_step=0, frequency=1)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    pruned.compile("adam", "mse")
    x = np.random.default_rng(0).normal(size=(8, 6, 5)).astype(np.float32)
    pruned.fit(x, np.zeros((8, 3), np.float32), epochs=1, verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = strip(pruned)
    assert all(row["sparsity"] > 0.85 for row in layer_sparsity(stripped)
               if row["layer"].startswith("gru"))
    conversion = lower_sparse_gru(stripped)
    assert [layer.format for layer in conversion.layers] == ["csr", "csr"]
    assert all(layer.density < 0.15 for layer in conversion.layers)


@pytest.mark.parametrize("build, message", [
    (lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), "no GRU layer"),
    (lambda: keras.Sequential([keras.Input((4,), dtype="int32"),
                               keras.layers.Embedding(9, 3, mask_zero=True),
                               keras.layers.GRU(4)]), "masks time steps"),
    (lambda: keras.Sequential([keras.Input((4, 3)), keras.layers.GRU(4, activation="relu")]),
     "activation='relu'"),
    (lambda: keras.Sequential([keras.Input((4, 3)),
                               keras.layers.Bidirectional(keras.layers.GRU(4))]), "nested"),
])
def test_unsupported_models_are_refused_clearly(build, message):
    with pytest.raises(UserError, match=message):
        lower_sparse_gru(build())


def test_full_int8_rest_and_unknown_precision_are_refused():
    model = _stacked(True, False)
    with pytest.raises(UserError, match="quantization_of_rest 'int8'"):
        lower_sparse_gru(model, quantization_of_rest="int8")
    with pytest.raises(UserError, match="precision 'float16'"):
        lower_sparse_gru(model, precision="float16")


# -- parity on edgepipe's runtime (needs the SparseGRU kernel) ------------------------------

def _runner(data: bytes) -> LiteRtRunner:
    """The native runner, or a skip naming the missing kernel when it is not registered."""
    try:
        return LiteRtRunner(data)
    except UserError as exc:
        if "SparseGRU" in str(exc) and "has no kernel" in str(exc):
            pytest.skip("the SparseGRU kernel is not registered in edgepipe's runtime "
                        "(ProjectKernels() in tflite/ops/registry.cc)")
        raise


def _dequantized_copy(model: keras.Model, data: bytes) -> keras.Model:
    """`model` with the GRU weights the int8 file actually stores."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for op, name in zip(_sparse_gru_ops(data), ("gru_1", "gru_2")):
        w, r, bias = _stored_weights(op)
        copy.get_layer(name).set_weights([w.T, r.T, bias])
    return copy


@pytest.mark.parametrize("tokens", [False, True])
@pytest.mark.parametrize("sparsity", [0.9, 0.0])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("last_returns_sequences", [True, False])
@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_parity_with_keras(precision, last_returns_sequences, reset_after, sparsity, tokens):
    model = _stacked(reset_after, last_returns_sequences, sparsity, tokens)
    rest = "none" if precision == "float32" else "dynamic_range"
    data = convert_with_sparse_gru(model, precision=precision, quantization_of_rest=rest)
    rng = np.random.default_rng(1)
    x = (rng.integers(0, 20, (4, 6)).astype(np.int32) if tokens
         else rng.normal(size=(4, 6, 5)).astype(np.float32))
    got = _runner(data).predict(x)
    expected = model.predict(x, verbose=0)
    if precision == "float32":
        assert np.max(np.abs(got - expected)) <= 1e-5
    else:
        # The head is dynamic-range quantized too, hence the looser kernel check.
        exact = _dequantized_copy(model, data).predict(x, verbose=0)
        assert np.max(np.abs(got - exact)) <= 1e-2
        assert np.max(np.abs(got - expected)) <= INT8_OUTPUT_BOUND


# -- the pipeline with gru_lowering: sparse_gru ----------------------------------------------

def _pipeline_config(tmp_path, variants):
    from pipelines.config import parse_config

    return parse_config({"output_dir": str(tmp_path), "models": [
        {"name": "rnn", "builder": "gru_classifier", "options": {"units": [16, 8]},
         "data": {"source": "digits", "kind": "sequence"}, "train": {"epochs": 1},
         "pruning": {"schedule": "narang", "target_sparsity": 0.95, "layers": ["gru_.*"],
                     "epochs": 1, "frequency": 5},
         "gru_lowering": "sparse_gru", "variants": variants}],
        "benchmark": {"num_runs": 2, "warmup_runs": 0}})


@pytest.mark.parametrize("variant", ["int8", "pruned_float16", "qat_int8"])
def test_pipeline_refuses_variants_sparse_gru_cannot_serve(tmp_path, variant):
    with pytest.raises(UserError, match=f"variant '{variant}' cannot use gru_lowering: sparse_gru"):
        _pipeline_config(tmp_path, [variant])


def test_pipeline_converts_validates_and_benchmarks_sparse_gru_variants(tmp_path):
    from pipelines.run import run_pipeline

    _runner(convert_with_sparse_gru(_stacked(True, False)))  # skips without the kernel
    variants = ["float32", "dynamic_range", "pruned_float32", "pruned_dynamic_range"]
    results = run_pipeline(_pipeline_config(tmp_path, variants))
    rows = {row["name"]: row for row in results["variants"]}
    assert sorted(rows) == sorted(variants)
    for name, row in rows.items():
        info = inspect_model(tmp_path / row["path"])
        assert info.op_counts["CUSTOM:SparseGRU"] == 2 and info.subgraph_count == 1
        precisions = {op["options"]["precision"] for op in
                      _sparse_gru_ops((tmp_path / row["path"]).read_bytes())}
        assert precisions == {"int8" if name.endswith("dynamic_range") else "float32"}
        assert row["benchmarks"] and row["top1_agreement"] >= 0.95
    assert rows["float32"]["max_abs_error"] <= 1e-5
    assert rows["pruned_float32"]["file_bytes"] < rows["float32"]["file_bytes"]

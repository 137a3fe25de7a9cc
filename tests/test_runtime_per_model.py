"""One kernel object per compiled model (tflite/runtime/kernel_host.h), seen from
Python: models open side by side keep their own thread counts, repacked weights
and errors, also when two Python threads run them at once."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import tensorflow as tf

from core.errors import UserError
from core.keras_env import keras
from tflite.flatbuffer_rewrite import align_constant_buffers, pack_model
from tflite.ops.sparse_gru_lowering import convert_with_sparse_gru
from tflite.runtime.binding import LiteRtRunner

ROUNDS = 40


def pruned_gru(units: int, steps: int, features: int, sparsity: float, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((steps, features), batch_size=1)
    model = keras.Model(inputs, keras.layers.GRU(units)(inputs))
    for weight in model.weights:
        if "kernel" in weight.name:
            values = weight.numpy()
            values[np.abs(values) < np.quantile(np.abs(values), sparsity)] = 0
            weight.assign(values)
    return model


@pytest.fixture(scope="module")
def two_grus() -> list[tuple[bytes, keras.Model, np.ndarray]]:
    """A layer large enough for two threads to split (64 units) and a small one."""
    cases = []
    for units, steps, features, seed in ((64, 12, 32, 1), (16, 7, 5, 2)):
        model = pruned_gru(units, steps, features, 0.8, seed)
        x = np.random.default_rng(seed).standard_normal((1, steps, features)).astype(np.float32)
        cases.append((convert_with_sparse_gru(model), model, x))
    return cases


@pytest.fixture(scope="module")
def failing_gather() -> bytes:
    """A builtin GATHER whose constant index is out of range: it fails at every run."""
    from ai_edge_litert import schema_py_generated as schema

    @tf.function(input_signature=[tf.TensorSpec([1, 6], tf.float32)])
    def gather(x):
        return tf.gather(x, tf.constant([0, 2, 5]), axis=1) * 2.0

    data = tf.lite.TFLiteConverter.from_concrete_functions([gather.get_concrete_function()]).convert()
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    graph = model.subgraphs[0]
    edited = 0
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.GATHER:
            buffer = model.buffers[graph.tensors[op.inputs[1]].buffer]
            indices = np.frombuffer(bytes(bytearray(buffer.data)), np.int32).copy()
            indices[2] = 40
            buffer.data = np.frombuffer(indices.tobytes(), np.uint8)
            edited += 1
    assert edited == 1
    return align_constant_buffers(pack_model(model))


def test_models_with_their_own_thread_counts_run_side_by_side(two_grus):
    (big, big_model, big_x), (small, small_model, small_x) = two_grus
    runners = [LiteRtRunner(big, num_threads=2), LiteRtRunner(small, num_threads=1)]
    want = [big_model(big_x).numpy(), small_model(small_x).numpy()]
    single_thread_big = LiteRtRunner(big, num_threads=1).predict(big_x)
    for _ in range(3):  # interleaved runs of the two models
        got = [runners[0].predict(big_x), runners[1].predict(small_x)]
        np.testing.assert_allclose(got[0], want[0], atol=2e-5)
        np.testing.assert_allclose(got[1], want[1], atol=2e-5)
        # Threads split whole rows: the two-thread model matches one thread bit for bit.
        np.testing.assert_array_equal(got[0], single_thread_big)


def test_closing_one_model_keeps_the_others_weights(two_grus):
    (big, _, big_x), _ = two_grus
    first, second = LiteRtRunner(big), LiteRtRunner(big)
    want = second.predict(big_x)  # its first run repacks R into its own kernel object
    first.predict(big_x)
    del first  # destroys the other model's ops and kernel object
    np.testing.assert_array_equal(second.predict(big_x), want)


def test_errors_stay_with_their_model_across_python_threads(two_grus, failing_gather):
    (big, big_model, big_x), _ = two_grus
    good, bad = LiteRtRunner(big, num_threads=2), LiteRtRunner(failing_gather)
    want = big_model(big_x).numpy()
    good_errors: list[BaseException] = []
    bad_messages: list[str] = []
    wrong_outputs = []

    def run_good() -> None:
        try:
            for _ in range(ROUNDS):
                got = good.predict(big_x)
                if not np.allclose(got, want, atol=2e-5):
                    wrong_outputs.append(got)
        except BaseException as exc:  # collected: the assertion below names it
            good_errors.append(exc)

    def run_bad() -> None:
        for _ in range(ROUNDS):
            with pytest.raises(UserError) as info:
                bad.predict(np.zeros((1, 6), np.float32))
            bad_messages.append(str(info.value))

    threads = [threading.Thread(target=run_good), threading.Thread(target=run_bad)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not good_errors, good_errors[0]
    assert not wrong_outputs
    assert len(bad_messages) == ROUNDS
    assert all("gather index out of bounds" in m and "GATHER" in m for m in bad_messages), \
        bad_messages[0]

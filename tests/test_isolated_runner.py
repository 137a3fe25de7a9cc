"""edgepipe's runtime in a worker process (tflite/runtime/isolated.py): the same
answers as in-process, and a model that crashes LiteRT itself becomes one
UserError naming the signal and the phase instead of killing the test process.

The damaged models are real converted models with one field of the flatbuffer
changed, found by trying such edits (every word of small models set to a few
values) on LiteRT 2.3.0: they pass the runtime's own model checks and crash inside
LiteRT. Each phase has a short list, so the test keeps a crash when the runtime
learns to refuse or to run one of them; every member must end as a run or one
UserError.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from core.errors import UserError
from core.keras_env import keras, tf
from tflite.convert import convert_model
from tflite.flatbuffer_rewrite import pack_model
from tflite.runtime.binding import LiteRtRunner
from tflite.runtime.isolated import IsolatedRunner

CRASH = re.compile(r"the LiteRT runtime crashed \(SIG[A-Z]+\) while (compiling|running) "
                   r"(\S+); the model is damaged or uses an op LiteRT cannot run")


def edited(data: bytes, edit) -> bytes:
    """`data` with edit(model, main subgraph) applied through the schema object API."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    edit(model, model.subgraphs[0])
    return pack_model(model)


def ops_of(model: schema.ModelT, graph: schema.SubGraphT, builtin: int) -> list:
    return [op for op in graph.operators
            if max(model.operatorCodes[op.opcodeIndex].builtinCode,
                   model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode) == builtin]


def split_count(count: int):
    """SPLIT's num_splits no longer matching its three outputs."""
    def edit(model, graph):
        for op in ops_of(model, graph, schema.BuiltinOperator.SPLIT):
            op.builtinOptions.numSplits = count
    return edit


def conv_writes_model_output(model, graph):
    """CONV_2D writes its [1, 4, 4, 4] result into the model's [1, 5] output."""
    for op in ops_of(model, graph, schema.BuiltinOperator.CONV_2D):
        op.outputs = [graph.outputs[0]]


def condition_subgraph(model, graph) -> schema.SubGraphT:
    (loop,) = ops_of(model, graph, schema.BuiltinOperator.WHILE)
    return model.subgraphs[loop.builtinOptions.condSubgraphIndex]


def condition_without_ops(model, graph):
    """A WHILE loop whose condition is never computed."""
    condition_subgraph(model, graph).operators = []


def condition_writes_its_input(model, graph):
    """A WHILE loop whose condition op writes into an input, not into the condition."""
    condition = condition_subgraph(model, graph)
    condition.operators[0].outputs = [condition.inputs[2]]


@pytest.fixture(scope="module")
def split_model() -> bytes:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    parts = keras.layers.Lambda(lambda x: tf.split(x, 3, axis=-1))(inputs)
    return convert_model(keras.Model(inputs, keras.layers.Add()(parts)), "none")


@pytest.fixture(scope="module")
def gru_model() -> bytes:
    """A GRU layer, which converts to a WHILE loop."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 3), batch_size=1)
    return convert_model(keras.Model(inputs, keras.layers.GRU(5)(inputs)), "none")


@pytest.fixture(scope="module")
def conv_model() -> bytes:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    outputs = keras.layers.Dense(5)(keras.layers.Flatten()(x))
    return convert_model(keras.Model(inputs, outputs), "none")


def outcome(model: bytes | str) -> str:
    """How opening and running `model` in a worker ends: "ran", or the one UserError's
    message (anything else fails the test, and so would this process dying)."""
    try:
        with IsolatedRunner(model) as runner:
            detail = runner.input_details[0]
            runner.predict(np.zeros((1, *detail["shape"][1:]), detail["dtype"]))
    except UserError as error:
        return str(error)
    return "ran"


def test_same_answers_and_members_as_in_process(tiny_tflite_bytes):
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    local = LiteRtRunner(tiny_tflite_bytes)
    with IsolatedRunner(tiny_tflite_bytes) as runner:
        np.testing.assert_array_equal(runner.predict(x), local.predict(x))
        assert runner.batch_size == 1
        assert runner.input_details[0]["dtype"] == np.float32
        assert runner.output_details[0]["shape"].tolist() == [1, 4]
        runner.set_example_input(seed=3)
        assert runner.invoke_timed() > 0
        local.set_example_input(seed=3)
        local.invoke_timed()
        np.testing.assert_array_equal(runner.output(), local.output())
        runner.set_input(x[:1])
        runner.invoke_timed()
        np.testing.assert_array_equal(runner.output(), local.predict(x[:1]))
        assert set(runner.times_us) == {"load_us", "check_us", "compile_us"}


def test_user_errors_come_back_as_they_are(tmp_path, tiny_tflite_bytes):
    with IsolatedRunner(tiny_tflite_bytes) as runner:
        with pytest.raises(UserError, match=r"input must be float32\[1, 16\], got int32"):
            runner.set_input(np.zeros((1, 16), np.int32))
        with pytest.raises(UserError, match="expects"):
            runner.predict(np.zeros((2, 3), np.float32))
        assert runner.predict(np.zeros((1, 16), np.float32)).shape == (1, 4)  # still serving
    missing = tmp_path / "absent.tflite"
    with pytest.raises(UserError, match=f"model file not found: {re.escape(str(missing))}"):
        IsolatedRunner(missing)
    with pytest.raises(UserError, match="cannot run <bytes>"):
        IsolatedRunner(b"\0\0\0\0TFL3" + b"\xa5" * 200)
    with pytest.raises(UserError, match="input name 'a,b' cannot be written"):
        IsolatedRunner(tiny_tflite_bytes, input_shapes={"a,b": (1, 16)})


def first_crash(candidates: list[bytes], phase: str) -> tuple[bytes, str]:
    """The first candidate that crashes LiteRT while `phase`, with its message."""
    messages = [outcome(model) for model in candidates]
    for model, message in zip(candidates, messages):
        crash = CRASH.search(message)
        if crash and crash[1] == phase:
            return model, message
    pytest.fail(f"none of the damaged models crashes LiteRT while {phase} any more "
                f"({messages}); find another field edit that does")


def test_crash_while_compiling_is_one_user_error(split_model, tmp_path):
    model, message = first_crash([edited(split_model, split_count(n)) for n in (2, 0, 4)],
                                 "compiling")
    assert CRASH.search(message)[2] == "<bytes>"
    path = tmp_path / "split.tflite"  # a path is named as the caller gave it
    path.write_bytes(model)
    assert CRASH.search(outcome(path))[2] == str(path)


def test_crash_while_running_is_one_user_error_and_stays_one(gru_model, conv_model):
    model, message = first_crash([edited(gru_model, condition_without_ops),
                                  edited(gru_model, condition_writes_its_input),
                                  edited(conv_model, conv_writes_model_output)], "running")
    runner = IsolatedRunner(model)
    detail = runner.input_details[0]
    with pytest.raises(UserError) as first:
        runner.predict(np.zeros((1, *detail["shape"][1:]), detail["dtype"]))
    assert str(first.value) == message
    with pytest.raises(UserError) as again:  # the worker is gone; every call says why
        runner.invoke_timed()
    assert str(again.value) == message
    runner.close()

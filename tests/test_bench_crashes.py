"""A model that crashes LiteRT inside the native runner, on the host (`edgepipe bench`)
and on an emulated device: one message naming the signal and what the runner was
doing (its stderr marker `litert_bench: compiled` tells compiling from running),
never the last unrelated line of its output. And what the runner writes is read
without ever failing on bytes that are not UTF-8."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ai_edge_litert
import pytest
from ai_edge_litert import schema_py_generated as schema

from android_bench.adb_harness import benchmark_on_devices
from android_bench.runner import NATIVE_DIR, ResultStore, RunSettings
from core.errors import UserError
from core.keras_env import keras, tf
from fixtures.adb_device import adb_device, adb_server, make_device  # noqa: F401
from tflite.convert import convert_model
from tflite.flatbuffer_rewrite import pack_model

RUNNER = NATIVE_DIR / "litert_bench"
LIBRARY = Path(ai_edge_litert.__file__).parent / "libLiteRt.so"
needs_runner = pytest.mark.skipif(not RUNNER.is_file(),
                                  reason="scripts/setup.sh builds .native/litert_bench")


def edited(data: bytes, edit) -> bytes:
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    edit(model, model.subgraphs[0])
    return pack_model(model)


def ops_of(model, graph, builtin: int) -> list:
    return [op for op in graph.operators
            if model.operatorCodes[op.opcodeIndex].builtinCode == builtin]


@pytest.fixture(scope="module")
def crashing_models(tmp_path_factory) -> dict[str, Path]:
    """Real converted models with one field edited so that LiteRT 2.3.0 segfaults:
    SPLIT's num_splits no longer matching its outputs (while compiling), a GRU's
    WHILE loop whose condition subgraph has no operators, so its boolean is never
    computed (while running)."""
    folder = tmp_path_factory.mktemp("crashing")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    parts = keras.layers.Lambda(lambda x: tf.split(x, 3, axis=-1))(inputs)
    split = convert_model(keras.Model(inputs, keras.layers.Add()(parts)), "none")
    inputs = keras.Input((4, 3), batch_size=1)
    gru = convert_model(keras.Model(inputs, keras.layers.GRU(5)(inputs)), "none")

    def split_count(model, graph):
        for op in ops_of(model, graph, schema.BuiltinOperator.SPLIT):
            op.builtinOptions.numSplits = 2

    def condition_without_ops(model, graph):
        (loop,) = ops_of(model, graph, schema.BuiltinOperator.WHILE)
        model.subgraphs[loop.builtinOptions.condSubgraphIndex].operators = []

    paths = {"compiling": folder / "split.tflite", "running": folder / "gru.tflite"}
    paths["compiling"].write_bytes(edited(split, split_count))
    paths["running"].write_bytes(edited(gru, condition_without_ops))
    return paths


@needs_runner
@pytest.mark.parametrize("phase", ["compiling", "running"])
def test_host_crash_is_named_with_its_phase(crashing_models, phase, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "bench", "--model", str(crashing_models[phase]),
         "--num_runs", "1", "--warmup_runs", "0", "--warmup_min_secs", "0",
         "--json_output", str(tmp_path / "bench.json")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    error = result.stderr.splitlines()[-1]
    assert error.startswith("edgepipe bench: error: host benchmark of "), result.stderr[-2000:]
    assert f"the runner crashed (SIGSEGV) while {phase} the model; the model is damaged" \
        in error, error
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bench.json").exists()


@needs_runner
def test_device_crash_is_named_with_its_phase(adb_server, adb_device, crashing_models,
                                              tmp_path):
    settings = RunSettings(warmup_runs=0, warmup_min_secs=0, num_runs=1)
    for phase, model in crashing_models.items():
        with pytest.raises(UserError) as error:
            benchmark_on_devices(model, RUNNER, libraries=[LIBRARY], settings=settings,
                                 results_path=tmp_path / f"{phase}.jsonl")
        assert (f"on device {adb_device.serial} (threads=1), the runner crashed (SIGSEGV) "
                f"while {phase} the model") in str(error.value)
    assert list(adb_device.tmp.iterdir()) == []


def test_journal_with_bytes_that_are_not_utf8_still_loads(tmp_path):
    """A line torn or damaged on disk is skipped, as a torn line always was."""
    store = ResultStore(tmp_path / "journal.jsonl")
    store.append({"target": "host", "threads": 1})
    with open(store.path, "ab") as f:
        f.write(b'{"target": "ho\xff\xfe' + b"\n")
    store.append({"target": "host", "threads": 2})
    assert [r["threads"] for r in store.load()] == [1, 2]

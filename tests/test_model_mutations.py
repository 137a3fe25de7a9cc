"""A fixed, seeded slice of the mutation corpus (the fuzz targets take it further):
damaged copies of real models through the native runner, as `edgepipe bench` runs
them. Each is either measured or refused with one `litert_bench: error:` line.
Models made of our custom op alone never crash the runner; for builtin ops a crash
inside LiteRT itself is possible (the runtime's isolated mode exists for that), and
the test keeps the count visible rather than pretending it away."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from android_bench.runner import runner_binary
from core.keras_env import keras
from tflite.convert import convert_model
from tflite.flatbuffer_rewrite import align_constant_buffers
from tflite.ops.sparse_gru_lowering import convert_with_sparse_gru

MUTANTS_PER_MODEL = 250
SEED = 20261201


def structure_length(data: bytes) -> int:
    """Bytes of the flatbuffer proper: aligned models keep constants behind it."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(data, 0)
    offsets = [model.Buffers(i).Offset() for i in range(model.BuffersLength())
               if model.Buffers(i).Offset() > 1]
    return min(offsets) if offsets else len(data)


def mutants(data: bytes, count: int, seed: int) -> list[bytes]:
    """Copies with 1-4 bytes of the flatbuffer structure set to random values."""
    rng = np.random.default_rng(seed)
    head = structure_length(data)
    out = []
    for _ in range(count):
        copy = bytearray(data)
        for position in rng.integers(8, head, size=rng.integers(1, 5)):
            copy[position] = int(rng.integers(0, 256))
        out.append(bytes(copy))
    return out


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    keras.utils.set_random_seed(5)
    gru_in = keras.Input((8, 6), batch_size=1)
    gru = keras.Model(gru_in, keras.layers.GRU(16)(gru_in))
    cnn_in = keras.Input((8, 8, 1), batch_size=1)
    x = keras.layers.Conv2D(4, 3, activation="relu")(cnn_in)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    cnn = keras.Model(cnn_in, keras.layers.Dense(3)(x))
    samples = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    return {
        "sparse_gru_float32": convert_with_sparse_gru(gru),
        "sparse_gru_int8": convert_with_sparse_gru(gru, "int8"),
        "cnn_float32": align_constant_buffers(convert_model(cnn, "none", samples)),
        "cnn_int8": align_constant_buffers(convert_model(cnn, "int8", samples)),
    }


def run_runner(path) -> subprocess.CompletedProcess:
    return subprocess.run([str(runner_binary()), f"--graph={path}", "--num_runs=1",
                           "--warmup_runs=0", "--warmup_min_secs=0", "--min_secs=0",
                           f"--json_output={path}.json"],
                          capture_output=True, timeout=60)


@pytest.mark.parametrize("name", ["sparse_gru_float32", "sparse_gru_int8", "cnn_float32",
                                  "cnn_int8"])
def test_mutated_models_are_measured_or_refused(models, name, tmp_path):
    outcomes = {"measured": 0, "refused": 0, "crashed": 0}
    for index, data in enumerate(mutants(models[name], MUTANTS_PER_MODEL, SEED + index_of(name))):
        path = tmp_path / f"{name}_{index}.tflite"
        path.write_bytes(data)
        result = run_runner(path)
        stderr = result.stderr.decode("utf-8")  # the runner's messages stay UTF-8
        if result.returncode == 0:
            document = json.loads((tmp_path / f"{path.name}.json").read_text("utf-8"))
            assert document["steady_state"]["count"] == 1
            outcomes["measured"] += 1
        elif result.returncode == 1:
            errors = [line for line in stderr.splitlines() if line.startswith("litert_bench: error:")]
            assert len(errors) == 1, stderr[-2000:]
            assert errors[0] == stderr.rstrip("\n").splitlines()[-1]
            outcomes["refused"] += 1
        else:
            assert result.returncode < 0, f"mutant {index}: exit {result.returncode}: {stderr[-1000:]}"
            # Our kernels and checks never crash: a crash is LiteRT's, in a builtin op.
            assert not name.startswith("sparse_gru"), f"mutant {index} crashed the runner"
            outcomes["crashed"] += 1
    print(name, outcomes)
    assert outcomes["refused"] > 0  # the slice reaches the checks


def index_of(name: str) -> int:
    return ["sparse_gru_float32", "sparse_gru_int8", "cnn_float32", "cnn_int8"].index(name) * 1000

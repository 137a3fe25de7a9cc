"""Stale results are never reused (issue 11, class 7): a stage is recomputed when
anything it depends on changes (the builder's code, a saved model's contents, an
in-memory model's weights, the lowering's format, the native runtime, the thread
counts an `auto` lowering was timed at), and its key is recorded in results.json.
Files the run writes get normal permissions."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from core.errors import UserError
from core.keras_env import keras
from pipelines.config import parse_config
from pipelines.run import run_pipeline
from tflite.ops import sparse_gru_lowering
from tflite.runtime.binding import library_path

REPO = Path(__file__).resolve().parent.parent
BENCHMARK = {"num_runs": 1, "warmup_runs": 0, "warmup_min_secs": 0.0}


def raw_config(tmp_path: Path, builder: str, **model) -> dict:
    return {"output_dir": str(tmp_path / "out"), "benchmark": BENCHMARK, "models": [{
        "name": "m", "builder": builder, "data": {"source": "digits", "kind": "sequence"},
        "train": {"epochs": 1}, "pruning": {"enabled": False}, "variants": ["float32"],
        **model}]}


def run(raw: dict, **kwargs) -> dict:
    return run_pipeline(parse_config(raw), **kwargs)


def keys(results: dict) -> dict:
    (model,) = [m for m in results["models"] if m["name"] == "m"]
    return model["stage_keys"]


def dense_builder(units: int) -> str:
    return textwrap.dedent(f"""\
        import tf_keras as keras

        def build(input_shape, num_classes):
            inputs = keras.Input(input_shape)
            hidden = keras.layers.Dense({units}, activation="relu")(keras.layers.Flatten()(inputs))
            return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(hidden))
        """)


def test_editing_the_builder_retrains(tmp_path, monkeypatch):
    module = tmp_path / "stage_key_builder.py"
    module.write_text(dense_builder(8))
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = raw_config(tmp_path, "stage_key_builder:build")
    first = run(raw)
    module.write_text(dense_builder(24))
    del sys.modules["stage_key_builder"]  # as a new `edgepipe run` process would import it
    second = run(raw)
    assert keys(second)["model"] != keys(first)["model"]
    assert keys(second)["float"] != keys(first)["float"]
    assert second["models"][0]["params"] > first["models"][0]["params"]


def small_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8))
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, outputs)


def test_replacing_a_saved_model_file_retrains(tmp_path):
    path = tmp_path / "given.keras"
    small_model(0).save(path)
    raw = raw_config(tmp_path, str(path), train={"epochs": 0})
    first = run(raw)
    small_model(1).save(path)
    second = run(raw)
    assert keys(second)["float"] != keys(first)["float"]
    assert second["variants"][0]["keras_accuracy"] != first["variants"][0]["keras_accuracy"]


def test_new_weights_of_an_in_memory_model_reconvert(tmp_path):
    model = small_model(0)
    raw = raw_config(tmp_path, "in-memory", train={"epochs": 0})
    first = run(raw, keras_models={"m": model})
    tflite = tmp_path / "out" / "m" / "tflite" / "float32.tflite"
    before = tflite.read_bytes()
    model.set_weights([w + 0.5 for w in model.get_weights()])
    second = run(raw, keras_models={"m": model})
    assert keys(second)["float"] != keys(first)["float"]
    assert tflite.read_bytes() != before


def test_a_new_lowering_format_reconverts_and_only_that(tmp_path, monkeypatch):
    """The file written in the new format is new (this kernel then refuses the format
    version it does not know, which a reused old file would have hidden)."""
    raw = raw_config(tmp_path, "gru_classifier", options={"units": [8]},
                     gru_lowering="sparse_gru", train={"epochs": 0})
    first = keys(run(raw))
    monkeypatch.setattr(sparse_gru_lowering, "FORMAT_VERSION",
                        sparse_gru_lowering.FORMAT_VERSION + 1)
    with pytest.raises(UserError, match="custom option 'version' is 2; this kernel reads format "
                                        "version 1 only"):
        run(raw)
    stages = tmp_path / "out" / "m" / "stages"
    assert json.loads((stages / "float.json").read_text())["key"] == first["float"]
    assert json.loads((stages / "convert_float32.json").read_text())["key"] != \
        first["convert_float32"]


def test_a_rebuilt_runtime_revalidates_but_keeps_the_conversion(tmp_path):
    """A second `edgepipe run` with another build of the native runtime (the same
    library with one byte appended, which the loader ignores)."""
    raw = raw_config(tmp_path, "gru_classifier", options={"units": [8]}, train={"epochs": 0})
    first = keys(run(raw))
    rebuilt = tmp_path / "libedgepipe_runtime.so"
    shutil.copy(library_path(), rebuilt)
    with open(rebuilt, "ab") as handle:
        handle.write(b"\0")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--config",
                             str(config)], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "EDGEPIPE_RUNTIME_LIB": str(rebuilt)})
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    second = keys(results)
    assert second["convert_float32"] == first["convert_float32"]
    assert second["validate_float32"] != first["validate_float32"]
    assert "m: validate_float32 is up to date" not in result.stderr
    assert "m: convert_float32 is up to date, reused" in result.stderr


def test_files_get_the_permissions_of_the_umask(tmp_path):
    os.umask(0o022)  # the common default; mkstemp alone would give 0600
    raw = raw_config(tmp_path, "gru_classifier", options={"units": [8]}, train={"epochs": 0})
    run(raw)
    expected = 0o666 & ~_umask()
    written = [tmp_path / "out" / "results.json", tmp_path / "out" / "report.md",
               tmp_path / "out" / "m" / "tflite" / "float32.tflite",
               tmp_path / "out" / "m" / "stages" / "float.json"]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == \
        {p.name: oct(expected) for p in written}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_auto_lowering_decides_again_at_new_thread_counts_and_only_there(tmp_path):
    """`auto` times the ops at the benchmark's thread counts: other counts make a new
    choice for the pruned variant; the dense variant (builtin ops) keeps its file."""
    raw = raw_config(tmp_path, "gru_classifier", options={"units": [8]}, train={"epochs": 0},
                     pruning={"target_sparsity": 0.5, "layers": ["gru_.*"], "epochs": 1,
                              "frequency": 5},
                     variants=["float32", "pruned_float32"])
    first = run(raw)
    raw["benchmark"] = {**BENCHMARK, "threads": [1, 2]}
    second = run(raw)
    assert keys(second)["convert_float32"] == keys(first)["convert_float32"]
    assert keys(second)["convert_pruned_float32"] != keys(first)["convert_pruned_float32"]
    rows = {v["name"]: v for v in second["variants"]}
    assert rows["float32"]["lowering"] == {}
    assert [t["threads"] for t in rows["pruned_float32"]["lowering"]["gru"]["timings"]] == [1, 2]

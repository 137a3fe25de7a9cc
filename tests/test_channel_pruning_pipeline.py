"""The channel pruning phase in a run: config to results.json and report.md, its
variants converted, validated and measured, distillation in every fine-tuning phase,
and the settings that cannot work refused before anything trains."""
import json

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from core.errors import UserError
from core.keras_env import keras, tf
from fixtures.channel_models import residual_net
from pipelines.config import parse_config
from pipelines.data import from_tf_dataset
from pipelines.run import run_pipeline

VARIANTS = ["float32", "channel_pruned_float32", "channel_pruned_int8",
            "channel_pruned_sparse_float32"]


def config(tmp_path, **changes):
    model = {"name": "m", "builder": "residual_net", "train": {"epochs": 2, "batch_size": 16},
             "pruning": {"target_sparsity": 0.5, "layers": ["a", "b", "c", "head"], "epochs": 1,
                         "frequency": 2},
             "channel_pruning": {"enabled": True, "target_mult_adds": 0.6, "prune_every": 2,
                                 "channels_per_step": 3, "finetune_epochs": 1},
             "distillation": {"enabled": True, "attention_transfer": {"enabled": True}},
             "representative_samples": 16, "variants": VARIANTS, **changes}
    return parse_config({"output_dir": str(tmp_path), "models": [model],
                         "benchmark": {"num_runs": 2, "warmup_runs": 0}})


def dataset(model_config):
    rng = np.random.default_rng(0)
    x = rng.random((160, 8, 8, 3)).astype(np.float32)
    y = (x[:, :4].mean(axis=(1, 2, 3)) * 4 > 2).astype(np.int32) + 2 * (x[..., 0].mean(axis=(1, 2)) > 0.5)
    return from_tf_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(32),
                           model_config.models[0].data)


def seeded_net():
    """The same initial weights and auto-made names (input_1) every time, so that a
    second run reuses every stage."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    return residual_net()


def conv_filters(path) -> dict[str, int]:
    """Output channels of each CONV_2D's filter in a .tflite file, by filter tensor name."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    graph = model.subgraphs[0]
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    return {graph.tensors[op.inputs[1]].name.decode(): int(graph.tensors[op.inputs[1]].shape[0])
            for op in graph.operators if codes[op.opcodeIndex] == schema.BuiltinOperator.CONV_2D}


def test_channel_pruned_variants_run_end_to_end(tmp_path):
    run_config = config(tmp_path)
    data = dataset(run_config)
    results = run_pipeline(run_config, datasets={"m": data}, keras_models={"m": seeded_net()})

    (model,) = results["models"]
    record = model["channel_pruning"]
    assert record["criterion"] == "taylor" and record["reached"]
    assert record["mult_adds"]["after"] <= 0.6 * record["mult_adds"]["before"]
    assert record["mult_adds"]["before"] == model["mult_adds"]
    assert record["params"]["after"] < record["params"]["before"] == model["params"]
    assert sum(g["channels_after"] for g in record["groups"].values()) == record["channels"]["after"]
    assert any(g["channels_after"] < g["channels_before"] for g in record["groups"].values())
    assert 0 < model["channel_pruned_sparse"]["sparsity"] <= 0.5 + 1e-6

    rows = {v["name"]: v for v in results["variants"]}
    assert list(rows) == VARIANTS
    for name in VARIANTS[1:]:
        assert rows[name]["mult_adds"] == record["mult_adds"]["after"]
        assert rows[name]["params"] == record["params"]["after"]
        assert rows[name]["benchmarks"] and rows[name]["benchmarks"][0]["mean_ms"] > 0
    assert rows["float32"]["mult_adds"] == model["mult_adds"]
    assert rows["channel_pruned_float32"]["max_abs_error"] <= 1e-4  # against its own Keras model
    assert rows["channel_pruned_float32"]["file_bytes"] < rows["float32"]["file_bytes"]
    # The converted file holds the smaller filters, not masked full-size ones.
    full = conv_filters(tmp_path / "m" / "tflite" / "float32.tflite")
    pruned = conv_filters(tmp_path / "m" / "tflite" / "channel_pruned_float32.tflite")
    assert sum(pruned.values()) < sum(full.values())

    # Every fine-tuning phase was taught: the distillation terms are in its history.
    manifests = tmp_path / "m" / "stages"
    for phase in ("channel_pruned", "channel_pruned_sparse"):
        history = json.loads((manifests / f"{phase}.json").read_text())["record"]["history"]
        finetune = history["finetune"] if phase == "channel_pruned" else history
        assert "kd_loss" in finetune and "at_loss" in finetune, phase

    report = (tmp_path / "report.md").read_text()
    assert "channel pruning (taylor): target mult_adds 60%" in report
    assert "| channel group | channels before | channels after | removal steps |" in report

    again = run_pipeline(run_config, datasets={"m": data}, keras_models={"m": seeded_net()})
    assert "channel_pruned" not in again["stage_seconds"]
    assert again["models"][0]["channel_pruning"] == record


@pytest.mark.parametrize("changes, message", [
    ({"channel_pruning": {"enabled": True, "layers": ["predictions"]}},
     r"channel_pruning.layers \['predictions'\] select no channel group that can be shrunk "
     r"\(predictions: "),
    ({"channel_pruning": {"enabled": True, "layers": ["nothing_.*"]}},
     r"layers \['nothing_.\*'\] match no channel group of model"),
    ({"distillation": {"enabled": True, "attention_transfer": {"enabled": True,
                                                               "layers": ["gap"]}}},
     r"attention_transfer.layers \['gap'\] match no layer .* with a 4-D output"),
])
def test_impossible_settings_are_refused_before_training(tmp_path, changes, message):
    run_config = config(tmp_path, **changes)
    with pytest.raises(UserError, match=message):
        run_pipeline(run_config, datasets={"m": dataset(run_config)},
                     keras_models={"m": seeded_net()})
    assert not (tmp_path / "m" / "keras").exists()

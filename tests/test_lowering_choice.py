"""The `auto` lowering (pipelines/lowering_choice.py) and the pipeline's custom-op
variants: blocks measured alone, decisions that follow their timings, dynamic-range
weights, and a user model that is not MobileNet through the whole pipeline."""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import UserError
from core.keras_env import keras
from fixtures.user_models import separable_net
from pipelines.benchmarks.bench_ops import zero_smallest
from pipelines.config import parse_config
from pipelines.lowering_choice import MARGIN, auto_separable
from pipelines.report import lowering_section
from pipelines.run import run_pipeline
from tflite.convert import convert_model
from tflite.inspect import inspect_model
from tflite.ops.sparse_separable_lowering import block_model, lower_separable_blocks
from tflite.runtime.binding import LiteRtRunner

OP = "CUSTOM:SparseSeparableConv"

USER_BUILDER = "fixtures.user_models:separable_net"


def _block(size: int, channels: int, sparsity: float, name: str) -> keras.Model:
    inputs = keras.Input((size, size, channels), batch_size=1)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name=f"{name}_dw")(inputs)
    x = keras.layers.ReLU(6.0)(x)
    pointwise = keras.layers.Conv2D(channels, 1, activation="relu", name=f"{name}_pw")
    model = keras.Model(inputs, pointwise(x), name=name)
    zero_smallest(pointwise.kernel, sparsity)
    return model


def _two_blocks() -> keras.Model:
    """A large 95%-sparse block, where the op pays on this host, then a dense one."""
    keras.utils.set_random_seed(0)
    first, second = _block(56, 128, 0.95, "sparse"), _block(56, 128, 0.0, "dense")
    return keras.Model(first.inputs, second(first.outputs[0]))


def test_block_model_is_the_builtin_pair_alone():
    keras.utils.set_random_seed(0)
    model = separable_net((16, 16, 1), 10)
    flatbuffer = convert_model(model, "none", sparse=True)
    _, records = lower_separable_blocks(flatbuffer)
    lowerable = [r for r in records if r["lowered"]]
    assert len(lowerable) == 3
    x = np.random.default_rng(0).uniform(-1, 1, (1, 16, 16, 1)).astype(np.float32)
    for record, (start, end) in zip(lowerable, [("sep_a", "sep_a"), ("dw_b", "pw_b"),
                                                ("sep_c", "sep_c")]):
        single = block_model(flatbuffer, record)
        info = inspect_model(single)
        assert set(info.op_counts) <= {"DEPTHWISE_CONV_2D", "CONV_2D", "DENSIFY"}
        keras_block = keras.Model(model.get_layer(start).input, model.get_layer(end).output)
        block_input = keras.Model(model.inputs, model.get_layer(start).input).predict(x, verbose=0)
        got = LiteRtRunner(single).predict(block_input)
        assert got.shape == tuple(record["output_shape"])
        assert np.max(np.abs(got - keras_block.predict(block_input, verbose=0))) <= 1e-4


def test_auto_lowers_exactly_the_blocks_timed_faster():
    flatbuffer = convert_model(_two_blocks(), "none", sparse=True)
    lowered, decision = auto_separable(flatbuffer, "float32", threads=[1])
    sparse, dense = decision["blocks"]
    # The dense block is not timed: the op's dense path loses at every measured size.
    assert not dense["lowered"] and "timings" not in dense and "non-zero" in dense["reason"]
    timing = sparse["timings"][0]
    faster = timing["op_us"] <= MARGIN * timing["builtin_us"]
    whole = decision["whole_model"]
    if sparse["lowered"]:
        assert faster and whole[0]["op_us"] < whole[0]["builtin_us"]
        assert inspect_model(lowered).op_counts[OP] == 1
        assert sparse["reason"].startswith("op faster")
    else:
        assert lowered == flatbuffer
        assert not faster or whole[0]["op_us"] >= whole[0]["builtin_us"]


def test_auto_keeps_a_model_whose_blocks_do_not_pay_unchanged():
    keras.utils.set_random_seed(0)
    flatbuffer = convert_model(_block(8, 8, 0.0, "tiny"), "none")
    lowered, decision = auto_separable(flatbuffer, "float32", threads=[1, 2])
    assert lowered == flatbuffer and decision["whole_model"] is None
    assert [b["lowered"] for b in decision["blocks"]] == [False]


def test_dynamic_range_weights_lower_as_int8_pointwise():
    keras.utils.set_random_seed(0)
    model = separable_net((16, 16, 1), 10)
    for layer in model.layers:
        if layer.name in ("sep_a", "sep_c"):
            zero_smallest(layer.pointwise_kernel, 0.8)
        elif layer.name == "pw_b":
            zero_smallest(layer.kernel, 0.8)
    builtin = convert_model(model, "dynamic_range")
    lowered, records = lower_separable_blocks(builtin, "int8")
    assert [r["lowered"] for r in records] == [True] * 3
    assert {r["precision"] for r in records} == {"int8"}
    x = np.random.default_rng(1).uniform(-1, 1, (8, 16, 16, 1)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    # The builtin hybrid kernels quantize activations too; the op keeps them float.
    assert np.max(np.abs(LiteRtRunner(lowered).predict(x) - expected)) <= \
        np.max(np.abs(LiteRtRunner(builtin).predict(x) - expected)) + 1e-3


def test_report_lists_each_decision_and_the_speed_up():
    bench = {"target": "host", "threads": 1}
    variants = [
        {"model": "m", "name": "float32", "benchmarks": [{**bench, "mean_ms": 2.0}]},
        {"model": "m", "name": "int8", "benchmarks": [{**bench, "mean_ms": 1.0}]},
        {"model": "m", "name": "pruned_float32", "benchmarks": [{**bench, "mean_ms": 1.6}],
         "lowering": {"separable": {"mode": "auto", "whole_model": [
             {"threads": 1, "builtin_us": 2000.0, "op_us": 1600.0}], "blocks": [
             {"layer": "net/b1", "depthwise": "t1", "lowered": True, "input_shape": [1, 8, 8, 16],
              "kernel_size": 3, "stride": 1, "density": 0.1, "reason": "op faster (...)",
              "timings": [{"threads": 1, "builtin_us": 30.0, "op_us": 15.0}]},
             {"layer": "net/b2", "depthwise": "t2", "lowered": False, "reason": "dilation 2x2"}]}}},
    ]
    text = lowering_section(variants)
    assert "1.25x the speed of float32, 0.62x the speed of int8" in text
    assert "1 of 2 depthwise convolutions lowered" in text
    assert "| net/b1 | 8x8x16 | 3x3/1 | 10.0% | yes | 30.0 | 15.0 | 2.00x | op faster (...) |" in text
    assert "| net/b2 | – | – | – | no | – | – | – | dilation 2x2 |" in text
    assert "too small for it to pay" not in text
    variants[2]["lowering"]["separable"]["blocks"][0]["lowered"] = False
    assert "too small for it to pay on this host" in lowering_section(variants)
    assert lowering_section(variants[:2]) == "No variant uses a custom op."


# -- the pipeline on a user model -------------------------------------------------------------

def _config(tmp_path, builder: str, variants: list[str], lowering: str):
    return parse_config({"output_dir": str(tmp_path / "run"), "models": [
        {"name": "sepnet", "builder": builder,
         "data": {"source": "digits", "kind": "image", "resolution": 16},
         "train": {"epochs": 2},
         "pruning": {"target_sparsity": 0.9, "layers": ["sep_.*", "pw_.*"], "epochs": 1,
                     "frequency": 5},
         "separable_lowering": lowering, "variants": variants}],
        "benchmark": {"num_runs": 3, "warmup_runs": 1}})


def test_pipeline_lowers_a_user_model_that_is_not_mobilenet(tmp_path):
    variants = ["float32", "pruned_float32", "pruned_dynamic_range"]
    results = run_pipeline(_config(tmp_path, USER_BUILDER, variants, "sparse_separable"))
    rows = {row["name"]: row for row in results["variants"]}
    for name, row in rows.items():
        assert inspect_model(tmp_path / "run" / row["path"]).op_counts[OP] == 3
        blocks = row["lowering"]["separable"]["blocks"]
        assert [b["lowered"] for b in blocks] == [True] * 3
        assert {b["precision"] for b in blocks} == \
            {"int8" if name.endswith("dynamic_range") else "float32"}
        assert row["benchmarks"] and row["top1_agreement"] >= 0.95
    # Float variants are checked against Keras within the run's float32 tolerance.
    assert rows["pruned_float32"]["max_abs_error"] <= 1e-4
    assert {b["format"] for b in rows["pruned_float32"]["lowering"]["separable"]["blocks"]} \
        == {"csr"}
    report = (tmp_path / "run" / "report.md").read_text()
    assert "### sepnet · pruned_dynamic_range" in report


def test_pipeline_auto_decides_per_block_in_pruned_variants_only(tmp_path):
    results = run_pipeline(_config(tmp_path, USER_BUILDER, ["float32", "pruned_float32"], "auto"))
    rows = {row["name"]: row for row in results["variants"]}
    assert rows["float32"]["lowering"] == {}
    decision = rows["pruned_float32"]["lowering"]["separable"]
    lowered = [b for b in decision["blocks"] if b["lowered"]]
    ops = inspect_model(tmp_path / "run" / rows["pruned_float32"]["path"]).op_counts.get(OP, 0)
    assert ops == len(lowered)
    for block in lowered:
        timing = block["timings"][0]
        assert timing["op_us"] <= MARGIN * timing["builtin_us"]
    assert rows["pruned_float32"]["max_abs_error"] <= 1e-4


@pytest.mark.parametrize("variant", ["int8", "pruned_int8", "float16", "pqat_int8"])
def test_forcing_the_op_on_variants_it_cannot_serve_is_refused(tmp_path, variant):
    with pytest.raises(UserError, match=f"variant '{variant}' cannot use separable_lowering: "
                                        "sparse_separable"):
        _config(tmp_path, "mobilenet_v1", [variant], "sparse_separable")


def _prune_in_4x1_blocks(layer, sparsity: float) -> None:
    """Zero whole blocks of 4 output channels of one input channel, smallest first."""
    kernel = layer.kernel.numpy()
    cin, cout = kernel.shape[2:]
    blocks = np.abs(kernel.reshape(cin, cout // 4, 4)).max(axis=2)
    keep = blocks > np.quantile(blocks, sparsity)
    layer.kernel.assign((kernel.reshape(cin, cout // 4, 4) * keep[..., None]).reshape(kernel.shape))


def test_weights_pruned_in_4x1_blocks_are_timed_both_ways_and_the_faster_kept():
    keras.utils.set_random_seed(0)
    model = _block(28, 64, 0.0, "blocky")
    _prune_in_4x1_blocks(model.get_layer("blocky_pw"), 0.9)
    flatbuffer = convert_model(model, "none")
    lowered, decision = auto_separable(flatbuffer, "float32", threads=[1])
    (record,) = decision["blocks"]
    assert record["stored_density_4x1"] == pytest.approx(record["density"])
    assert sorted(record["block_timings"]) == ["1", "4"]
    best = min(record["block_timings"], key=lambda b: record["block_timings"][b][0]["op_us"]
               / record["block_timings"][b][0]["builtin_us"])
    assert record["timings"] == record["block_timings"][best]
    if record["lowered"]:
        assert record["block"] == int(best)
    # Unstructured weights of the same density: 4x1 blocks would store 3x more; not timed.
    unstructured = convert_model(_block(28, 64, 0.9, "plain"), "none")
    (plain,) = auto_separable(unstructured, "float32", threads=[1])[1]["blocks"]
    assert "block_timings" not in plain

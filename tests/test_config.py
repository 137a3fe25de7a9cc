"""Config loading: the default file, overrides, and each mistake's message."""
import pytest
import yaml

from core.errors import UserError
from pipelines.config import (DEFAULT_CONFIG, apply_override, load_config, parse_config,
                              variant_stage)


def minimal(**model):
    return {"models": [{"name": "m", "builder": "mobilenet_v1", **model}]}


def test_default_config_is_valid_and_has_both_models():
    config = load_config()
    assert [m.name for m in config.models] == ["mobilenet", "gru"]
    mobilenet = config.models[0]
    assert mobilenet.pruning.target_sparsity == 0.8
    assert "pqat_int8" in mobilenet.variants and "int8" in mobilenet.variants
    assert config.models[1].pruning.schedule == "narang"


def test_override_addresses_models_by_name():
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    apply_override(data, "models.gru.train.epochs=3")
    apply_override(data, "benchmark.threads=[1, 2]")
    config = parse_config(data)
    assert config.models[1].train.epochs == 3
    assert config.benchmark.threads == [1, 2]


def test_override_of_unknown_model_names_the_models():
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    with pytest.raises(UserError, match="no model named 'lstm'.*mobilenet, gru"):
        apply_override(data, "models.lstm.train.epochs=3")
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        apply_override(data, "models.gru.train.epochs")


def test_unknown_key_is_named_with_the_valid_keys():
    with pytest.raises(UserError, match=r"models\[0\].train: unknown key 'epoch'.*epochs"):
        parse_config(minimal(train={"epoch": 3}))


def test_wrong_type_is_named():
    with pytest.raises(UserError, match=r"models\[0\].train.epochs: expected int, got 'ten'"):
        parse_config(minimal(train={"epochs": "ten"}))


def test_missing_required_key():
    with pytest.raises(UserError, match="missing key 'builder'"):
        parse_config({"models": [{"name": "m"}]})


@pytest.mark.parametrize("variant, message", [
    ("int4", "unknown variant 'int4'"),
    ("qat_float16", "QAT models convert to int8 only"),
    ("qat_int8", "needs qat.enabled: true"),
    ("pqat_int8", "needs pruning.enabled: true and qat.prune_preserving: true"),
])
def test_bad_variants(variant, message):
    with pytest.raises(UserError, match=message):
        parse_config(minimal(variants=[variant]))


def test_pruned_variant_needs_pruning():
    with pytest.raises(UserError, match="needs pruning.enabled: true"):
        parse_config(minimal(variants=["pruned_int8"], pruning={"enabled": False}))


def test_bad_schedule_and_sparsity():
    with pytest.raises(UserError, match="pruning.schedule 'cubic' is not one of"):
        parse_config(minimal(pruning={"schedule": "cubic"}))
    with pytest.raises(UserError, match=r"target_sparsity must be in \[0, 1\)"):
        parse_config(minimal(pruning={"target_sparsity": 1.5}))


def test_duplicate_model_names():
    data = minimal()
    data["models"].append(dict(data["models"][0]))
    with pytest.raises(UserError, match="model name 'm' is used twice"):
        parse_config(data)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(UserError, match="does not exist; pass --config"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        load_config(bad)


def test_variant_stage():
    assert variant_stage("pruned_int8") == ("pruned", "int8")
    assert variant_stage("pqat_int8") == ("pqat", "int8")
    assert variant_stage("dynamic_range") == ("float", "dynamic_range")

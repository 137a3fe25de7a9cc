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


@pytest.mark.parametrize("path", sorted(DEFAULT_CONFIG.parent.glob("*.yaml")),
                         ids=lambda path: path.name)
def test_shipped_configs_are_valid(path):
    assert load_config(path).models


def test_channel_pruning_example_enables_it_and_the_default_does_not():
    example = load_config(DEFAULT_CONFIG.parent / "channel_pruning.yaml").models[0]
    assert example.channel_pruning.enabled and example.distillation.enabled
    assert "channel_pruned_int8" in example.variants
    assert not any(m.channel_pruning.enabled or m.distillation.enabled
                   for m in load_config().models)


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
    with pytest.raises(UserError, match=r"models.m.train: unknown key 'epoch'.*epochs"):
        parse_config(minimal(train={"epoch": 3}))


def test_wrong_type_is_named():
    with pytest.raises(UserError, match=r"models.m.train.epochs: input should be a valid integer "
                                        r"\(got 'ten'\)"):
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
    with pytest.raises(UserError, match="pruning.schedule: input should be 'polynomial_decay', "
                                        "'constant', 'narang' or 'm_by_n' \\(got 'cubic'\\)"):
        parse_config(minimal(pruning={"schedule": "cubic"}))
    with pytest.raises(UserError, match=r"pruning.target_sparsity: input should be less than 1"):
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
    assert variant_stage("channel_pruned_int8") == ("channel_pruned", "int8")
    assert variant_stage("channel_pruned_sparse_float32") == ("channel_pruned_sparse", "float32")


def test_channel_pruning_and_distillation_sections():
    config = parse_config(minimal(
        channel_pruning={"enabled": True, "target_channels": 0.6, "layers": ["conv_pw_.*"]},
        distillation={"enabled": True, "attention_transfer": {"enabled": True, "beta": 500}},
        variants=["channel_pruned_float32", "channel_pruned_sparse_int8"]))
    model = config.models[0]
    # Giving target_channels alone replaces the default mult-adds target.
    assert (model.channel_pruning.target_channels, model.channel_pruning.target_mult_adds) == \
        (0.6, None)
    assert model.channel_pruning.criterion == "taylor"
    assert model.distillation.attention_transfer.beta == 500
    assert not parse_config(minimal()).models[0].channel_pruning.enabled


@pytest.mark.parametrize("model, message", [
    ({"variants": ["channel_pruned_int8"]}, "needs channel_pruning.enabled: true"),
    ({"variants": ["channel_pruned_sparse_float32"], "pruning": {"enabled": False},
      "channel_pruning": {"enabled": True}}, "so it needs pruning.enabled: true"),
    ({"channel_pruning": {"target_mult_adds": 0.5, "target_channels": 0.5}},
     "set exactly one of target_mult_adds and target_channels"),
    ({"channel_pruning": {"target_mult_adds": None}},
     "set exactly one of target_mult_adds and target_channels"),
    ({"channel_pruning": {"target_mult_adds": 1.0}},
     r"channel_pruning.target_mult_adds: input should be less than 1"),
    ({"channel_pruning": {"criterion": "weight"}},
     r"channel_pruning.criterion: input should be 'taylor', 'l1' or 'random'"),
    ({"channel_pruning": {"flops_regularization": -1}},
     "channel_pruning.flops_regularization: input should be greater than or equal to 0"),
    ({"channel_pruning": {"channels_per_step": 0}},
     "channel_pruning.channels_per_step: input should be greater than or equal to 1"),
    ({"channel_pruning": {"layers": ["["]}},
     r"channel_pruning.layers: '\[' \(item 0\) is not a valid regular expression"),
    ({"distillation": {"temperature": 0}},
     "distillation.temperature: input should be greater than 0"),
    ({"distillation": {"alpha": 1.5}}, "distillation.alpha: input should be less than or equal"),
    ({"distillation": {"attention_transfer": {"beta": float("inf")}}},
     "distillation.attention_transfer.beta: input should be a finite number"),
    ({"distillation": {"attention": True}}, "distillation: unknown key 'attention'"),
])
def test_bad_channel_pruning_and_distillation_settings(model, message):
    with pytest.raises(UserError, match=message):
        parse_config(minimal(**model))


@pytest.mark.parametrize("name", ["../../escape", "", "a/b", "a.b", "plots", "Plots", "x" * 65,
                                  "-dash", "with space"])
def test_model_names_are_plain_identifiers(name):
    """A model's name is its folder in output_dir: nothing may lead outside it or onto
    the run folder's own folders, and it must stay addressable by --set."""
    with pytest.raises(UserError, match="model name .* (not a plain identifier|run folder's)"):
        parse_config({"models": [{"name": name, "builder": "mobilenet_v1"}]})


def test_model_names_differing_in_case_are_one_folder():
    with pytest.raises(UserError, match="model name 'GRU' is used twice .*ignoring case"):
        parse_config({"models": [{"name": "gru", "builder": "gru_classifier"},
                                 {"name": "GRU", "builder": "gru_classifier"}]})


@pytest.mark.parametrize("model, message", [
    ({"pruning": {"initial_sparsity": 2}},
     r"models.m.pruning.initial_sparsity: input should be less than 1 \(got 2\)"),
    ({"pruning": {"initial_sparsity": 0.9, "target_sparsity": 0.5}},
     "initial_sparsity 0.9 is above target_sparsity 0.5"),
    ({"pruning": {"layers": ["conv_pw_.*", "("]}},
     r"pruning.layers: '\(' \(item 1\) is not a valid regular expression"),
    ({"pruning": {"begin_step": 50, "end_step": 10}},
     "begin_step <= ramp_step <= end_step; got 50, None, 10"),
    ({"pruning": {"m_by_n": [4, 4]}}, r"m_by_n \[4, 4\] keeps m of every n weights"),
    ({"pruning": {"frequency": 0}}, "pruning.frequency: input should be greater than or equal"),
    ({"data": {"resolution": 0}}, r"data.resolution: input should be greater than or equal to 1"),
    ({"data": {"channels": 2}}, r"data.channels: input should be 1 or 3 \(got 2\)"),
    ({"data": {"test_fraction": 0.6, "val_fraction": 0.5}}, "leave nothing for training"),
    ({"train": {"learning_rate": float("nan")}},
     r"train.learning_rate: nan is not a usable learning rate"),
    ({"train": {"batch_size": True}}, r"train.batch_size: input should be a valid integer"),
    ({"variants": ["int8", "int8"]}, "variant 'int8' is listed twice"),
    ({"representative_samples": 0}, "representative_samples: input should be greater than"),
])
def test_out_of_range_and_impossible_settings_are_refused(model, message):
    with pytest.raises(UserError, match=message):
        parse_config(minimal(**model))


def test_every_problem_is_reported_at_once():
    with pytest.raises(UserError) as error:
        parse_config({"models": [{"name": "m", "builder": "b", "train": {"epochs": -1}}],
                      "benchmark": {"num_runs": 0}})
    assert "models.m.train.epochs" in str(error.value)
    assert "benchmark.num_runs" in str(error.value)


def test_set_value_that_is_not_yaml_is_refused():
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    with pytest.raises(UserError, match=r"the value '\{alpha: \[0.5' is not valid YAML"):
        apply_override(data, "models.mobilenet.options={alpha: [0.5")

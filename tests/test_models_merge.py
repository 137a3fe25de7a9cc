"""`edgepipe run --models a` merges into the run folder's results instead of
dropping the other models' finished results (issue 11)."""
import json
import subprocess
import sys

import pytest

from core.errors import UserError
from pipelines import report
from pipelines.config import parse_config
from pipelines.run import run_pipeline

CONFIG = """\
output_dir: {out}
seed: 0
models:
  - name: a
    builder: gru_classifier
    options: {{units: [8]}}
    data: {{source: digits, kind: sequence}}
    train: {{epochs: 1}}
    pruning: {{enabled: false}}
    variants: [float32]
  - name: b
    builder: gru_classifier
    options: {{units: [8]}}
    data: {{source: digits, kind: sequence}}
    train: {{epochs: 1}}
    pruning: {{enabled: false}}
    variants: [float32, dynamic_range]
benchmark: {{targets: [host], threads: [1], warmup_runs: 0, num_runs: 2}}
"""


def edgepipe(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


def test_running_one_model_keeps_the_others_results(tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "two.yaml"
    config.write_text(CONFIG.format(out=out))
    edgepipe("run", "--config", str(config))
    first = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in first["models"]] == ["a", "b"]

    # Only `a`, with another thread count, so its new entries are told from its old ones.
    edgepipe("run", "--config", str(config), "--models", "a", "--threads", "2")
    second = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in second["models"]] == ["a", "b"]
    assert [(v["model"], v["name"]) for v in second["variants"]] == [
        ("a", "float32"), ("b", "float32"), ("b", "dynamic_range")]
    by_name = {(v["model"], v["name"]): v for v in second["variants"]}
    assert [b["threads"] for b in by_name["a", "float32"]["benchmarks"]] == [2]
    for variant in first["variants"]:
        if variant["model"] == "b":
            assert by_name["b", variant["name"]] == variant
    assert second["models"][1] == first["models"][1]
    assert [m["name"] for m in second["config"]["models"]] == ["a", "b"]
    markdown = (out / "report.md").read_text()
    assert "| b | float32 |" in markdown and "| b | dynamic_range |" in markdown
    assert "| host |" in markdown and "| b | dynamic_range | 1 |" in markdown
    assert "| a | float32 | 2 |" in markdown and "| a | float32 | 1 |" not in markdown
    assert "### b" in markdown


def results(models, variants):
    return report.build_results({"created": "now"}, [{"name": m} for m in models],
                                [{"model": m, "name": v} for m, v in variants])


def test_merge_replaces_models_run_in_place_and_appends_new_ones():
    previous = results(["a", "b", "c"], [("a", "x"), ("b", "x"), ("b", "y"), ("c", "x")])
    merged = report.merge_results(previous, results(["d", "b"], [("d", "x"), ("b", "z")]))
    assert [m["name"] for m in merged["models"]] == ["a", "b", "c", "d"]
    assert [(v["model"], v["name"]) for v in merged["variants"]] == [
        ("a", "x"), ("b", "z"), ("c", "x"), ("d", "x")]
    assert merged["created"] == "now"


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ('{"schema_version": 1}', "not an edgepipe results.json"),
    ('{"schema_version": 0, "models": [], "variants": []}', "schema_version 0"),
])
def test_a_results_json_that_cannot_be_merged_stops_the_run_first(tmp_path, text, message):
    (tmp_path / "results.json").write_text(text)
    config = parse_config({"output_dir": str(tmp_path), "models": [
        {"name": "m", "builder": "gru_classifier", "train": {"epochs": 1},
         "pruning": {"enabled": False}, "variants": ["float32"]}]})
    with pytest.raises(UserError, match=message):
        run_pipeline(config)
    assert not list(tmp_path.rglob("*.tflite"))
    assert (tmp_path / "results.json").read_text() == text

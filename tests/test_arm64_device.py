"""`edgepipe bench` on emulated arm64 phones: the harness reads the device's ABI and
pushes the arm64 bundle (never the host's x86-64 runner), starts it through its
run.sh (under qemu's cortex-a76 here, fixtures/arm64.py) and records which bundle
ran; an x86_64 device at the same time gets the host build. Plus the bundle's own
check, an ABI nothing is built for, an old adbd without shell_v2, and LiteRT's
official benchmark_model run beside ours (our aarch64 runner standing in).

The runner fills inputs with the same pseudo-random values on every machine, so
the outputs of the last inference (their sha256 in each record) can be compared
with the host run's: the int8 MobileNet and SparseGRU (CSR path) give the same
bytes; XNNPACK's float kernels and SparseSeparableConv's float sums are per-ISA
code that differs in the last bits, so the float models' records are only checked
for sane measurements (tests/test_arm64_bundle.py compares their values within 1e-5).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import adbutils
import pytest

from android_bench.adb_harness import DeviceSession, Timeouts, benchmark_on_devices
from android_bench.arm64_bundle import BUNDLE_DIR, checked_bundle
from android_bench.native_build import EM_AARCH64, EM_X86_64
from android_bench.runner import NATIVE_DIR, RunSettings, litert_library
from core.errors import UserError
from fixtures.adb_device import DeviceProfile, adb_server, make_device  # noqa: F401
from fixtures.cli import assert_user_error, edgepipe
from fixtures.small_models import mobilenets, sparse_gru, sparse_separable

ARM64 = DeviceProfile(model="Emulated Pixel 8", abi="arm64-v8a", soc="Tensor G3")
FEW_RUNS = ["--threads", "1", "--num_runs", "3", "--warmup_runs", "1", "--warmup_min_secs", "0",
            "--min_secs", "0"]
# Models whose outputs on arm64 are the host's, byte for byte.
EXACT = {"mobilenet_int8", "sparse_gru"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    contents = {**mobilenets(), "sparse_gru": sparse_gru(0.8),
                "sparse_separable": sparse_separable(0.9, "float32", 1)}
    for name, content in contents.items():
        paths[name] = folder / f"{name}.tflite"
        paths[name].write_bytes(content)
    return paths


@pytest.fixture
def tiny_model(tmp_path, tiny_tflite_bytes) -> Path:
    path = tmp_path / "tiny.tflite"
    path.write_bytes(tiny_tflite_bytes)
    return path


def bench(model: Path, target: str, output: Path) -> list[dict]:
    """`edgepipe bench` of `model` on `target`, few runs; its benchmark records."""
    result = edgepipe("bench", "--model", str(model), "--target", target, *FEW_RUNS,
                      "--json_output", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(output.read_text())["benchmarks"]


def journal(output: Path, model: Path) -> list[dict]:
    """The measurement records `edgepipe bench` journals next to its output."""
    lines = (output.parent / f"{model.stem}.measurements.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def machines(device) -> set[int | None]:
    return {machine for _, machine in device.pushed}


def bundle_record() -> dict:
    manifest = BUNDLE_DIR / "manifest.json"
    return {"abi": "arm64-v8a",
            "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
            "litert": json.loads(manifest.read_text())["litert"]["version"]}


@pytest.mark.parametrize("name", ["mobilenet_float", "mobilenet_int8", "sparse_gru",
                                  "sparse_separable"])
def test_bench_on_arm64_device_runs_the_bundle(adb_server, make_device, models, tmp_path, name):
    phone = make_device(ARM64)
    adb_server.connect(phone)
    output = tmp_path / "bench.json"
    host, device = bench(models[name], f"host,{phone.serial}", output)
    assert (host["target"], device["target"]) == ("host", phone.serial)
    assert device["bundle"] == bundle_record()
    assert {key: device["device"][key] for key in ("kind", "model", "abi", "android", "soc")} == {
        "kind": "android", "model": "Emulated Pixel 8", "abi": "arm64-v8a", "android": "14",
        "soc": "Tensor G3"}
    assert device["runs"] >= 3 and 0 < device["min_ms"] <= device["mean_ms"]
    ran = journal(output, models[name])[1]["runner"]
    # The runner's own view: a glibc build knows no Android; the record's device is the harness's.
    assert ran["device"]["kind"] == "host" and ran["device"]["uname"].endswith("aarch64")
    assert host["outputs_sha256"] and device["outputs_sha256"]
    if name in EXACT:
        assert device["outputs_sha256"] == host["outputs_sha256"]
    pushed = {path.rsplit("/bin/", 1)[-1] for path, _ in phone.pushed if "/bin/" in path}
    assert pushed == {*json.loads((BUNDLE_DIR / "manifest.json").read_text())["files"],
                      "manifest.json"}
    assert EM_X86_64 not in machines(phone) and EM_AARCH64 in machines(phone)


def test_x86_and_arm64_devices_at_once_each_get_their_build(adb_server, make_device, tiny_model,
                                                           tmp_path):
    emulator, phone = make_device(), make_device(ARM64)
    for device in (emulator, phone):
        adb_server.connect(device)
    output = tmp_path / "bench.json"
    rows = {row["target"]: row for row in bench(tiny_model, "all", output)}
    assert rows[phone.serial]["bundle"] == bundle_record()
    runner = NATIVE_DIR / "litert_bench"
    assert rows[emulator.serial]["bundle"] == {
        "abi": "x86_64", "runner_sha256": hashlib.sha256(runner.read_bytes()).hexdigest()}
    assert machines(emulator) == {EM_X86_64, None}  # runner, libLiteRt.so; the model
    assert EM_X86_64 not in machines(phone)
    pushes = len(emulator.pushed), len(phone.pushed)
    bench(tiny_model, "all", output)  # resumed by identity: nothing measured or pushed again
    assert len(journal(output, tiny_model)) == 2
    assert (len(emulator.pushed), len(phone.pushed)) == pushes


def test_changed_or_missing_bundle_is_one_error_naming_setup(tmp_path):
    assert checked_bundle()["abi"] == "arm64-v8a"
    copy = tmp_path / "arm64-v8a"
    shutil.copytree(BUNDLE_DIR, copy)
    with (copy / "run.sh").open("a") as script:
        script.write("# edited\n")
    with pytest.raises(UserError, match=r"bundle's run.sh in .* differs from its manifest .*"
                                        r"`bash scripts/setup.sh`"):
        checked_bundle(copy)
    (copy / "lib" / "libc.so.6").unlink()
    (copy / "run.sh").unlink()
    with pytest.raises(UserError, match=r"lacks (lib/libc.so.6|run.sh): .*bash scripts/setup.sh"):
        checked_bundle(copy)
    with pytest.raises(UserError, match=r"arm64 bundle is missing .*`bash scripts/setup.sh`"):
        checked_bundle(tmp_path / "nothing")


def test_device_of_another_abi_is_one_error(adb_server, make_device, tiny_model):
    old = make_device(DeviceProfile(abi="armeabi-v7a"))
    adb_server.connect(old)
    result = edgepipe("bench", "--model", str(tiny_model), "--target", old.serial, *FEW_RUNS)
    assert_user_error(result, f"device {old.serial} reports ABI 'armeabi-v7a'; there is a runner "
                              "only for arm64-v8a (the arm64 bundle) and x86_64 (")
    assert old.pushed == []


def test_device_without_shell_v2_reports_its_properties(adb_server, make_device, tiny_model,
                                                        tmp_path, caplog):
    old = make_device(DeviceProfile(model="Old Phone", release="7.1", soc="", shell_v2=False))
    adb_server.connect(old)
    with caplog.at_level(logging.WARNING):
        (record,) = benchmark_on_devices(
            tiny_model, NATIVE_DIR / "litert_bench", libraries=[litert_library()],
            results_path=tmp_path / "journal.jsonl", targets=[old.serial],
            settings=RunSettings(warmup_runs=1, warmup_min_secs=0, num_runs=3),
            timeouts=Timeouts(command=30, transfer=30, run=60, reconnect=20))
    info = record["device"]
    assert (info["model"], info["abi"], info["android"], info["soc"]) == (
        "Old Phone", "x86_64", "7.1", "zuma")  # no ro.soc.model: the board names the SoC
    assert record["runner"]["steady_state"]["count"] >= 3 and record["outputs_sha256"]
    assert "shell_v2 specified but not supported by device" in caplog.text  # adbutils' v1 fallback
    assert "reports no" not in caplog.text
    bare = make_device(DeviceProfile(model="", soc="", board="", hardware="", shell_v2=False))
    adb_server.connect(bare)
    with caplog.at_level(logging.WARNING):
        info = DeviceSession(adbutils.AdbClient(), bare.serial).info()
    assert (info["model"], info["abi"], info["soc"]) == ("", "x86_64", "")
    assert (f"{bare.serial}: the device reports no model (ro.product.model), soc (ro.soc.model, "
            "ro.board.platform or ro.hardware)") in caplog.text


# LiteRT's official benchmark_model cannot be fetched on these machines. Its stand-in is
# our aarch64 runner, which prints benchmark_model's documented log lines
# (tests/test_benchmark_model_output.py): a script started, as the harness starts
# any benchmark_model that is not an ELF program, with sh, that runs the bundle the
# harness pushed beside it. Untested: the real binary's flags and output on a phone.
STAND_IN = """#!/bin/sh
exec sh "$(dirname "$0")/../bin/run.sh" "$@"
"""


@pytest.fixture
def stand_in(tmp_path) -> Path:
    path = tmp_path / "benchmark_model"
    path.write_text(STAND_IN)
    return path


def test_benchmark_model_runs_beside_our_runner(adb_server, make_device, models, tmp_path,
                                                stand_in, caplog):
    phone = make_device(ARM64)
    adb_server.connect(phone)
    output = tmp_path / "bench.json"
    result = edgepipe("bench", "--model", str(models["mobilenet_int8"]), "--target", phone.serial,
                      *FEW_RUNS, "--benchmark_model", str(stand_in), "--json_output", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    ours, official = json.loads(output.read_text())["benchmarks"]
    assert (ours["tool"], official["tool"]) == ("litert_bench", "benchmark_model")
    assert official["bundle"] == {"abi": "script",
                                  "runner_sha256": hashlib.sha256(stand_in.read_bytes()).hexdigest()}
    assert official["device"] == ours["device"] and official["runs"] >= 3
    assert 0 < official["min_ms"] <= official["p50_ms"] <= official["max_ms"]
    assert official["p90_ms"] is None  # benchmark_model prints no p90
    assert official["outputs_sha256"] == ours["outputs_sha256"]  # the same inputs, int8
    assert f"| {phone.serial} (benchmark_model) | Emulated Pixel 8 Tensor G3 |" in result.stdout
    with caplog.at_level(logging.WARNING):
        (only,) = benchmark_on_devices(
            models["sparse_gru"], NATIVE_DIR / "litert_bench", libraries=[litert_library()],
            results_path=tmp_path / "gru.jsonl", targets=[phone.serial],
            settings=RunSettings(warmup_runs=1, warmup_min_secs=0, num_runs=3),
            benchmark_model=stand_in)
    assert only["tool"] == "litert_bench"
    assert (f"{phone.serial}: benchmark_model skipped for sparse_gru.tflite: it has no kernel "
            "for the custom op(s) SparseGRU") in caplog.text


def test_benchmark_model_for_another_abi_is_refused_before_any_push(adb_server, make_device,
                                                                    tiny_model):
    phone = make_device(ARM64)
    adb_server.connect(phone)
    host_build = NATIVE_DIR / "litert_bench"
    result = edgepipe("bench", "--model", str(tiny_model), "--target", phone.serial, *FEW_RUNS,
                      "--benchmark_model", str(host_build))
    assert_user_error(result, f"benchmark_model {host_build} is built for x86_64 but device "
                              f"{phone.serial} is arm64-v8a: give the arm64-v8a build")
    assert phone.pushed == []
    missing = edgepipe("bench", "--model", str(tiny_model), "--benchmark_model", "/no/such")
    assert_user_error(missing, "--benchmark_model: '/no/such' is not a file: give the path of "
                               "LiteRT's Android benchmark_model binary")
    unused = edgepipe("bench", "--model", str(tiny_model), "--benchmark_model", str(host_build))
    assert_user_error(unused, "benchmark_model runs on Android devices only and the targets are "
                              "[host]; add device targets")

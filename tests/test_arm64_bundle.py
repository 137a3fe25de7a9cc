"""The arm64 bundle (.native/bundles/arm64-v8a, built by scripts/setup.sh) without
a phone: its manifest describes its files, and its runner, started through its
run.sh under qemu's user mode emulation (fixtures/arm64.py says why proot binds a
cortex-a76 cpuinfo), measures a float and an int8 MobileNet, SparseGRU models
and MobileNets lowered to SparseSeparableConv, and writes the host runner's outputs. A missing bundle, proot or qemu
fails the tests.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from android_bench.arm64_bundle import BUNDLE_DIR as BUNDLE
from android_bench.native_build import EM_AARCH64, elf_machine
from fixtures.arm64 import under_qemu, write_cpuinfo
from fixtures.fuzzing import REPO
from fixtures.small_models import mobilenets, sparse_gru, sparse_separable

HOST_RUNNER = REPO / ".native" / "litert_bench"
FAST = ["--num_runs=3", "--min_secs=0", "--warmup_runs=1", "--warmup_min_secs=0"]


@pytest.fixture(scope="module")
def manifest() -> dict:
    if not (BUNDLE / "manifest.json").is_file():
        pytest.fail(f"{BUNDLE} is missing: scripts/setup.sh builds it")
    return json.loads((BUNDLE / "manifest.json").read_text())


def test_manifest_describes_every_file(manifest):
    files = {str(path.relative_to(BUNDLE)) for path in BUNDLE.rglob("*") if path.is_file()}
    assert set(manifest["files"]) == files - {"manifest.json"}
    for name, entry in manifest["files"].items():
        data = (BUNDLE / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}, name
    pinned = re.search(r"^LITERT_ARM64_SHA256=(\w+)$", (REPO / "scripts" / "setup.sh").read_text(),
                       re.MULTILINE).group(1)
    assert manifest["litert"] == {
        "package": "ai-edge-litert", "version": "2.3.0", "wheel_sha256": pinned,
        "wheel": "ai_edge_litert-2.3.0-cp311-cp311-manylinux_2_27_aarch64.whl"}
    assert manifest["abi"] == "arm64-v8a"
    assert manifest["toolchain"]["compiler"].startswith("aarch64-linux-gnu-g++")
    for name in ("litert_bench", "libLiteRt.so", "lib/ld-linux-aarch64.so.1", "lib/libc.so.6"):
        assert elf_machine((BUNDLE / name).read_bytes()[:20]) == EM_AARCH64, name
    assert os.access(BUNDLE / "run.sh", os.X_OK) and os.access(BUNDLE / "litert_bench", os.X_OK)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory, manifest):
    """Runs the bundle's run.sh with arguments under proot + qemu (cortex-a76)."""
    cpuinfo = write_cpuinfo(tmp_path_factory.mktemp("cpu") / "cpuinfo")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(under_qemu(["/bin/sh", str(BUNDLE / "run.sh"), *args], cpuinfo),
                              capture_output=True, text=True, timeout=300)

    return run


# name: input shape, output dtype, how close the arm64 outputs must be to the
# host's (0: the same bytes). Int8 kernels and SparseGRU's CSR path give the same
# bytes on both; SparseGRU's dense-row path (above 30% density: the host's AVX2
# build fuses multiply-adds, the portable arm64 build does not) and XNNPACK's
# float kernels (its own per-ISA code) differ in the last bits, as do
# SparseSeparableConv's float sums (the host's AVX2 build fuses multiply-adds).
CASES = {
    "mobilenet_float": ((1, 32, 32, 1), np.float32, 1e-5),
    "mobilenet_int8": ((1, 32, 32, 1), np.int8, 0),
    "sparse_gru_csr": ((1, 8, 8), np.float32, 0),
    "sparse_gru_dense_rows": ((1, 8, 8), np.float32, 1e-5),
    "sparse_separable_float": ((1, 32, 32, 1), np.float32, 1e-5),
    "sparse_separable_int8_weights_4x1": ((1, 32, 32, 1), np.float32, 1e-5),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Small real models, each with a raw input file beside it (MODEL.input)."""
    folder = tmp_path_factory.mktemp("arm64_models")
    rng = np.random.default_rng(0)
    contents = {**mobilenets(), "sparse_gru_csr": sparse_gru(0.8),
                "sparse_gru_dense_rows": sparse_gru(0.5),
                "sparse_separable_float": sparse_separable(0.9, "float32", 1),
                "sparse_separable_int8_weights_4x1": sparse_separable(0.8, "int8", 4)}
    paths = {}
    for name, content in contents.items():
        paths[name] = folder / f"{name}.tflite"
        paths[name].write_bytes(content)
        shape = CASES[name][0]
        value = (rng.integers(-128, 128, shape, dtype=np.int8) if name.endswith("int8")
                 else rng.random(shape, dtype=np.float32))
        value.tofile(folder / f"{name}.input")
    return paths


def _args(model: Path, output: Path) -> list[str]:
    return [f"--graph={model}", f"--input_layer_value_files=input:{model.with_suffix('.input')}",
            f"--output_filepath={output}", *FAST]


@pytest.mark.parametrize("name", CASES)
def test_bundle_measures_and_matches_the_host(emulated, models, tmp_path, name):
    if not HOST_RUNNER.is_file():
        pytest.fail(f"{HOST_RUNNER} is missing: scripts/setup.sh builds it")
    _, dtype, tolerance = CASES[name]
    host_out, arm_out = tmp_path / "host.raw", tmp_path / "arm64.raw"
    host = subprocess.run([str(HOST_RUNNER), *_args(models[name], host_out)],
                          capture_output=True, text=True, timeout=120)
    assert host.returncode == 0, host.stderr
    arm = emulated(*_args(models[name], arm_out))
    assert arm.returncode == 0, arm.stderr[-4000:]
    report = json.loads(arm.stdout)
    assert report["device"]["uname"].endswith("aarch64")
    assert report["steady_state"]["count"] >= 3 and report["steady_state"]["min_us"] > 0
    output = report["model"]["outputs"][0]
    assert output["dtype"] == np.dtype(dtype).name
    expected, got = np.fromfile(host_out, dtype), np.fromfile(arm_out, dtype)
    assert expected.shape == got.shape == (np.prod(output["shape"]),)
    if tolerance:
        np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)
    else:
        assert arm_out.read_bytes() == host_out.read_bytes()

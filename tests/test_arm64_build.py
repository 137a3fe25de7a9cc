"""The native code on arm64, the ABI phones run, without a phone or an NDK.

Debian's aarch64 cross compiler builds every C++ source with the project's
warning flags, and the SparseGRU kernel's own test program (the portable NEON
build of the computation, held to a scalar reference) runs under qemu's user
mode emulation. LiteRT's arm64 library is not on this machine, so nothing that
calls into LiteRT is linked: the kernel test never reaches the kernel's LiteRT
glue, and --gc-sections drops it with its undefined references.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

from fixtures.fuzzing import REPO, SPARSE_GRU_SOURCES

CROSS_CXX = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64-static"
FLAGS = ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{REPO}"]
NATIVE_DIRS = ("android_bench", "tflite/ops", "tflite/ops/fuzz")
EM_AARCH64 = 183  # e_machine in the ELF header

pytestmark = pytest.mark.skipif(
    shutil.which(CROSS_CXX) is None or shutil.which(QEMU) is None,
    reason=f"{CROSS_CXX} or {QEMU} missing: scripts/setup.sh installs them")


def _compile(args: list[str]) -> None:
    result = subprocess.run([CROSS_CXX, *FLAGS, *args], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def test_every_native_source_compiles_for_arm64(tmp_path):
    sources = sorted(path for folder in NATIVE_DIRS for path in (REPO / folder).glob("*.cc"))
    assert len(sources) >= 10, sources
    for source in sources:
        _compile(["-c", str(source), "-o", str(tmp_path / f"{source.stem}.o")])
    assert sorted(path.stem for path in tmp_path.glob("*.o")) == sorted(s.stem for s in sources)


def test_sparse_gru_kernel_test_passes_on_arm64(tmp_path):
    ops = REPO / "tflite" / "ops"
    binary = tmp_path / "sparse_gru_kernel_test"
    _compile(["-static", "-ffunction-sections", "-fdata-sections", "-Wl,--gc-sections",
              str(ops / "sparse_gru_kernel_test.cc"), *map(str, SPARSE_GRU_SOURCES),
              "-pthread", "-o", str(binary)])
    header = binary.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == EM_AARCH64
    result = subprocess.run([QEMU, str(binary)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "all checks passed" in result.stdout

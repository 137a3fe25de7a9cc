"""The native code on arm64, the ABI phones run, without a phone or an NDK.

Debian's aarch64 cross compiler builds every C++ source (runtime, runner,
kernels, fuzz targets, tests) with the project's warning flags, and the
SparseGRU and SparseSeparableConv kernels' own GoogleTest programs (the
portable NEON builds of the computations, held to scalar references) run under
qemu's user mode emulation. The runner linked with LiteRT's arm64 library is
built by scripts/setup.sh and tested in test_arm64_bundle.py; the kernels and
their tests do not call LiteRT.

The headers the sources take from the host's /usr/include are architecture
independent (flatbuffers, GoogleTest), so only those folders are put on the
cross compiler's path (android_bench/native_build.py, shared with the arm64
bundle's build). GoogleTest itself is built for aarch64 from Debian's
sources, in the test's temporary folder. A missing cross compiler, qemu,
flatc or googletest fails the test (project rule: a missing toolchain fails,
it does not skip).
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from android_bench.native_build import CROSS_CXX, CXX_FLAGS, cross_include_flags
from fixtures.fuzzing import REPO, SPARSE_GRU_SOURCES, SPARSE_SEPARABLE_SOURCES, require_tool

QEMU = "qemu-aarch64-static"
FLAGS = [*CXX_FLAGS, "-O2"]
NATIVE_DIRS = ("tflite/runtime", "android_bench", "tflite/ops", "tflite/ops/fuzz")
GOOGLETEST = Path("/usr/src/googletest/googletest")  # Debian's googletest sources
EM_AARCH64 = 183  # e_machine in the ELF header


def _host_headers(tmp_path: Path) -> list[str]:
    """Include flags for the architecture-independent host headers the sources use:
    GoogleTest's, flatbuffers' and the flatc-generated model schema reader."""
    assert (GOOGLETEST / "src" / "gtest-all.cc").is_file(), \
        "googletest sources missing: scripts/setup.sh installs Debian's googletest"
    return [f"-I{GOOGLETEST / 'include'}", *cross_include_flags(tmp_path)]


def _compile(args: list[str], flags: list[str] = FLAGS) -> None:
    result = subprocess.run([require_tool(CROSS_CXX), *flags, *args], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def test_every_native_source_compiles_for_arm64(tmp_path):
    headers = _host_headers(tmp_path)
    objects = tmp_path / "objects"
    objects.mkdir()
    sources = sorted(path for folder in NATIVE_DIRS for path in (REPO / folder).glob("*.cc"))
    assert len(sources) >= 15, sources
    for source in sources:
        _compile([*headers, "-c", str(source), "-o", str(objects / f"{source.stem}.o")])
    assert sorted(path.stem for path in objects.glob("*.o")) == sorted(s.stem for s in sources)


def _kernel_test_passes_on_arm64(tmp_path: Path, test_name: str, sources: list[Path]) -> None:
    """Builds a kernel's GoogleTest program for aarch64 and runs it under qemu."""
    require_tool(QEMU)
    headers = _host_headers(tmp_path)
    # GoogleTest for aarch64, without the project's -Werror (not our code).
    gtest_objects = []
    for source in (GOOGLETEST / "src" / "gtest-all.cc", GOOGLETEST / "src" / "gtest_main.cc"):
        gtest_objects.append(tmp_path / f"{source.stem}.o")
        _compile([f"-I{GOOGLETEST / 'include'}", f"-I{GOOGLETEST}", "-c", str(source), "-o",
                  str(gtest_objects[-1])], flags=["-std=c++17", "-O1"])
    test_source = REPO / "tflite" / "ops" / f"{test_name}.cc"
    binary = tmp_path / test_name
    _compile([*headers, "-static", str(test_source), *map(str, sources),
              *map(str, gtest_objects), "-pthread", "-o", str(binary)])
    header = binary.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == EM_AARCH64
    result = subprocess.run([QEMU, str(binary)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    # Every TEST in the source ran and passed (a filter or a crash would not).
    declared = len(re.findall(r"^TEST(?:_F)?\(", test_source.read_text(), re.MULTILINE))
    assert declared >= 20
    assert f"[==========] {declared} tests from" in result.stdout, result.stdout[-4000:]
    assert f"[  PASSED  ] {declared} tests." in result.stdout, result.stdout[-4000:]


def test_sparse_gru_kernel_test_passes_on_arm64(tmp_path):
    _kernel_test_passes_on_arm64(tmp_path, "sparse_gru_kernel_test", SPARSE_GRU_SOURCES)


def test_sparse_separable_kernel_test_passes_on_arm64(tmp_path):
    _kernel_test_passes_on_arm64(tmp_path, "sparse_separable_kernel_test",
                                 SPARSE_SEPARABLE_SOURCES)

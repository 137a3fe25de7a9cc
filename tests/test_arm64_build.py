"""The native code on arm64, the ABI phones run, without a phone or an NDK.

Debian's aarch64 cross compiler builds every C++ source (runtime, runner,
kernels, fuzz targets, tests) with the project's warning flags (the runner's
sources as setup builds the arm64 bundle, checked against its manifest; the
rest here), and the
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

import pytest

from android_bench.arm64_bundle import checked_bundle
from android_bench.native_build import (CROSS_CXX, CXX_FLAGS, EM_AARCH64, cross_include_flags,
                                        elf_machine)
from fixtures.fuzzing import (REPO, SPARSE_GRU_SOURCES, SPARSE_SEPARABLE_SOURCES, compile_all,
                              require_tool)

QEMU = "qemu-aarch64-static"
FLAGS = [*CXX_FLAGS, "-O2"]
NATIVE_DIRS = ("tflite/runtime", "android_bench", "tflite/ops", "tflite/ops/fuzz")
GOOGLETEST = Path("/usr/src/googletest/googletest")  # Debian's googletest sources
KERNEL_TESTS = ("sparse_gru_kernel_test", "sparse_separable_kernel_test")


def _host_headers(tmp_path: Path) -> list[str]:
    """Include flags for the architecture-independent host headers the sources use:
    GoogleTest's, flatbuffers' and the flatc-generated model schema reader."""
    assert (GOOGLETEST / "src" / "gtest-all.cc").is_file(), \
        "googletest sources missing: scripts/setup.sh installs Debian's googletest"
    return [f"-I{GOOGLETEST / 'include'}", *cross_include_flags(tmp_path)]


def _cross(args: list[str], flags: list[str] = FLAGS) -> list[str]:
    """The cross compiler's command line for `args`."""
    return [require_tool(CROSS_CXX), *flags, *args]


def test_every_native_source_compiles_for_arm64(tmp_path):
    """The sources the arm64 bundle and the kernel tests below do not build already:
    the runtime's C ABI, the other tests and the fuzz targets."""
    headers = _host_headers(tmp_path)
    objects = tmp_path / "objects"
    objects.mkdir()
    every = sorted(path for folder in NATIVE_DIRS for path in (REPO / folder).glob("*.cc"))
    in_bundle = {REPO / source for source in checked_bundle()["runner"]["sources"]}
    in_kernel_tests = {*SPARSE_GRU_SOURCES, *SPARSE_SEPARABLE_SOURCES,
                       *(REPO / "tflite" / "ops" / f"{name}.cc" for name in KERNEL_TESTS)}
    sources = [path for path in every if path not in in_bundle | in_kernel_tests]
    assert len(every) >= 20 and len(sources) >= 5, sources
    compile_all([_cross([*headers, "-c", str(source), "-o", str(objects / f"{source.stem}.o")])
                 for source in sources])
    assert sorted(path.stem for path in objects.glob("*.o")) == sorted(s.stem for s in sources)


@pytest.fixture(scope="module")
def gtest_objects(tmp_path_factory) -> list[Path]:
    """GoogleTest built for aarch64 once for both kernel tests, without the project's
    -Werror (not our code)."""
    folder = tmp_path_factory.mktemp("gtest_arm64")
    sources = (GOOGLETEST / "src" / "gtest-all.cc", GOOGLETEST / "src" / "gtest_main.cc")
    objects = [folder / f"{source.stem}.o" for source in sources]
    compile_all([_cross([f"-I{GOOGLETEST / 'include'}", f"-I{GOOGLETEST}", "-c", str(source),
                         "-o", str(target)], ["-std=c++17", "-O1"])
                 for source, target in zip(sources, objects)])
    return objects


def _kernel_test_passes_on_arm64(tmp_path: Path, gtest_objects: list[Path], test_name: str,
                                 sources: list[Path]) -> None:
    """Builds a kernel's GoogleTest program for aarch64 and runs it under qemu."""
    require_tool(QEMU)
    headers = _host_headers(tmp_path)
    test_source = REPO / "tflite" / "ops" / f"{test_name}.cc"
    binary = tmp_path / test_name
    objects = [tmp_path / f"{source.stem}.o" for source in (test_source, *sources)]
    compile_all([_cross([*headers, "-c", str(source), "-o", str(target)])
                 for source, target in zip((test_source, *sources), objects)])
    compile_all([_cross(["-static", *map(str, objects), *map(str, gtest_objects), "-pthread",
                         "-o", str(binary)])])
    assert elf_machine(binary.read_bytes()[:20]) == EM_AARCH64
    result = subprocess.run([QEMU, str(binary)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    # Every TEST in the source ran and passed (a filter or a crash would not).
    declared = len(re.findall(r"^TEST(?:_F)?\(", test_source.read_text(), re.MULTILINE))
    assert declared >= 20
    assert f"[==========] {declared} tests from" in result.stdout, result.stdout[-4000:]
    assert f"[  PASSED  ] {declared} tests." in result.stdout, result.stdout[-4000:]


def test_sparse_gru_kernel_test_passes_on_arm64(tmp_path, gtest_objects):
    _kernel_test_passes_on_arm64(tmp_path, gtest_objects, KERNEL_TESTS[0], SPARSE_GRU_SOURCES)


def test_sparse_separable_kernel_test_passes_on_arm64(tmp_path, gtest_objects):
    _kernel_test_passes_on_arm64(tmp_path, gtest_objects, KERNEL_TESTS[1],
                                 SPARSE_SEPARABLE_SOURCES)

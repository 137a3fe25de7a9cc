"""Compiling the project's C++ outside Bazel: the arm64 cross build of the runner
(android_bench/arm64_bundle.py), the arm64 compile checks and the fuzz targets
(tests/). Bazel's host build gets the same headers from its own rules; here they
are put on the compiler's path by hand.

Only architecture independent host headers are used (flatbuffers' and the
flatc-generated model schema reader), each through a folder of its own: all of
/usr/include would put x86-64 glibc headers before the aarch64 ones.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CROSS_CXX = "aarch64-linux-gnu-g++"
# The project's language and warning flags (the BUILD files' COPTS, .bazelrc).
CXX_FLAGS = ["-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{REPO}"]
FLATBUFFERS_HEADERS = Path("/usr/include/flatbuffers")  # Debian's libflatbuffers-dev
EM_X86_64, EM_AARCH64 = 62, 183  # e_machine in the ELF header


def elf_machine(header: bytes) -> int | None:
    """e_machine of a file starting with `header` (20 bytes or more); None if not ELF."""
    if header[:4] != b"\x7fELF" or len(header) < 20:
        return None
    return int.from_bytes(header[18:20], "little")


class NativeBuildError(Exception):
    """A tool or header is missing, or a compiler refused a source."""


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise NativeBuildError(f"{name} missing: scripts/setup.sh installs it")
    return path


def generate_model_schema(workdir: Path) -> Path:
    """flatc's C++ reader of tflite/runtime/tflite_schema.fbs at the path Bazel's
    genrule gives it, under workdir; returns the include directory to add."""
    include = workdir / "generated"
    out = include / "tflite" / "runtime"
    out.mkdir(parents=True)
    result = subprocess.run(
        [require_tool("flatc"), "--cpp", "-o", str(out),
         str(REPO / "tflite" / "runtime" / "tflite_schema.fbs")],
        capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise NativeBuildError(f"flatc failed: {result.stderr}")
    return include


def cross_include_flags(workdir: Path) -> list[str]:
    """-I flags for flatbuffers' headers and the generated schema reader, safe
    to give a cross compiler."""
    if not FLATBUFFERS_HEADERS.is_dir():
        raise NativeBuildError(f"{FLATBUFFERS_HEADERS} missing: scripts/setup.sh installs "
                               "libflatbuffers-dev")
    include = workdir / "host_include"
    include.mkdir()
    (include / FLATBUFFERS_HEADERS.name).symlink_to(FLATBUFFERS_HEADERS)
    return [f"-I{include}", f"-I{generate_model_schema(workdir)}"]

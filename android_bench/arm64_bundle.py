"""The arm64 bundle: litert_bench for aarch64 Linux on the aarch64 LiteRT
library of the ai-edge-litert wheel, in one folder that runs on a phone.

LiteRT publishes its aarch64 library for glibc only, so the runner is a glibc
program; Android has no glibc, so the bundle carries its own (the loader,
libc, libm, libstdc++, libgcc_s, libpthread, libdl from Debian's cross
packages) and run.sh starts the runner through that loader. Layout:

    run.sh            sh run.sh --graph=MODEL.tflite [litert_bench flags]
    litert_bench      the runner (rpath $ORIGIN)
    libLiteRt.so      from the wheel, unchanged
    lib/              the loader and the glibc libraries
    manifest.json     versions, toolchain, sha256 and size of every other file

scripts/setup.sh runs `python -m android_bench.arm64_bundle --wheel W --out DIR`.
The cross build is this script, not Bazel: Bazel 4 would need a hand-written
cc_toolchain for the cross compiler, and linking the arm64 libLiteRt.so means
another --repo_env for @litert_wheel in the same output base, so every switch
between the host and the arm64 build would throw away the analysis cache that
the host build and everyone's tests share. The sources are still Bazel's: the
list is asked of `bazel query` for the host's //android_bench:litert_bench.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from android_bench.native_build import (CROSS_CXX, CXX_FLAGS, REPO, NativeBuildError,
                                        cross_include_flags, require_tool)
from core.errors import UserError

ABI = "arm64-v8a"
BUNDLE_DIR = REPO / ".native" / "bundles" / ABI  # where scripts/setup.sh puts it
SYSROOT_LIB = Path("/usr/aarch64-linux-gnu/lib")  # Debian's libc6-arm64-cross and friends
LOADER = "ld-linux-aarch64.so.1"
GLIBC_PIECES = (LOADER, "libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1",
                "libpthread.so.0", "libdl.so.2")
LITERT_MEMBER = "ai_edge_litert/libLiteRt.so"
# As Bazel's -c opt, plus the -O3 that tflite/ops/BUILD gives the kernels.
OPT_FLAGS = ["-O2", "-DNDEBUG", "-ffunction-sections", "-fdata-sections"]
KERNEL_FLAGS = ["-O3"]
LINK_FLAGS = ["-Wl,-rpath,$ORIGIN", "-Wl,--gc-sections", "-pthread"]
RUNNER_TARGET = "//android_bench:litert_bench"

START_SCRIPT = f"""\
#!/bin/sh
# Starts litert_bench from this folder: sh run.sh --graph=MODEL.tflite [flags]
# (android_bench/RUNNER.md). The runner is a glibc program, so it is started
# through the bundle's own loader and libraries, never the device's:
# --inhibit-cache ignores any ld.so.cache, LD_PRELOAD is cleared (a device's
# preloads are bionic libraries), and glibc's rseq registration is off
# (glibc.pthread.rseq=0): the runner does not need it, and then a kernel or a
# seccomp filter that refuses the rseq call cannot stop it.
here=$(cd "$(dirname "$0")" && pwd)
unset LD_PRELOAD
export GLIBC_TUNABLES=glibc.pthread.rseq=0
exec "$here/lib/{LOADER}" --inhibit-cache --library-path "$here/lib:$here" \\
    "$here/litert_bench" "$@"
"""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(args: list[str], what: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=REPO)
    if result.returncode != 0:
        raise NativeBuildError(f"{what} failed:\n{(result.stderr or result.stdout)[-4000:]}")
    return result.stdout


def runner_sources() -> list[Path]:
    """The .cc files of the host's litert_bench target and its dependencies."""
    labels = _run([require_tool("bazel"), "query", "--noshow_progress",
                   f'kind("source file", deps({RUNNER_TARGET}))'], "bazel query").split()
    sources = sorted(REPO / label[2:].replace(":", "/") for label in labels
                     if label.startswith("//") and label.endswith(".cc"))
    if not sources:
        raise NativeBuildError(f"bazel query found no sources for {RUNNER_TARGET}")
    return sources


def build_runner(litert_library: Path, workdir: Path) -> tuple[Path, list[str]]:
    """Cross-compiles litert_bench against `litert_library`; returns the binary
    and the sources' paths relative to the repository."""
    cxx = require_tool(CROSS_CXX)
    includes = cross_include_flags(workdir)
    sources = runner_sources()

    def compile_one(source: Path) -> Path:
        kernel = source.parent == REPO / "tflite" / "ops"
        target = workdir / f"{source.parent.name}_{source.stem}.o"
        _run([cxx, *CXX_FLAGS, *OPT_FLAGS, *(KERNEL_FLAGS if kernel else []), *includes,
              "-c", str(source), "-o", str(target)], f"compiling {source.relative_to(REPO)}")
        return target

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        objects = list(pool.map(compile_one, sources))
    binary = workdir / "litert_bench"
    _run([cxx, *map(str, objects), str(litert_library), *LINK_FLAGS, "-o", str(binary)],
         "linking litert_bench")
    return binary, [str(source.relative_to(REPO)) for source in sources]


def _wheel_version(wheel: zipfile.ZipFile) -> str:
    for name in wheel.namelist():
        if name.endswith(".dist-info/METADATA"):
            for line in wheel.read(name).decode().splitlines():
                if line.startswith("Version: "):
                    return line.split(": ", 1)[1]
    raise NativeBuildError(f"{wheel.filename} has no .dist-info/METADATA with a version")


def _debian_package(path: Path) -> str:
    """'package version' of the Debian package that installed `path`."""
    package = _run(["dpkg-query", "-S", str(path)], f"dpkg-query -S {path}").split(":")[0]
    version = _run(["dpkg-query", "-W", "-f=${Version}", package], f"dpkg-query {package}")
    return f"{package} {version}"


def assemble(wheel_path: Path, out: Path) -> None:
    """Builds the bundle in a folder beside `out`, then puts it in `out`'s place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as temp:
        staging, work = Path(temp) / out.name, Path(temp) / "work"
        (staging / "lib").mkdir(parents=True)
        work.mkdir()
        try:
            with zipfile.ZipFile(wheel_path) as wheel:
                version = _wheel_version(wheel)
                with wheel.open(LITERT_MEMBER) as src, (staging / "libLiteRt.so").open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise NativeBuildError(f"{wheel_path} is not an ai-edge-litert wheel with "
                                   f"{LITERT_MEMBER}: {exc}") from exc
        binary, sources = build_runner(staging / "libLiteRt.so", work)
        shutil.copy2(binary, staging / "litert_bench")
        libraries = {}
        for name in GLIBC_PIECES:
            if not (SYSROOT_LIB / name).is_file():
                raise NativeBuildError(f"{SYSROOT_LIB / name} missing: scripts/setup.sh installs "
                                       "the aarch64 cross packages")
            shutil.copyfile(SYSROOT_LIB / name, staging / "lib" / name)  # follows symlinks
            libraries[f"lib/{name}"] = _debian_package(SYSROOT_LIB / name)
        (staging / "lib" / LOADER).chmod(0o755)
        (staging / "run.sh").write_text(START_SCRIPT)
        (staging / "run.sh").chmod(0o755)
        files = {str(path.relative_to(staging)): {"sha256": sha256_of(path),
                                                  "bytes": path.stat().st_size}
                 for path in sorted(staging.rglob("*")) if path.is_file()}
        cxx = require_tool(CROSS_CXX)
        manifest = {
            "schema_version": 1,
            "abi": ABI,
            "start": "sh run.sh --graph=MODEL.tflite [litert_bench flags]",
            "litert": {"package": "ai-edge-litert", "version": version,
                       "wheel": wheel_path.name, "wheel_sha256": sha256_of(wheel_path)},
            "runner": {"target": RUNNER_TARGET, "sources": sources},
            "libraries": libraries,
            "toolchain": {"compiler": _run([cxx, "--version"], CROSS_CXX).splitlines()[0],
                          "package": _debian_package(Path(cxx).resolve()),
                          "flags": [*(f for f in CXX_FLAGS if not f.startswith("-I")), *OPT_FLAGS],
                          "kernel_flags": KERNEL_FLAGS, "link_flags": LINK_FLAGS},
            "files": files,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        old = Path(temp) / "old"
        if out.exists():
            out.rename(old)
        staging.rename(out)


def checked_bundle(folder: Path = BUNDLE_DIR) -> dict:
    """The bundle's manifest, after checking every file it lists against its sha256
    and size: a bundle that is half built, edited or from another checkout would
    measure something else than its manifest (and the records) say."""
    rebuild = "run `bash scripts/setup.sh`, which builds it"
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        expected = {name: (entry["bytes"], entry["sha256"])
                    for name, entry in manifest["files"].items()}
    except FileNotFoundError:
        raise UserError(f"the arm64 bundle is missing ({folder / 'manifest.json'} does not "
                        f"exist): {rebuild}") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"the arm64 bundle's manifest {folder / 'manifest.json'} is unreadable "
                        f"({error}): {rebuild}") from None
    for name, (size, digest) in expected.items():
        path = folder / name
        if not path.is_file():
            raise UserError(f"the arm64 bundle in {folder} lacks {name}: {rebuild}")
        if path.stat().st_size != size or sha256_of(path) != digest:
            raise UserError(f"the arm64 bundle's {name} in {folder} differs from its manifest "
                            f"(changed after the build): {rebuild} again")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, required=True,
                        help="the aarch64 ai-edge-litert wheel")
    parser.add_argument("--out", type=Path, required=True, help="the bundle folder to write")
    args = parser.parse_args(argv)
    try:
        assemble(args.wheel, args.out)
    except (NativeBuildError, OSError) as exc:
        print(f"arm64_bundle: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

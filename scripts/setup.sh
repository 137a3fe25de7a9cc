#!/usr/bin/env bash
# Prepare a machine and this checkout for edgepipe: Debian packages (compiler,
# adb, offline Bazel), the project virtual environment in <repo>/.venv, the
# pinned requirements and an editable install of the project itself.
#
# Idempotent: every step first checks whether it is already done, so a second
# run only inspects the state and finishes in seconds.
#
# Environment:
#   PYTHON   interpreter used to create .venv (default: python3); must be >= 3.11.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"
PYTHON="${PYTHON:-python3}"

# build-essential: C++ toolchain for the native runner and kernels.
# python3-venv/python3-dev: venv creation and headers for the system Python.
# bazel-bootstrap (+ its JDK): the offline Bazel 4 build; bazel-rules-java and
# bazel-rules-proto are the local copies of rules Bazel would otherwise download
# (see WORKSPACE); zip/unzip are used by Bazel for runfiles and test outputs;
# clang and libclang-rt-14-dev (libFuzzer, sanitizers) build the kernels' fuzz
# targets; g++-aarch64-linux-gnu and qemu-user-static build the native code for
# arm64 and run the kernel's test there (tests/test_arm64_build.py).
# libflatbuffers-dev and flatbuffers-compiler: the runtime verifies models with
# flatbuffers' Verifier over a reader flatc generates, and kernels read custom
# options with flexbuffers; libgtest-dev and googletest: the C++ tests.
# libc6-arm64-cross: the aarch64 glibc the arm64 bundle links with and carries
# (android_bench/arm64_bundle.py); proot: binds an aarch64 /proc/cpuinfo over
# the host's when the bundle runs under qemu (tests/test_arm64_bundle.py).
DEBIAN_PACKAGES=(
    build-essential
    python3-venv
    python3-dev
    adb
    bazel-bootstrap
    bazel-rules-java
    bazel-rules-proto
    default-jdk-headless
    zip
    unzip
    clang
    libclang-rt-14-dev
    g++-aarch64-linux-gnu
    qemu-user-static
    libflatbuffers-dev
    flatbuffers-compiler
    libgtest-dev
    googletest
    libc6-arm64-cross
    proot
)

log() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

install_debian_packages() {
    local missing=() pkg
    for pkg in "${DEBIAN_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "Debian packages: all present"
        return
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "missing Debian packages (${missing[*]}); run as root or install sudo"
        sudo=(sudo)
    fi
    log "Debian packages: installing ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# pip (with this machine's config) warns for every extra index location that has
# no entry for a package; those lines are noise, anything else is shown.
quiet_pip() {
    "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

ensure_venv() {
    if [ -x "$VENV/bin/python" ]; then
        log "virtualenv: $VENV present"
        return
    fi
    command -v "$PYTHON" >/dev/null || die "no '$PYTHON' on PATH"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is $("$PYTHON" --version 2>&1); edgepipe needs Python >= 3.11"
    log "virtualenv: creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
}

# Run "pip install ARGS" only when FILE's content differs from the last
# successful install recorded in STAMP (the stamp lives inside .venv, so a fresh
# venv always installs).
install_if_changed() {
    local what="$1" file="$2" stamp="$3"; shift 3
    local hash
    hash="$(sha256_of "$file")"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
        log "$what: up to date"
        return
    fi
    log "$what: installing"
    quiet_pip install "$@"
    printf '%s\n' "$hash" > "$stamp"
}

install_debian_packages
ensure_venv
install_if_changed "requirements" "$REPO_ROOT/requirements.txt" "$VENV/.requirements.sha256" \
    -r "$REPO_ROOT/requirements.txt"
install_if_changed "edgepipe (editable)" "$REPO_ROOT/pyproject.toml" "$VENV/.pyproject.sha256" \
    --no-deps -e "$REPO_ROOT"
# The native LiteRT runtime (for tflite/runtime/binding.py) and the benchmark
# runner, built with Bazel and copied to <repo>/.native/ where Python looks.
# Skipped when none of their sources (runtime, runner, kernels), the Bazel
# set-up or the wheel's libLiteRt.so changed since the last build.
NATIVE_DIR="$REPO_ROOT/.native"
NATIVE_TARGETS=(//tflite/runtime:libedgepipe_runtime.so //android_bench:litert_bench)
# The native sources and the Bazel set-up, the input of both native builds.
native_sources() {
    (cd "$REPO_ROOT" && cat WORKSPACE .bazelrc android_bench/BUILD android_bench/*.cc \
        android_bench/*.h tflite/runtime/BUILD tflite/runtime/*.cc tflite/runtime/*.h \
        tflite/runtime/*.fbs tflite/ops/BUILD tflite/ops/*.cc tflite/ops/*.h $(find third_party -type f))
}
build_native() {
    local stamp="$NATIVE_DIR/.sources.sha256" hash output missing=0
    hash="$({ native_sources; cat "$VENV"/lib/python3*/site-packages/ai_edge_litert/libLiteRt.so; } \
        2>/dev/null | sha256sum | cut -d' ' -f1)"
    for target in "${NATIVE_TARGETS[@]}"; do
        [ -f "$NATIVE_DIR/${target##*:}" ] || missing=1
    done
    if [ "$missing" -eq 0 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
        log "native runtime: up to date"
        return
    fi
    log "native runtime: building ${NATIVE_TARGETS[*]}"
    (cd "$REPO_ROOT" && bazel build -c opt --noshow_progress "${NATIVE_TARGETS[@]}" 2>&1 | tail -n 3) \
        || die "bazel build of the native runtime failed"
    mkdir -p "$NATIVE_DIR"
    local target built
    for target in "${NATIVE_TARGETS[@]}"; do
        output="${target##*:}"
        built="$REPO_ROOT/bazel-bin/$(echo "${target%%:*}" | sed 's#^//##')/$output"
        [ -f "$built" ] || die "bazel did not produce $built"
        # Copy to a temporary name, then rename: a half-copied library never loads.
        cp -f "$built" "$NATIVE_DIR/.$output.tmp"
        mv -f "$NATIVE_DIR/.$output.tmp" "$NATIVE_DIR/$output"
    done
    printf '%s\n' "$hash" > "$stamp"
}

# The arm64 bundle (android_bench/arm64_bundle.py, android_bench/RUNNER.md):
# litert_bench cross-built on LiteRT's aarch64 library, with the glibc it needs
# and a start script, in .native/bundles/arm64-v8a/. The library comes from the
# aarch64 ai-edge-litert wheel (published for manylinux_2_27 only), downloaded
# once, checked against this sha256 and kept in .native/cache/.
LITERT_ARM64_VERSION=2.3.0
LITERT_ARM64_WHEEL="ai_edge_litert-$LITERT_ARM64_VERSION-cp311-cp311-manylinux_2_27_aarch64.whl"
LITERT_ARM64_SHA256=853fc608f96da87bd5f3458465dfb9abbf18d5ae6b94eceacead407146f175ae
WHEEL_CACHE="$NATIVE_DIR/cache"
BUNDLE_DIR="$NATIVE_DIR/bundles/arm64-v8a"
# The Debian packages whose files end up in the bundle or build it.
CROSS_PACKAGES=(libc6-arm64-cross libstdc++6-arm64-cross libgcc-s1-arm64-cross g++-aarch64-linux-gnu)
fetch_arm64_litert() {
    local wheel="$WHEEL_CACHE/$LITERT_ARM64_WHEEL" download="$WHEEL_CACHE/download" got
    if [ -f "$wheel" ] && [ "$(sha256_of "$wheel")" = "$LITERT_ARM64_SHA256" ]; then
        log "arm64 LiteRT wheel: present"
        return
    fi
    log "arm64 LiteRT wheel: downloading $LITERT_ARM64_WHEEL"
    rm -rf "$download"
    mkdir -p "$download"
    quiet_pip download --no-deps --only-binary=:all: --platform manylinux_2_27_aarch64 \
        --python-version 3.11 --dest "$download" "ai-edge-litert==$LITERT_ARM64_VERSION" \
        || die "pip could not download the aarch64 ai-edge-litert $LITERT_ARM64_VERSION wheel"
    [ -f "$download/$LITERT_ARM64_WHEEL" ] || die "pip did not download $LITERT_ARM64_WHEEL"
    got="$(sha256_of "$download/$LITERT_ARM64_WHEEL")"
    [ "$got" = "$LITERT_ARM64_SHA256" ] \
        || die "$LITERT_ARM64_WHEEL has sha256 $got, scripts/setup.sh pins $LITERT_ARM64_SHA256"
    mv -f "$download/$LITERT_ARM64_WHEEL" "$wheel"
    rm -rf "$download"
}
# Skipped when the native sources, the bundle's build scripts, the wheel and
# the cross packages are those of the last build.
build_arm64_bundle() {
    local stamp="$NATIVE_DIR/bundles/.arm64-v8a.sha256" hash
    hash="$({ native_sources; cat "$REPO_ROOT"/android_bench/{native_build,arm64_bundle}.py; \
        echo "$LITERT_ARM64_SHA256"; dpkg-query -W "${CROSS_PACKAGES[@]}"; } | sha256sum | cut -d' ' -f1)"
    if [ -f "$BUNDLE_DIR/manifest.json" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
        log "arm64 bundle: up to date"
        return
    fi
    log "arm64 bundle: building $BUNDLE_DIR"
    (cd "$REPO_ROOT" && "$VENV/bin/python" -m android_bench.arm64_bundle \
        --wheel "$WHEEL_CACHE/$LITERT_ARM64_WHEEL" --out "$BUNDLE_DIR") \
        || die "building the arm64 bundle failed"
    printf '%s\n' "$hash" > "$stamp"
}

build_native
fetch_arm64_litert
build_arm64_bundle
log "done"

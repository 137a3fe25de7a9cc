"""The build's layering as DESIGN.md states it, asked of Bazel itself: the custom
ops never depend on the runtime, and every py_library's deps name the targets
that own the modules its sources import."""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("core", "models", "pipelines", "tflite", "android_bench")


def bazel_query(expression: str, output: str = "label") -> list[str]:
    result = subprocess.run(["bazel", "query", "--noshow_progress", f"--output={output}",
                             expression], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return [line for line in result.stdout.splitlines() if line.strip()]


def test_ops_never_reach_the_runtime():
    assert bazel_query("somepath(//tflite/ops/..., //tflite/runtime/...)") == []
    # The other direction exists (runtime -> registry -> kernels): the query works.
    assert bazel_query("somepath(//tflite/runtime:runtime, //tflite/ops:sparse_gru_kernel)")
    # Kernels are plain C++: no LiteRT library below the interface.
    assert bazel_query("somepath(//tflite/ops:sparse_gru_kernel, @litert_wheel//:litert)") == []


def module_file(module: str) -> Path | None:
    """The project file a dotted module name imports, if it is ours."""
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in PROJECT_PACKAGES}


@pytest.fixture(scope="module")
def py_libraries() -> dict[str, tuple[set[Path], set[str]]]:
    """label -> (source files, direct deps) of every project py_library."""
    libraries = {}
    for label in bazel_query("kind(py_library, //...)"):
        sources = {REPO / src.lstrip("/").replace(":", "/")
                   for src in bazel_query(f"labels(srcs, {label})")}
        deps = set(bazel_query(f"labels(deps, {label})"))
        libraries[label] = (sources, deps)
    return libraries


def test_py_library_deps_match_imports(py_libraries):
    owner = {path: label for label, (sources, _) in py_libraries.items() for path in sources}
    missing = []
    for label, (sources, deps) in py_libraries.items():
        for source in sorted(sources):
            for module in sorted(imported_modules(source)):
                path = module_file(module)
                target = owner.get(path) if path else None
                if target and target != label and target not in deps:
                    missing.append(f"{label}: {source.relative_to(REPO)} imports {module} "
                                   f"from {target}, not in its deps")
    assert not missing, "\n".join(missing)
    assert len(owner) > 20  # the query found the project's sources

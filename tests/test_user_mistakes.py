"""Mistakes a user makes with `edgepipe run`, each one message and exit 1, never a
traceback: broken builders, unreadable data, out-of-range settings, bad --set values,
an interrupted run and a full disk (issue 11, class 5)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures.cli import assert_user_error, edgepipe

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "tests" / "data" / "tiny.yaml")


def run_cnn(tmp_path: Path, *sets: str):
    """The tiny config's CNN alone, untrained (mistakes are found before training)."""
    args = ["run", "--config", TINY, "--models", "cnn", "--output_dir", str(tmp_path / "out"),
            "--set", "models.cnn.train.epochs=0"]
    for assignment in sets:
        args += ["--set", assignment]
    return edgepipe(*args)


def builder_module(tmp_path: Path, monkeypatch, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{name}:build"


def test_a_builder_that_raises_is_named_with_its_line(tmp_path, monkeypatch):
    ref = builder_module(tmp_path, monkeypatch, "raising_builder", """\
        def build(input_shape, num_classes):
            raise RuntimeError("no weights file for this size")
        """)
    assert_user_error(run_cnn(tmp_path, f"models.cnn.builder={ref}", "models.cnn.options={}"),
                      f"Model builder '{ref}' failed while building the model: RuntimeError: no "
                      f"weights file for this size (at {tmp_path / 'raising_builder.py'}:2)")


def test_a_builder_with_a_syntax_error_is_named_with_its_line(tmp_path, monkeypatch):
    ref = builder_module(tmp_path, monkeypatch, "broken_builder", """\
        def build(input_shape, num_classes:
            pass
        """)
    assert_user_error(run_cnn(tmp_path, f"models.cnn.builder={ref}", "models.cnn.options={}"),
                      f"failed while importing 'broken_builder': SyntaxError")


def npz(tmp_path: Path, name: str, **arrays) -> str:
    path = tmp_path / f"{name}.npz"
    np.savez(path, **arrays)
    return str(path)


X = np.zeros((40, 32, 32, 1), np.float32)


@pytest.mark.parametrize("make, message", [
    (lambda p: (p / "text.npz").write_text("x,y\n1,2\n") and str(p / "text.npz"),
     "is not a .npz archive (a .npz is a zip of .npy arrays)"),
    (lambda p: npz(p, "objects", x=np.array([[1], [2, 3]], dtype=object), y=np.arange(2)),
     "is not a .npz of plain numeric arrays (Object arrays cannot be loaded"),
    (lambda p: npz(p, "onehot", x=X, y=np.eye(4)[np.arange(40) % 4]),
     "data: y has shape (40, 4); labels must be one class index per example, a 1-D array "
     "(one-hot labels? store y.argmax(axis=1))"),
    (lambda p: npz(p, "nan_label", x=X, y=np.r_[np.arange(39) % 4, np.nan]),
     "data: y[39] is nan; clean the data or drop that sample."),
])
def test_unreadable_data_files(tmp_path, make, message):
    assert_user_error(run_cnn(tmp_path, f"models.cnn.data.source={make(tmp_path)}"), message)


def test_a_decompression_bomb_image_is_refused(tmp_path):
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "images" / label / "small.png")
    # 14000 x 14000 is over PIL's hard limit (2x MAX_IMAGE_PIXELS): DecompressionBombError.
    Image.new("1", (14000, 14000)).save(tmp_path / "images" / "b" / "huge.png")
    assert_user_error(run_cnn(tmp_path, f"models.cnn.data.source={tmp_path / 'images'}"),
                      f"image '{tmp_path / 'images' / 'b' / 'huge.png'}' is too large to decode "
                      "safely")


@pytest.mark.parametrize("assignment, message", [
    ("models.cnn.pruning.initial_sparsity=2",
     "models.cnn.pruning.initial_sparsity: input should be less than 1 (got 2)."),
    ("models.cnn.pruning.layers=['conv_pw_(']",
     "models.cnn.pruning.layers: 'conv_pw_(' (item 0) is not a valid regular expression"),
    ("models.cnn.data.resolution=0",
     "models.cnn.data.resolution: input should be greater than or equal to 1 (got 0)."),
    ("models.cnn.options={alpha: [0.5",
     "the value '{alpha: [0.5' is not valid YAML"),
    ("models.cnn.name=../../escape", "model name '../../escape' is not a plain identifier"),
])
def test_bad_settings(tmp_path, assignment, message):
    assert_user_error(run_cnn(tmp_path, assignment), message)
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "escape").exists()


def test_ctrl_c_says_how_to_resume(tmp_path):
    """A real SIGINT while the CNN trains: one line, status 130, no traceback, and no
    temporary file left in the run folder. Python's own handler is put in place first:
    a test process started in the background by a non-interactive shell ignores SIGINT."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(8.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        result = edgepipe("run", "--config", TINY, "--models", "cnn", "--output_dir",
                          str(tmp_path / "out"), "--set", "models.cnn.train.epochs=200")
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert result.returncode == 130, result.stderr[-2000:]
    assert "edgepipe run: interrupted; rerun the same command to resume." in result.stderr
    assert "Traceback" not in result.stderr
    assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp" in p.name]


def test_a_full_disk_names_the_file_and_the_space_left(tmp_path):
    """The run folder on a 256 KiB tmpfs (a private mount namespace, so nothing leaks
    out of the test): the first model saved does not fit. Only the float phase is
    configured, so no other phase's preflight runs before it."""
    out = tmp_path / "small_disk"
    out.mkdir()
    script = (f"mount -t tmpfs -o size=256k tmpfs {out} && exec {sys.executable} -m "
              f"pipelines.cli run --config {TINY} --models cnn --output_dir {out / 'run'} "
              "--set models.cnn.train.epochs=0 --set models.cnn.variants=[float32] "
              "--set models.cnn.pruning.enabled=false --set models.cnn.qat.enabled=false")
    result = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", script],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert (f"no space left on the device (No space left on device) writing "
            f"'{out / 'run' / 'cnn' / 'keras' / 'float.keras'}'") in result.stderr
    assert "free on that file system" in result.stderr

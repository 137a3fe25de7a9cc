"""One run at a time per run folder (issue 11, class 6): a second run into a folder in
use is refused before it writes anything, naming the process that holds it; the lock
dies with its holder."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import UserError
from core.folder_lock import LOCK_NAME, locked_folder
from fixtures.cli import assert_user_error, edgepipe

REPO = Path(__file__).resolve().parent.parent
HOLD = """
import sys, time
from core.folder_lock import locked_folder
with locked_folder(sys.argv[1], "output_dir"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding tmp_path/out, as a running `edgepipe run` does."""
    out = tmp_path / "out"
    out.mkdir()
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=REPO,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    yield out, process
    process.kill()
    process.wait()


def test_a_second_run_names_the_holder_and_writes_nothing(holder):
    out, process = holder
    result = edgepipe("run", "--config", str(REPO / "tests" / "data" / "tiny.yaml"),
                      "--output_dir", str(out))
    assert_user_error(result, f"output_dir '{out}' is in use by another edgepipe run (process "
                              f"{process.pid} on ")
    assert "wait for it to finish, stop it, or choose another output_dir" in result.stderr
    assert [p.name for p in out.iterdir()] == [LOCK_NAME]


def test_the_lock_dies_with_its_holder(holder):
    out, process = holder
    with pytest.raises(UserError, match="in use by another edgepipe run"):
        with locked_folder(out, "output_dir"):
            pass
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    with locked_folder(out, "output_dir"):
        assert f'"pid": {os.getpid()}' in (out / LOCK_NAME).read_text()

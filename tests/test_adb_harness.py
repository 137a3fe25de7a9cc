"""The ADB harness end to end: real adb server, emulated devices, a real compiled runner."""
import json
import logging
import os
import subprocess
from pathlib import Path

import adbutils
import pytest

from android_bench.adb_harness import (DeviceSession, RunSettings, Timeouts, benchmark_on_devices,
                                       discover, host_tag, work_folder_name)
from core.errors import UserError
from fixtures.adb_device import DeviceProfile, adb_device, adb_server, make_device  # noqa: F401

# A stand-in for //android_bench:litert_bench with the same flags: it really runs on
# the device, opens the pushed model, looks for the pushed library and writes JSON.
RUNNER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
  const char *graph = "", *out = NULL; int threads = 0, fail = 0, no_json = 0, not_utf8 = 0;
  for (int i = 1; i < argc; i++) {
    if (!strncmp(argv[i], "--graph=", 8)) graph = argv[i] + 8;
    else if (!strncmp(argv[i], "--json_output=", 14)) out = argv[i] + 14;
    else if (!strncmp(argv[i], "--num_threads=", 14)) threads = atoi(argv[i] + 14);
    else if (!strncmp(argv[i], "--fail_with=", 12)) fail = atoi(argv[i] + 12);
    else if (!strcmp(argv[i], "--no_json")) no_json = 1;
    else if (!strcmp(argv[i], "--not_utf8")) not_utf8 = 1;
  }
  if (fail) {
    fprintf(stderr, "loading model%s\nfatal: asked to fail\n", not_utf8 ? " \xff\xfe" : "");
    return fail;
  }
  if (no_json) return 0;
  FILE *g = fopen(graph, "rb");
  if (!g) { fprintf(stderr, "cannot open %s\n", graph); return 1; }
  fseek(g, 0, SEEK_END); long size = ftell(g); fclose(g);
  char lib[4096]; snprintf(lib, sizeof lib, "%s/libLiteRt.so", getenv("LD_LIBRARY_PATH"));
  FILE *f = fopen(out, "w");
  if (!f) return 1;
  fprintf(f, "{\"num_threads\": %d, \"model_size_bytes\": %ld, \"library_found\": %s%s}\n",
          threads, size, access(lib, R_OK) == 0 ? "true" : "false",
          not_utf8 ? ", \"note\": \"\xff\"" : "");
  return fclose(f) != 0;
}
"""
FAST = Timeouts(command=30, transfer=30, run=60, reconnect=20)
# For devices that stay away: each reconnect attempt gives up after a second.
SHORT = Timeouts(command=5, transfer=5, run=10, reconnect=1)
HOUR = 3600


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runner")
    (folder / "runner.c").write_text(RUNNER_C)
    subprocess.run(["gcc", "-O1", "-o", str(folder / "litert_bench"), str(folder / "runner.c")],
                   check=True)
    return folder / "litert_bench"


@pytest.fixture
def files(tmp_path, runner):
    """The runner, a library and a model whose name would be a shell injection if unquoted."""
    (tmp_path / "libLiteRt.so").write_bytes(b"\x7fELF not really")
    model = tmp_path / "a b;rm -rf x.tflite"
    model.write_bytes(bytes(range(256)) * 400)
    return {"model": model, "runner": runner, "libraries": [tmp_path / "libLiteRt.so"],
            "results_path": tmp_path / "results.jsonl"}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_devices_measured_tagged_saved_and_cleaned(adb_server, make_device, files):
    first, second = make_device(), make_device(DeviceProfile(model="Second Phone", soc="SM8650"))
    for device in (first, second):
        adb_server.connect(device)
        (device.tmp / "x.tflite").write_text("must survive")
    results = benchmark_on_devices(**files, targets="all", threads=(1, 2),
                                   settings=RunSettings(num_runs=5, affinity="1"), timeouts=FAST)
    assert sorted((r["target"], r["threads"]) for r in results) == sorted(
        (d.serial, t) for d in (first, second) for t in (1, 2))
    for record in results:
        assert record["runner"] == {"num_threads": record["threads"], "model_size_bytes": 102400,
                                    "library_found": True}
        assert record["device"]["serial"] == record["target"]
    info = next(r["device"] for r in results if r["target"] == second.serial)
    assert (info["model"], info["abi"], info["android"], info["soc"]) == (
        "Second Phone", "x86_64", "14", "SM8650")
    assert [c["max_khz"] for c in info["cpus"]] == [2_400_000, 2_400_000]
    assert info["thermal"][0] == {"zone": 0, "type": "cpu-thermal", "temp_c": 41.5}
    assert len(lines(files["results_path"])) == 4
    for device in (first, second):  # pushed files removed; the quoted name harmed nothing
        assert [p.name for p in device.tmp.iterdir()] == ["x.tflite"]


def test_finished_measurements_are_not_repeated(adb_server, adb_device, files):
    first = benchmark_on_devices(**files, threads=(1,), timeouts=FAST)
    adb_device.faults.fail_on = "--num_threads"  # any new run would now fail
    again = benchmark_on_devices(**files, threads=(1,), timeouts=FAST)
    assert again == first and len(lines(files["results_path"])) == 1


def test_drop_mid_run_reconnects_and_resumes(adb_server, adb_device, files):
    adb_device.faults.drop_on_run = "--num_threads=2"
    results = benchmark_on_devices(**files, threads=(1, 2, 4), timeouts=FAST)
    assert [r["threads"] for r in results] == [1, 2, 4]
    assert [r["threads"] for r in lines(files["results_path"])] == [1, 2, 4]  # 1 not redone
    assert adb_device.faults.drops == 0


def test_drop_mid_push_reconnects_and_pushes_again(adb_server, adb_device, files):
    adb_device.faults.drop_push_after = 50_000
    results = benchmark_on_devices(**files, threads=(1,), timeouts=FAST)
    assert results[0]["runner"]["model_size_bytes"] == 102400
    assert adb_device.faults.drops == 0


def test_device_gone_names_finished_work(adb_server, adb_device, files):
    adb_device.faults.drop_on_run = "--num_threads=2"
    adb_device.faults.drops = 10
    with pytest.raises(UserError) as error:
        benchmark_on_devices(**files, threads=(1, 2), timeouts=FAST, retries=1)
    message = str(error.value)
    assert "disconnected while measuring threads=2" in message
    assert "finished on it: threads 1" in message and str(files["results_path"]) in message
    assert [r["threads"] for r in lines(files["results_path"])] == [1]


def test_out_of_space_is_one_clear_message(adb_server, adb_device, files):
    adb_device.faults.space_left = 60_000
    with pytest.raises(UserError, match="out of space: pushing a b;rm -rf x.tflite"):
        benchmark_on_devices(**files, timeouts=FAST)
    assert list(adb_device.tmp.iterdir()) == []


def test_runner_failure_shows_stderr_tail(adb_server, adb_device, files):
    with pytest.raises(UserError, match=r"exit status 3\)[\s\S]*fatal: asked to fail"):
        benchmark_on_devices(**files, settings=RunSettings(extra_args=("--fail_with=3",)),
                             timeouts=FAST)
    assert list(adb_device.tmp.iterdir()) == []


def test_runner_output_that_is_not_utf8_is_read_with_replacements(adb_server, adb_device, files):
    (record,) = benchmark_on_devices(**files, settings=RunSettings(extra_args=("--not_utf8",)),
                                     timeouts=FAST)
    assert record["runner"]["note"] == "\ufffd"
    with pytest.raises(UserError, match="loading model \ufffd\ufffd\nfatal: asked to fail"):
        benchmark_on_devices(**files, timeouts=FAST,
                             settings=RunSettings(extra_args=("--not_utf8", "--fail_with=3")))


def test_runner_without_json(adb_server, adb_device, files):
    with pytest.raises(UserError, match="wrote no JSON"):
        benchmark_on_devices(**files, settings=RunSettings(extra_args=("--no_json",)),
                             timeouts=FAST)


def test_device_command_failure(adb_server, adb_device, files):
    adb_device.faults.fail_on = "--num_threads"
    with pytest.raises(UserError, match="emulated failure"):
        benchmark_on_devices(**files, timeouts=FAST)


def test_hung_runner_times_out(adb_server, adb_device, files):
    adb_device.faults.hang_on = "--num_threads"
    timeouts = Timeouts(command=30, transfer=30, run=3, reconnect=20)
    with pytest.raises(UserError, match=r"litert_bench --num_threads=1 on .* within 3 s"):
        benchmark_on_devices(**files, timeouts=timeouts)


def test_slow_device_still_measures(adb_server, adb_device, files):
    adb_device.faults.delay = 0.005
    assert len(benchmark_on_devices(**files, timeouts=FAST)) == 1


def test_discovery_messages(adb_server, make_device):
    with pytest.raises(UserError, match="no Android device connected"):
        discover("all")
    locked = make_device()
    locked.faults.unauthorized = True
    adb_server.adb("connect", locked.serial)
    adb_server.connect(locked, state="unauthorized")
    with pytest.raises(UserError, match="unauthorized: .*accept the 'Allow USB debugging"):
        discover("all")
    gone = make_device()
    adb_server.connect(gone)
    gone.stop()
    adb_server.connect(gone, state="offline")
    with pytest.raises(UserError, match=f"device {gone.serial} is offline"):
        discover([gone.serial], timeouts=SHORT, retries=1)
    with pytest.raises(UserError, match="cannot connect to device 127.0.0.1:1: adb says 'fail"):
        discover(["127.0.0.1:1"], timeouts=SHORT, retries=1)
    fresh = make_device()  # a network serial that is not connected yet is connected
    assert discover([fresh.serial]) == [fresh.serial]


NATIVE_RUNNER = Path(__file__).resolve().parents[1] / ".native" / "litert_bench"


@pytest.mark.skipif(not NATIVE_RUNNER.is_file(), reason="scripts/setup.sh builds .native/litert_bench")
def test_real_runner_on_emulated_device(adb_server, adb_device, tmp_path, tiny_tflite_bytes):
    import ai_edge_litert

    model = tmp_path / "tiny model.tflite"
    model.write_bytes(tiny_tflite_bytes)
    settings = RunSettings(warmup_runs=1, warmup_min_secs=0, num_runs=5, min_secs=0,
                           extra_args=("--max_secs=30",))
    results = benchmark_on_devices(
        model, NATIVE_RUNNER, libraries=[Path(ai_edge_litert.__file__).parent / "libLiteRt.so"],
        results_path=tmp_path / "results.jsonl", threads=(1, 2), settings=settings, timeouts=FAST)
    assert [r["threads"] for r in results] == [1, 2]
    for record in results:
        report = record["runner"]
        assert report["schema_version"] == 1 and report["settings"]["num_threads"] == record["threads"]
        assert report["steady_state"]["count"] >= 5 and report["model"]["size_bytes"] == model.stat().st_size
    assert list(adb_device.tmp.iterdir()) == []


def plant_folder(device, name: str, age_s: float) -> str:
    """A work folder as an earlier session leaves it: runner, library, model, a result."""
    device.plant(f"/data/local/tmp/{name}", {"bin/litert_bench": b"r" * 3000,
                                             "bin/libLiteRt.so": b"l" * 7700,
                                             "model/m.tflite": b"m" * 2000,
                                             "results/result-1.json": b"{}"}, age_s)
    return name


def test_stale_work_folders_are_removed_at_the_start_live_ones_kept(adb_server, adb_device,
                                                                    files, caplog):
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])  # another process here, its session running
    try:
        stale = [plant_folder(adb_device, work_folder_name(host_tag(), dead.pid), 0),
                 plant_folder(adb_device, "edgepipe-0123456789ab", 7 * HOUR),  # older harness
                 plant_folder(adb_device, work_folder_name("other-host", 77), 7 * HOUR)]
        kept = [plant_folder(adb_device, work_folder_name(host_tag(), alive.pid), 0),
                plant_folder(adb_device, work_folder_name(host_tag(), os.getpid()), HOUR),
                plant_folder(adb_device, work_folder_name("other-host", 78), HOUR),
                plant_folder(adb_device, "edgepipe-0123456789ac", HOUR),
                plant_folder(adb_device, "edgepipe-my notes", 100 * HOUR)]  # not the harness's
        writing = plant_folder(adb_device, work_folder_name("other-host", 79), 7 * HOUR)
        (adb_device.tmp / writing / "results/result-1.json").touch()  # still measuring
        adb_device.plant("/data/local/tmp/edgepipe-0123456789ad", b"a file", 100 * HOUR)
        with caplog.at_level(logging.INFO):
            assert len(benchmark_on_devices(**files, threads=(1,), timeouts=FAST)) == 1
    finally:
        alive.kill()
        alive.wait()
    assert sorted(p.name for p in adb_device.tmp.iterdir()) == sorted(
        [*kept, writing, "edgepipe-0123456789ad"])
    (line,) = [r.getMessage() for r in caplog.records if "stale work folder" in r.getMessage()]
    assert f"{adb_device.serial}: removed 3 stale work folder(s) of earlier sessions" in line
    assert all(name in line for name in stale) and " MB)" in line


def test_work_folder_blocked_by_a_file_fails_at_once_naming_the_cause(adb_server, adb_device,
                                                                      files):
    session = DeviceSession(adbutils.AdbClient(), adb_device.serial, FAST)
    adb_device.plant(session.run_dir, b"a file where the work folder goes")
    with pytest.raises(UserError, match=(
            f"device {adb_device.serial}: creating the work folder {session.run_dir} failed "
            r"\(exit status 1\): mkdir: .*(File exists|Not a directory); remove what is")):
        session.push_missing([(files["model"], "model/m.tflite")])


def test_work_folder_refused_is_one_clear_message(adb_server, adb_device, files):
    adb_device.faults.fail_on = "mkdir -p"
    with pytest.raises(UserError, match=(f"device {adb_device.serial}: creating the work folder "
                                         r"\S+ failed \(exit status 1\): emulated failure")):
        benchmark_on_devices(**files, timeouts=FAST)


def test_work_folder_not_removed_warns_with_the_reason(adb_server, adb_device, files, caplog):
    adb_device.faults.fail_on = "rm -rf /data/local/tmp/edgepipe-"
    with caplog.at_level(logging.WARNING):
        assert len(benchmark_on_devices(**files, timeouts=FAST)) == 1
    assert f"{adb_device.serial}: removing the work folder " in caplog.text
    assert "failed (exit status 1): emulated failure" in caplog.text
    (left,) = adb_device.tmp.iterdir()  # the next session's start removes it
    assert sorted(p.name for p in left.iterdir()) == ["bin", "model", "results"]


@pytest.mark.parametrize("name", ["result-1.json", "result-2.json", "litert_bench",
                                  "libLiteRt.so", "it's \"a\" $(model) `x`;\n.tflite"])
def test_model_name_never_clashes_with_the_harness_files(adb_server, adb_device, files, name):
    model = files["model"].rename(files["model"].with_name(name))
    results = benchmark_on_devices(**{**files, "model": model}, threads=(1, 2), timeouts=FAST)
    assert [(r["threads"], r["runner"]["model_size_bytes"]) for r in results] == [
        (1, 102400), (2, 102400)]
    assert list(adb_device.tmp.iterdir()) == []


@pytest.mark.parametrize("connected", [True, False], ids=["offline", "not-connected"])
def test_network_device_down_at_the_start_is_reconnected(adb_server, make_device, files,
                                                         connected, caplog):
    device = make_device()
    if connected:
        adb_server.connect(device)
    device.reboot(2.0)
    if connected:
        adb_server.wait_for(device, "offline")
    timeouts = Timeouts(command=10, transfer=10, run=10, reconnect=1.5)
    with caplog.at_level(logging.WARNING):
        results = benchmark_on_devices(**files, targets=[device.serial], timeouts=timeouts,
                                       retries=4)
    assert [r["target"] for r in results] == [device.serial]
    assert f"{device.serial}: {'offline' if connected else 'not answering'} at the start; " \
           "reconnecting (1/4)" in caplog.text

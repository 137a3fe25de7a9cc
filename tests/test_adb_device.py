"""The emulated device against the real Debian `adb` client and adbutils."""
import os
import re
import subprocess
import time

import adbutils
import pytest

from fixtures.adb_device import DeviceProfile, adb_device, adb_server, make_device  # noqa: F401


def test_shell_exit_codes_and_streams(adb_server, adb_device):
    result = adb_server.adb("-s", adb_device.serial, "shell", "echo out; echo err >&2; exit 3",
                            check=False)
    assert result.returncode == 3  # shell_v2 brings the exit status back
    assert result.stdout == "out\n" and result.stderr == "err\n"
    model = adb_server.adb("-s", adb_device.serial, "shell", "getprop ro.product.model").stdout
    assert model.strip() == "Emulated Pixel"


def test_push_pull_stat_round_trip(adb_server, adb_device, tmp_path):
    data = os.urandom(3_000_000)
    (tmp_path / "big.bin").write_bytes(data)
    adb_server.adb("-s", adb_device.serial, "push", str(tmp_path / "big.bin"),
                   "/data/local/tmp/new/folder/big.bin")  # the device creates parent folders
    adb_server.adb("-s", adb_device.serial, "pull", "/data/local/tmp/new/folder/big.bin",
                   str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == data
    device = adbutils.AdbClient().device(adb_device.serial)
    info = device.sync.stat("/data/local/tmp/new/folder/big.bin")
    assert info.size == len(data)
    assert device.sync.stat("/data/local/tmp/missing").mode == 0
    assert [f.path for f in device.sync.list("/data/local/tmp/new/folder")][-1] == "big.bin"
    assert device.sync.read_bytes("/data/local/tmp/new/folder/big.bin") == data


def test_push_under_a_file_fails_at_once_with_the_reason(adb_server, adb_device, tmp_path):
    adb_device.plant("/data/local/tmp/taken", b"a file where a folder goes")
    (tmp_path / "f.bin").write_bytes(os.urandom(200_000))
    result = adb_server.adb("-s", adb_device.serial, "push", str(tmp_path / "f.bin"),
                            "/data/local/tmp/taken/f.bin", check=False, timeout=10)
    assert result.returncode != 0
    assert re.search("File exists|Not a directory", result.stdout + result.stderr)


def test_planted_folder_has_its_age(adb_device):
    folder = adb_device.plant("/data/local/tmp/old", {"a/b.bin": b"x", "c.txt": b"y"}, age_s=7200)
    assert (folder / "a/b.bin").read_bytes() == b"x"
    ages = [time.time() - p.stat().st_mtime for p in [folder, *folder.rglob("*")]]
    assert len(ages) == 4 and all(7190 < age < 7210 for age in ages)


def test_fault_reboot_refuses_then_answers_on_the_same_port(adb_server, adb_device):
    adb_device.reboot(1.5)
    adb_server.wait_for(adb_device, "offline")
    adb_server.adb("disconnect", adb_device.serial)
    assert "failed to connect" in adb_server.adb("connect", adb_device.serial).stdout
    time.sleep(2)
    adb_server.connect(adb_device)
    assert adb_server.adb("-s", adb_device.serial, "shell", "echo back").stdout == "back\n"


def test_two_devices_at_once(adb_server, make_device):
    first, second = make_device(), make_device(DeviceProfile(model="Second Phone", abi="arm64-v8a"))
    adb_server.connect(first)
    adb_server.connect(second)
    listing = adb_server.adb("devices", "-l").stdout
    assert "model:Emulated_Pixel" in listing and "model:Second_Phone" in listing
    client = adbutils.AdbClient()
    assert client.device(second.serial).shell("getprop ro.product.cpu.abi") == "arm64-v8a"
    assert client.device(first.serial).shell("getprop ro.product.cpu.abi") == "x86_64"


def test_adb_facts_the_harness_relies_on(adb_server, adb_device, make_device, tmp_path):
    client = adbutils.AdbClient()
    # `adb connect` and adbutils report a failed connection in text, with exit status 0.
    result = adb_server.adb("connect", "127.0.0.1:1")
    assert result.returncode == 0 and "failed to connect" in result.stdout
    assert "failed to connect" in client.connect("127.0.0.1:1", timeout=10)
    # adbutils' pull of a missing file makes an empty folder and reports success.
    assert client.device(adb_device.serial).sync.pull("/data/local/tmp/nope", tmp_path / "x") == 0
    assert (tmp_path / "x").is_dir()
    # device_list() hides an unauthorized device; list() shows it.
    locked = make_device()
    locked.faults.unauthorized = True
    adb_server.adb("connect", locked.serial)
    adb_server.connect(locked, state="unauthorized")
    assert locked.serial not in [d.serial for d in client.device_list()]
    assert {i.serial: i.state for i in client.list()}[locked.serial] == "unauthorized"


def test_fault_slow_answers_still_work(adb_server, adb_device):
    adb_device.faults.delay = 0.02
    assert adb_server.adb("-s", adb_device.serial, "shell", "echo slow").stdout == "slow\n"


def test_fault_out_of_space(adb_server, adb_device, tmp_path):
    adb_device.faults.space_left = 100_000
    (tmp_path / "f.bin").write_bytes(os.urandom(300_000))
    result = adb_server.adb("-s", adb_device.serial, "push", str(tmp_path / "f.bin"),
                            "/data/local/tmp/f.bin", check=False)
    assert result.returncode != 0 and "No space left on device" in result.stdout + result.stderr
    assert not (adb_device.tmp / "f.bin").exists()


def test_fault_drop_mid_push_then_reconnect(adb_server, adb_device, tmp_path):
    adb_device.faults.drop_push_after = 200_000
    (tmp_path / "f.bin").write_bytes(os.urandom(1_000_000))
    result = adb_server.adb("-s", adb_device.serial, "push", str(tmp_path / "f.bin"),
                            "/data/local/tmp/f.bin", check=False)
    assert result.returncode != 0
    adb_server.adb("disconnect", adb_device.serial, check=False)
    adb_server.connect(adb_device)  # the fault fired once; the device is back
    adb_server.adb("-s", adb_device.serial, "push", str(tmp_path / "f.bin"), "/data/local/tmp/f.bin")
    assert (adb_device.tmp / "f.bin").stat().st_size == 1_000_000


def test_fault_drop_mid_run(adb_server, adb_device):
    adb_device.faults.drop_on_run = "sleep 30"
    adb_device.faults.drops = 2
    # adb 29 exits 0 when the stream ends without an exit packet: only the output shows it.
    result = adb_server.adb("-s", adb_device.serial, "shell", "sleep 30; echo never", check=False,
                            timeout=25)
    assert "never" not in result.stdout
    adb_server.adb("disconnect", adb_device.serial, check=False)
    adb_server.connect(adb_device)
    with pytest.raises((EOFError, adbutils.AdbError)):  # adbutils does see the missing exit packet
        adbutils.AdbClient().device(adb_device.serial).shell2("sleep 30", timeout=25, v2=True)


def test_fault_command_fails(adb_server, adb_device):
    adb_device.faults.fail_on = "true"
    adb_device.faults.fail_code = 42
    result = adb_server.adb("-s", adb_device.serial, "shell", "true", check=False)
    assert result.returncode == 42 and "emulated failure" in result.stderr


def test_fault_hang(adb_server, adb_device):
    adb_device.faults.hang_on = "echo"
    with pytest.raises(subprocess.TimeoutExpired):
        adb_server.adb("-s", adb_device.serial, "shell", "echo hi", timeout=3)
    with pytest.raises(adbutils.AdbTimeout):
        adbutils.AdbClient().device(adb_device.serial).shell2("echo hi", timeout=2, v2=True)


def test_fault_unauthorized(adb_server, make_device):
    device = make_device()
    device.faults.unauthorized = True
    assert "failed to authenticate" in adb_server.adb("connect", device.serial).stdout
    adb_server.connect(device, state="unauthorized")
    result = adb_server.adb("-s", device.serial, "shell", "true", check=False)
    assert result.returncode != 0 and "unauthorized" in result.stderr

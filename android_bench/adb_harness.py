"""Run the native benchmark runner on Android devices over ADB.

Built on adbutils over the platform `adb` server. For each device: read what it
is (model, ABI, Android version, SoC, core frequencies, thermal zones), remove
the work folders that earlier sessions left behind, push the runner built for its
ABI (an arm64-v8a device gets the arm64 bundle, checked against its manifest; an
x86_64 one, an emulator, the host build) and the model into a fresh work folder
under /data/local/tmp, run once per thread count, pull the runner's JSON and the
outputs of its last inference and remove the folder again. Devices run in
parallel, one thread each. A short command whose failure matters (mkdir, rm)
has its exit status checked, so its cause is reported, not a later step's.

Every finished measurement is appended to a JSON Lines file and fsync'd before
the next one starts (appending, not core.atomic's whole-file rename, so a
crash or a pulled cable loses at most the measurement in flight); a later call
with the same file skips what is already there. A device that disconnects is
reconnected and resumes with the measurement that was interrupted; a network
device that is offline or not connected at the start is reconnected the same way.

Transfers use adbutils' connection to the server with our own sync framing,
because adbutils' Sync has no timeout (a device that stops acknowledging blocks
a push forever), drops the device's FAIL reason ("No space left on device"), and
its pull of a missing file makes an empty folder and reports success.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import socket
import stat
import struct
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import adbutils
from absl import logging
from adbutils.errors import AdbError, AdbTimeout

from android_bench import arm64_bundle, benchmark_model_output
from android_bench.native_build import EM_AARCH64, EM_X86_64, elf_machine
from android_bench.runner import (RUNNER_TOOL, ResultStore, RunSettings, crash_message,
                                  measurement_base, measurement_identity, outputs_digest,
                                  peer_command, runner_build, runner_command, sha256_file)
from core.errors import UserError
from tflite.inspect import inspect_model

DEVICE_TMP = "/data/local/tmp"
WORK_PREFIX = "edgepipe-"
# Inside a work folder: the runner with its libraries (its rpath is $ORIGIN), the model
# alone in its own folder and the runner's JSON in a third, so that no model name can
# clash with the runner, a library or an output.
BIN_DIR, MODEL_DIR, RESULTS_DIR = "bin", "model", "results"
PEER_DIR = "peer"  # the user's official benchmark_model, apart from our runner's files
# A work folder in which nothing changed for this long belongs to no live session
# (a session writes into it at least once per measurement); see _is_stale.
STALE_AFTER_S = 6 * 3600
SYNC_DATA_MAX = 64 * 1024  # the sync protocol's largest DATA chunk
STDERR_TAIL_LINES = 20
# A shell reports a command killed by signal N as exit status 128 + N (adbd does too).
SIGNAL_EXIT_BASE = 128
# ELF e_machine -> the Android ABI (ro.product.cpu.abi) that runs such a program.
ELF_ABIS = {EM_X86_64: "x86_64", EM_AARCH64: arm64_bundle.ABI}
HOST_ABI = "x86_64"  # what a runner that is not an ELF program (a script) is taken for


@dataclass(frozen=True)
class Timeouts:
    """Seconds without an answer before a step counts as hung."""

    command: float = 60.0     # short shell commands: info, mkdir, rm
    transfer: float = 120.0   # one push or pull
    run: float = 900.0        # one runner invocation
    reconnect: float = 30.0   # waiting for a disconnected device to come back


class _Disconnected(Exception):
    """The device or its connection went away during a step (may be transient)."""


class _TimedOut(Exception):
    def __init__(self, what: str, seconds: float):
        super().__init__(what)
        self.what, self.seconds = what, seconds


def _state_message(serial: str, state: str) -> str:
    if state == "unauthorized":
        return (f"device {serial} is unauthorized: unlock it and accept the 'Allow USB debugging?' "
                "RSA key prompt on its screen, then run again (no prompt: re-plug it, or revoke USB "
                "debugging authorizations in Developer options and re-plug)")
    if state == "offline":
        return (f"device {serial} is offline: re-plug the cable (or `adb connect {serial}` for a "
                "network device) until `adb devices` lists it as 'device'")
    return f"device {serial} is in state '{state}', not 'device': boot it to Android and run again"


def _client() -> adbutils.AdbClient:
    return adbutils.AdbClient()  # host/port from ANDROID_ADB_SERVER_HOST/_PORT, as `adb` uses


def _states(client: adbutils.AdbClient) -> dict[str, str]:
    """Every device the server knows, in any state (device_list() hides all but 'device')."""
    try:
        return {info.serial: info.state for info in client.list(extended=True)}
    except AdbError as error:
        raise UserError(f"cannot reach the adb server ({error}): install adb (scripts/setup.sh "
                        "does) and check `adb devices` works") from None


def _is_network_serial(serial: str) -> bool:
    host, _, port = serial.rpartition(":")
    return bool(host) and port.isdigit()


def _connect(client: adbutils.AdbClient, serial: str, timeout: float) -> str:
    """`adb connect`; it reports failure only in its text, which is returned for messages."""
    try:
        return client.connect(serial, timeout=timeout)
    except AdbError as error:
        return str(error)


def _reconnect(client: adbutils.AdbClient, serial: str, timeouts: Timeouts) -> str | None:
    """Wait up to timeouts.reconnect for the device to be ready, re-running `adb connect`
    for a network device (disconnecting an offline one first: adb would answer 'already
    connected'). None once it is back, else what the last `adb connect` said."""
    deadline = time.monotonic() + timeouts.reconnect
    answer = ""
    while time.monotonic() < deadline:
        state = _states(client).get(serial)
        if state == "device":
            return None
        if _is_network_serial(serial):
            if state is not None:
                client.disconnect(serial)
            answer = _connect(client, serial, timeouts.command)
        time.sleep(0.5)
    return None if _states(client).get(serial) == "device" else answer


def _reconnect_at_start(client: adbutils.AdbClient, serial: str, state: str | None,
                        timeouts: Timeouts, retries: int) -> str:
    """A network device not connected yet is connected; one that is offline, or does not
    answer that first `adb connect`, gets the `retries` reconnects that a device dropping
    mid-run gets. Returns what adb said last."""
    answer = _connect(client, serial, timeouts.command) if state is None else ""
    for attempt in range(1, retries + 1):
        if _states(client).get(serial) not in (None, "offline"):
            break  # ready, or waiting for the user (unauthorized): reconnecting cannot help
        logging.warning("%s: %s at the start; reconnecting (%d/%d)", serial,
                        state or "not answering", attempt, retries)
        answer = _reconnect(client, serial, timeouts) or answer
    return answer


def _reconnect_all_at_start(client: adbutils.AdbClient, serials: list[str],
                            states: dict[str, str], timeouts: Timeouts,
                            retries: int) -> dict[str, str]:
    """adb's last answer for each network target offline or not connected at the start,
    after reconnecting them in parallel (one device's wait does not add to another's)."""
    down = [s for s in serials if _is_network_serial(s) and states.get(s) in (None, "offline")]
    if not down:
        return {}
    with ThreadPoolExecutor(max_workers=len(down), thread_name_prefix="adb") as pool:
        return dict(zip(down, pool.map(
            lambda s: _reconnect_at_start(client, s, states.get(s), timeouts, retries), down)))


def discover(targets: str | Sequence[str] = "all",
             client: adbutils.AdbClient | None = None,
             timeouts: Timeouts = Timeouts(),
             retries: int = 3) -> list[str]:
    """Serials of the target devices, each ready ('device' state), or one clear UserError.

    `targets` is "all" or a list of serials; a HOST:PORT serial that is offline or
    not connected yet is (re)connected first, with `retries` attempts as mid-run.
    """
    client = client or _client()
    first = _states(client)
    serials = sorted(first) if targets == "all" else list(dict.fromkeys(targets))
    if targets == "all" and not serials:
        raise UserError("no Android device connected: plug one in with USB debugging enabled "
                        "(or `adb connect HOST:PORT`) and check `adb devices` lists it")
    answers = _reconnect_all_at_start(client, serials, first, timeouts, retries)
    states = _states(client) if answers else first
    for serial, answer in answers.items():
        if serial not in first and serial not in states:
            raise UserError(f"cannot connect to device {serial}: adb says '{answer}'; check "
                            "the address and that wireless debugging is on")
    missing = [s for s in serials if s not in first and s not in answers]
    if missing:
        known = ", ".join(f"{s} ({st})" for s, st in sorted(states.items())) or "none"
        raise UserError(f"device {', '.join(missing)} not found (connected: {known}); "
                        "check the serial with `adb devices`")
    problems = [_state_message(s, states.get(s) or first[s]) for s in serials
                if states.get(s) != "device"]
    if problems:
        raise UserError("; ".join(problems))
    return serials


def _parse_info(serial: str, text: str) -> dict:
    props: dict[str, str] = {}
    cpus, thermal = [], []
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "prop":
            key, _, value = rest.partition(" ")
            props[key] = value.strip()
        elif kind == "cpu":
            fields = rest.split()
            if fields and fields[0].isdigit():
                numbers = [int(f) if f.isdigit() else None for f in fields[1:3]] + [None, None]
                cpus.append({"cpu": int(fields[0]), "cur_khz": numbers[0], "max_khz": numbers[1]})
        elif kind == "thermal":
            zone, _, rest = rest.partition(" ")
            kind_name, _, temp = rest.rpartition(" ")
            if zone.isdigit() and temp.lstrip("-").isdigit():
                value = int(temp)
                # Most kernels report millidegrees; a few report degrees.
                thermal.append({"zone": int(zone), "type": kind_name,
                                "temp_c": value / 1000 if abs(value) >= 1000 else float(value)})
    return {
        "kind": "android",
        "serial": serial,
        "model": props.get("ro.product.model", ""),
        "abi": props.get("ro.product.cpu.abi", ""),
        "android": props.get("ro.build.version.release", ""),
        "soc": props.get("ro.soc.model") or props.get("ro.board.platform") or props.get("ro.hardware", ""),
        "board": props.get("ro.board.platform", ""),
        "hardware": props.get("ro.hardware", ""),
        "cpus": sorted(cpus, key=lambda c: c["cpu"]),
        "thermal": sorted(thermal, key=lambda t: t["zone"]),
    }


_INFO_PROPS = ("ro.product.model", "ro.product.cpu.abi", "ro.build.version.release",
               "ro.soc.model", "ro.board.platform", "ro.hardware")
# The info fields every device should report, with the properties they come from.
_EXPECTED_INFO = {"model": "ro.product.model", "abi": "ro.product.cpu.abi",
                  "android": "ro.build.version.release",
                  "soc": "ro.soc.model, ro.board.platform or ro.hardware"}
# One shell round trip for everything; sysfs files that are missing read as empty.
_INFO_SCRIPT = (
    "for p in " + " ".join(_INFO_PROPS) + "; do echo \"prop $p $(getprop $p)\"; done; "
    "for c in /sys/devices/system/cpu/cpu[0-9]*; do echo \"cpu ${c##*/cpu} "
    "$(cat $c/cpufreq/scaling_cur_freq 2>/dev/null) $(cat $c/cpufreq/cpuinfo_max_freq 2>/dev/null)\"; "
    "done; "
    "for z in /sys/class/thermal/thermal_zone*; do echo \"thermal ${z##*/thermal_zone} "
    "$(cat $z/type 2>/dev/null) $(cat $z/temp 2>/dev/null)\"; done")

# Work folders name their owner: edgepipe-HOST-PID-TAG (HOST is host_tag()). Folders of
# harness versions that did not (edgepipe- and 12 hex digits) are recognised too; nothing
# else is touched.
_OWNED_FOLDER = re.compile(WORK_PREFIX + r"(?P<host>[A-Za-z0-9.-]+)-(?P<pid>[1-9][0-9]*)-"
                           r"[0-9a-f]{8}")
_UNOWNED_FOLDER = re.compile(WORK_PREFIX + r"[0-9a-f]{12}")
# One line per edgepipe-* folder: the device's time, the newest mtime of anything in it
# (by the device's clock: the folders and the runner's JSON are written there), KiB, name.
_WORK_FOLDERS_SCRIPT = (
    f"cd {DEVICE_TMP} || exit; for d in {WORK_PREFIX}*; do if [ -d \"$d\" ]; then "
    "echo \"$(date +%s) $(find \"$d\" -exec stat -c %Y {} + | sort -n | tail -n 1) "
    "$(du -sk \"$d\" | cut -f1) $d\"; fi; done")
_WORK_FOLDER_LINE = re.compile(r"([0-9]+) ([0-9]+) ([0-9]+) (" + WORK_PREFIX + ".+)")


def host_tag() -> str:
    """Who can ask this process's pid, as work folder names carry it: the host's name and
    a hash of it with the pid namespace, so that a container with the host's name (e.g.
    docker --network host) does not take the host's pids for its own."""
    name = socket.gethostname()
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0  # no /proc (macOS): the name alone
    digest = hashlib.sha1(f"{name}/{namespace}".encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9.-]', '', name)[:24] or 'host'}-{digest}"


def work_folder_name(host: str, pid: int) -> str:
    """A fresh work folder's name, naming the process that owns it."""
    return f"{WORK_PREFIX}{host}-{pid}-{uuid.uuid4().hex[:8]}"


def _process_alive(pid: int) -> bool:
    """Whether process `pid` of this host still runs (signal 0 only asks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _is_stale(name: str, quiet_s: int, host: str) -> bool:
    """Whether no live session owns work folder `name`, unchanged for `quiet_s` seconds.

    The name says which host and process made the folder. One this host made is stale
    as soon as that process is gone (a killed run, a device dropped for good); while it
    lives its folder stays, so concurrent sessions on one device are safe. No
    heartbeat is needed, so nothing runs beside a measurement. Another host's process,
    or the owner of an older harness's folder that names none, cannot be asked: such
    a folder is stale only after STALE_AFTER_S without any change, far longer than a
    session goes without writing into it; the same limit frees a folder whose pid a
    later process reused. Hosts are told apart by name (and pid namespace), so two
    machines sharing a device must not share a host name.
    """
    owned = _OWNED_FOLDER.fullmatch(name)
    if not owned and not _UNOWNED_FOLDER.fullmatch(name):
        return False
    if owned and owned["host"] == host and not _process_alive(int(owned["pid"])):
        return True
    return quiet_s > STALE_AFTER_S


def _stale_folders(listing: str, host: str) -> dict[str, int]:
    """KiB of each stale work folder in the output of _WORK_FOLDERS_SCRIPT."""
    stale: dict[str, int] = {}
    for line in listing.splitlines():
        match = _WORK_FOLDER_LINE.fullmatch(line)
        if match and _is_stale(match[4], int(match[1]) - int(match[2]), host):
            stale[match[4]] = int(match[3])
    return stale


def _device_reason(result: adbutils.ShellReturn) -> str:
    """What a failed command said (stderr, else stdout), its last lines on one line."""
    text = (result.stderr.strip() or result.stdout.strip() or "no message").splitlines()
    return "; ".join(text[-STDERR_TAIL_LINES:])


class DeviceSession:
    """One device: shell and file transfer with timeouts, and its work folder."""

    def __init__(self, client: adbutils.AdbClient, serial: str, timeouts: Timeouts = Timeouts()):
        self.client, self.serial, self.timeouts = client, serial, timeouts
        self.device = client.device(serial)
        self.run_dir = f"{DEVICE_TMP}/{work_folder_name(host_tag(), os.getpid())}"

    def shell(self, command: str, timeout: float, what: str) -> adbutils.ShellReturn:
        """Run `command` (already quoted) with shell_v2, so its exit status comes back.
        Output is decoded here, bad bytes replaced: a runner may print any bytes.

        A device without shell_v2 (older adbd) gets adbutils' v1 fallback, which takes
        the exit status from an echo appended to the command and returns stdout and
        stderr mixed in `output` alone; that is then the stdout. (With shell_v2,
        `output` is stdout plus stderr, so it is empty whenever both are.)"""
        try:
            raw = self.device.shell2(command, timeout=timeout, v2=True, encoding=None)
        except AdbTimeout:
            raise _TimedOut(what, timeout) from None
        except (AdbError, OSError, EOFError) as error:
            raise _Disconnected(f"{what}: {error}") from None
        stdout = raw.stdout if raw.stdout or raw.stderr else raw.output
        return adbutils.ShellReturn(
            command=raw.command, returncode=raw.returncode,
            output=raw.output.decode("utf-8", errors="replace"),
            stdout=stdout.decode("utf-8", errors="replace"),
            stderr=raw.stderr.decode("utf-8", errors="replace"))

    def info(self) -> dict:
        """What the device is (_parse_info); a property it does not report is a warning,
        since its records would then not say which phone measured them."""
        result = self.shell(_INFO_SCRIPT, self.timeouts.command, "reading device info")
        info = _parse_info(self.serial, result.stdout)
        missing = [f"{field} ({props})" for field, props in _EXPECTED_INFO.items()
                   if not info[field]]
        if missing:
            logging.warning("%s: the device reports no %s (getprop gave nothing); its records "
                            "leave them empty", self.serial, ", ".join(missing))
        return info

    def _sync(self) -> adbutils.AdbConnection:
        connection = self.device.open_transport(timeout=self.timeouts.transfer)
        connection.send_command("sync:")
        connection.check_okay()
        return connection

    @staticmethod
    def _request(connection: adbutils.AdbConnection, request: bytes, arg: str) -> None:
        data = arg.encode("utf-8")
        connection.conn.sendall(request + struct.pack("<I", len(data)) + data)

    @staticmethod
    def _fail_reason(connection: adbutils.AdbConnection) -> str:
        (length,) = struct.unpack("<I", connection.read_exact(4))
        return connection.read_exact(length).decode("utf-8", "replace")

    def _transfer(self, what: str, action):
        try:
            return action()
        except (AdbTimeout, socket.timeout):
            raise _TimedOut(what, self.timeouts.transfer) from None
        except (AdbError, OSError, EOFError) as error:
            raise _Disconnected(f"{what}: {error}") from None

    def stat(self, remote: str) -> tuple[int, int]:
        """(mode, size) of a device path; mode 0 when it does not exist."""

        def run() -> tuple[int, int]:
            with self._sync() as c:
                self._request(c, b"STAT", remote)
                reply = c.read_exact(16)
                self._request(c, b"QUIT", "")
            if reply[:4] != b"STAT":
                raise AdbError(f"unexpected sync reply {reply[:4]!r}")
            mode, size, _mtime = struct.unpack("<III", reply[4:])
            return mode, size

        return self._transfer(f"stat {remote}", run)

    def push(self, local: Path, remote: str, mode: int = 0o755) -> None:
        """Push one file; the device's refusal (e.g. out of space) is a UserError."""

        def run() -> str | None:
            with self._sync() as c, open(local, "rb") as f:
                self._request(c, b"SEND", f"{remote},{stat.S_IFREG | mode}")
                while chunk := f.read(SYNC_DATA_MAX):
                    c.conn.sendall(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
                c.conn.sendall(b"DONE" + struct.pack("<I", int(time.time())))
                status = c.read_exact(4)
                if status == b"FAIL":
                    return self._fail_reason(c)
                c.read_exact(4)
                self._request(c, b"QUIT", "")
                return None if status == b"OKAY" else f"unexpected reply {status!r}"

        reason = self._transfer(f"push {local.name} to {remote}", run)
        if reason is None:
            return
        size_mb = local.stat().st_size / 1e6
        if "No space left" in reason:
            raise UserError(f"device {self.serial} is out of space: pushing {local.name} "
                            f"({size_mb:.1f} MB) to {remote} failed ({reason}); free space on "
                            f"the device (e.g. old files in {DEVICE_TMP}) and run again")
        raise UserError(f"device {self.serial} refused {local.name} at {remote}: {reason}")

    def read_file(self, remote: str) -> bytes | None:
        """A device file's bytes, or None if it does not exist (STAT first, then RECV)."""

        def run() -> bytes | None:
            with self._sync() as c:
                self._request(c, b"STAT", remote)
                mode, _size, _mtime = struct.unpack("<III", c.read_exact(16)[4:])
                if not stat.S_ISREG(mode):
                    self._request(c, b"QUIT", "")
                    return None
                self._request(c, b"RECV", remote)
                data = bytearray()
                while True:
                    kind = c.read_exact(4)
                    if kind == b"DATA":
                        (length,) = struct.unpack("<I", c.read_exact(4))
                        data += c.read_exact(length)
                    elif kind == b"DONE":
                        c.read_exact(4)
                        break
                    else:
                        raise AdbError(f"pull {remote}: {self._fail_reason(c)}")
                self._request(c, b"QUIT", "")
                return bytes(data)

        return self._transfer(f"pull {remote}", run)

    def checked(self, command: str, purpose: str, fix: str) -> None:
        """A short command the next steps depend on; its failure is one UserError with
        the device's reason at once, not a confusing failure of a later step."""
        result = self.shell(command, self.timeouts.command, purpose)
        if result.returncode != 0:
            raise UserError(f"device {self.serial}: {purpose} failed (exit status "
                            f"{result.returncode}): {_device_reason(result)}; {fix}")

    def best_effort(self, command: str, purpose: str) -> adbutils.ShellReturn | None:
        """A clean-up command: its failure is logged with the device's reason and None
        returned, not raised, since a leftover must not fail the measurements."""
        result = self.shell(command, self.timeouts.command, purpose)
        if result.returncode == 0:
            return result
        logging.warning("%s: %s failed (exit status %d): %s", self.serial, purpose,
                        result.returncode, _device_reason(result))
        return None

    def remove_stale(self) -> None:
        """Remove the work folders of earlier sessions that no live session owns (see
        _is_stale): a dropped device or a killed run leaves its runner, libraries and
        model behind, and nothing else would ever remove them."""
        listing = self.best_effort(_WORK_FOLDERS_SCRIPT,
                                   f"listing the work folders in {DEVICE_TMP}")
        stale = _stale_folders(listing.stdout, host_tag()) if listing else {}
        if not stale:
            return
        names = sorted(stale)
        paths = shlex.join(f"{DEVICE_TMP}/{name}" for name in names)
        if self.best_effort(f"rm -rf {paths}", f"removing stale work folders {', '.join(names)}"):
            logging.info("%s: removed %d stale work folder(s) of earlier sessions from %s "
                         "(%.1f MB): %s", self.serial, len(names), DEVICE_TMP,
                         sum(stale.values()) * 1024 / 1e6, ", ".join(names))

    def push_missing(self, files: Sequence[tuple[Path, str]]) -> None:
        """Make the work folder, then push each (local file, path in the work folder) that
        is not there at its full size yet (resumes a push)."""
        folders = sorted({f"{self.run_dir}/{name}" for name in (BIN_DIR, MODEL_DIR, RESULTS_DIR)}
                         | {f"{self.run_dir}/{Path(relative).parent}" for _, relative in files})
        self.checked(f"mkdir -p {shlex.join(folders)}", f"creating the work folder {self.run_dir}",
                     f"remove what is in its place or make room in {DEVICE_TMP} on the device "
                     f"(`adb -s {self.serial} shell ls -la {DEVICE_TMP}`), then run again")
        for local, relative in files:
            remote = f"{self.run_dir}/{relative}"
            mode, size = self.stat(remote)
            if stat.S_ISREG(mode) and size == local.stat().st_size:
                continue
            self.push(local, remote)

    def cleanup(self) -> None:
        """Remove the work folder; a device that is gone, hung or refusing keeps it (the
        next session on it removes it once this process has ended)."""
        try:
            self.best_effort(f"rm -rf {shlex.quote(self.run_dir)}",
                             f"removing the work folder {self.run_dir}")
        except (_Disconnected, _TimedOut) as error:
            logging.warning("%s: could not remove %s (%s)", self.serial, self.run_dir, error)

    def reconnect(self) -> None:
        """Wait for the device to come back, re-running `adb connect` for network devices."""
        if _reconnect(self.client, self.serial, self.timeouts) is not None:
            raise _Disconnected(f"not back within {self.timeouts.reconnect:.0f} s")


@dataclass(frozen=True)
class Payload:
    """What the devices of one ABI receive, how its runner starts there, and what the
    records say about it."""

    files: tuple[tuple[Path, str], ...]  # (local file, its path in the work folder)
    runner: Path              # the runner program (crash_message looks for its marker)
    entry: str                # what is started, relative to the work folder
    launcher: tuple[str, ...]  # words before `entry`: ("sh",) for the bundle's run.sh
    library_dir: str | None   # made LD_LIBRARY_PATH (the host build's libraries)
    identity: Path            # its hash is the records' runner_sha256 (resume by identity)
    bundle: dict              # the records' "bundle": which build ran
    tool: str = RUNNER_TOOL   # which runner it is: ours, or LiteRT's benchmark_model


def _elf_abi(path: Path) -> str | None:
    """The Android ABI of an ELF program (None: not one, or for another machine)."""
    with path.open("rb") as file:
        return ELF_ABIS.get(elf_machine(file.read(20)))


def _given_payload(runner: Path, libraries: list[Path]) -> Payload:
    """The caller's runner with its libraries in one folder (its rpath is $ORIGIN),
    checked: they share that folder, so only their names must differ."""
    for path in (runner, *libraries):
        if not path.is_file():
            raise UserError(f"{path} does not exist: build it first or fix the path")
    names = [path.name for path in (runner, *libraries)]
    if len(set(names)) != len(names):
        raise UserError(f"the runner and its libraries must have distinct file names (they "
                        f"share one folder on the device): {names}; rename one")
    return Payload(files=tuple((path, f"{BIN_DIR}/{path.name}") for path in (runner, *libraries)),
                   runner=runner, entry=f"{BIN_DIR}/{runner.name}", launcher=(),
                   library_dir=BIN_DIR, identity=runner,
                   bundle=runner_build(_elf_abi(runner) or HOST_ABI, runner))


def _bundle_payload() -> Payload:
    """The arm64 bundle, checked against its manifest first, started as its manifest
    says (`sh run.sh`: the script's first line names /bin/sh, which older Android
    versions lack; their shell is /system/bin/sh)."""
    folder = arm64_bundle.BUNDLE_DIR
    manifest = arm64_bundle.checked_bundle(folder)
    names = [*manifest["files"], "manifest.json"]
    return Payload(files=tuple((folder / name, f"{BIN_DIR}/{name}") for name in names),
                   runner=folder / "litert_bench", entry=f"{BIN_DIR}/run.sh", launcher=("sh",),
                   library_dir=None, identity=folder / "manifest.json",
                   bundle={"abi": arm64_bundle.ABI,
                           "manifest_sha256": sha256_file(folder / "manifest.json"),
                           "litert": manifest["litert"]["version"]})


def _peer_payload(path: Path) -> Payload:
    """LiteRT's official benchmark_model as the user gave it: one program (a script is
    started with sh). Its records' bundle names the ABI it is built for."""
    if not path.is_file():
        raise UserError(f"benchmark_model {path} does not exist: give the path of LiteRT's "
                        "Android benchmark_model binary, or leave benchmark_model unset")
    abi = _elf_abi(path)
    return Payload(files=((path, f"{PEER_DIR}/{path.name}"),), runner=path,
                   entry=f"{PEER_DIR}/{path.name}", launcher=() if abi else ("sh",),
                   library_dir=None, identity=path,
                   bundle=runner_build(abi or "script", path),
                   tool=benchmark_model_output.TOOL)


class _Payloads:
    """The payload for each device ABI: the caller's runner for the ABI it is built for,
    the arm64 bundle for arm64-v8a devices otherwise. So an x86-64 runner never goes to
    an arm64 device, and a device of any other ABI is one clear error. The bundle is
    checked once, when the first arm64 device needs it. The official benchmark_model,
    when given, runs beside ours on devices of the ABI it is built for."""

    def __init__(self, runner: Path, libraries: list[Path], peer: Path | None = None):
        self.given = _given_payload(runner, libraries)
        self.peer = _peer_payload(peer) if peer else None
        self.given_abi = self.given.bundle["abi"]
        self._bundle: Payload | None = None
        self._lock = threading.Lock()

    def for_device(self, serial: str, abi: str) -> Payload:
        if abi == self.given_abi:
            return self.given
        if abi == arm64_bundle.ABI:
            with self._lock:
                self._bundle = self._bundle or _bundle_payload()
            return self._bundle
        reported = f"ABI '{abi}'" if abi else "no ABI (getprop ro.product.cpu.abi is empty)"
        runners = {arm64_bundle.ABI: "the arm64 bundle", self.given_abi: str(self.given.runner)}
        supported = " and ".join(f"{name} ({what})" for name, what in runners.items())
        raise UserError(f"device {serial} reports {reported}; there is a runner only for "
                        f"{supported}: use a device with one of those ABIs")

    def peer_for_device(self, serial: str, abi: str) -> Payload | None:
        """benchmark_model for this device, None when none is given; one built for
        another ABI is an error, not a push that cannot run."""
        if self.peer is None or self.peer.bundle["abi"] in (abi, "script"):
            return self.peer
        raise UserError(f"benchmark_model {self.peer.runner} is built for "
                        f"{self.peer.bundle['abi']} but device {serial} is {abi}: give the "
                        f"{abi} build of benchmark_model")


def peer_refusal(model: Path) -> str | None:
    """Why the official benchmark_model cannot run `model` (it has none of our custom
    ops' kernels), or None when it can."""
    custom = inspect_model(model).custom_ops
    if custom:
        return (f"benchmark_model skipped for {model.name}: it has no kernel for the custom "
                f"op(s) {', '.join(custom)}")
    return None


class _DeviceRun:
    """All thread counts on one device (with our runner, then benchmark_model when
    given), with reconnects and resumption."""

    def __init__(self, session: DeviceSession, model: Path, payloads: _Payloads,
                 settings: RunSettings, store: ResultStore, done: dict[tuple, dict],
                 retries: int, peer_skip: str | None = None):
        self.session, self.model, self.payloads = session, model, payloads
        self.settings, self.store, self.done, self.retries = settings, store, done, retries
        self.peer_skip = peer_skip
        self.finished: list[dict] = []

    def _base(self, payload: Payload) -> dict:
        return {**measurement_base(self.model, payload.identity, self.settings),
                "target": self.session.serial, "bundle": payload.bundle, "tool": payload.tool}

    def _plan(self, info: dict, threads: Sequence[int]) -> list[tuple[Payload, int]]:
        """Choose the payloads for the device's ABI; the (payload, thread count) pairs
        not measured yet (those already in the store go to self.finished)."""
        serial = self.session.serial
        payloads = [self.payloads.for_device(serial, info["abi"])]
        peer = self.payloads.peer_for_device(serial, info["abi"])
        if peer and self.peer_skip:
            logging.warning("%s: %s", serial, self.peer_skip)
        elif peer:
            payloads.append(peer)
        self.files = [file for payload in payloads for file in payload.files]
        self.files.append((self.model, f"{MODEL_DIR}/{self.model.name}"))
        self.bases = {payload.tool: self._base(payload) for payload in payloads}
        pending = []
        for payload in payloads:
            for count in threads:
                identity = measurement_identity({**self.bases[payload.tool], "threads": count})
                record = self.done.get(identity)
                if record is None:
                    pending.append((payload, count))
                else:
                    self.finished.append(record)
        return pending

    def _command(self, payload: Payload, threads: int, json_path: str, outputs_path: str) -> str:
        d = self.session.run_dir
        model = f"{d}/{MODEL_DIR}/{self.model.name}"
        if payload.tool == RUNNER_TOOL:
            argv = runner_command(payload.entry, model, threads, self.settings, json_path,
                                  launcher=payload.launcher, output_filepath=outputs_path)
        else:
            argv = peer_command(payload.entry, model, threads, self.settings, outputs_path,
                                launcher=payload.launcher)
        environment = (f"LD_LIBRARY_PATH={shlex.quote(f'{d}/{payload.library_dir}')} "
                       if payload.library_dir else "")
        return f"cd {shlex.quote(d)} && {environment}{shlex.join(argv)}"

    def _runner_json(self, json_path: str, threads: int) -> dict:
        serial = self.session.serial
        data = self.session.read_file(json_path)
        if not data:
            raise UserError(f"the runner exited 0 on device {serial} (threads={threads}) "
                            f"but wrote no JSON to {json_path}; check that it accepts --json_output")
        try:
            return json.loads(data.decode("utf-8", errors="replace"))
        except json.JSONDecodeError as error:
            raise UserError(f"the runner's JSON from device {serial} (threads={threads}) "
                            f"is not valid JSON ({error})") from None

    def _measure(self, info: dict, payload: Payload, threads: int) -> dict:
        session, runner = self.session, payload.runner
        tag = f"{payload.tool}-{threads}"
        json_path = f"{session.run_dir}/{RESULTS_DIR}/result-{tag}.json"
        outputs_path = f"{session.run_dir}/{RESULTS_DIR}/outputs-{tag}.raw"
        what = f"{runner.name} --num_threads={threads} on {session.serial}"
        result = session.shell(self._command(payload, threads, json_path, outputs_path),
                               session.timeouts.run, what)
        if SIGNAL_EXIT_BASE < result.returncode <= SIGNAL_EXIT_BASE + 64:
            crash = crash_message(runner, result.returncode - SIGNAL_EXIT_BASE, result.stderr)
            raise UserError(f"on device {session.serial} (threads={threads}), {crash}")
        output = result.stderr or result.stdout  # a shell_v1 device mixes them
        if result.returncode != 0:
            tail = "\n".join(output.strip().splitlines()[-STDERR_TAIL_LINES:])
            raise UserError(f"{runner.name} failed on device {session.serial} (threads={threads}, "
                            f"exit status {result.returncode}); its output ends with:\n{tail}")
        if payload.tool == RUNNER_TOOL:
            document = self._runner_json(json_path, threads)
        else:
            document = benchmark_model_output.parse(
                f"{result.stdout}\n{result.stderr}",
                f"benchmark_model on device {session.serial} (threads={threads})")
        # The device is described by `info`: the runner's own "device" says "host" on a
        # phone when it is the glibc bundle (built without __ANDROID__).
        return {**self.bases[payload.tool], "device": info, "threads": threads,
                "runner": document, "outputs_sha256": outputs_digest(session.read_file(outputs_path))}

    def run(self, threads: Sequence[int]) -> list[dict]:
        pending: list[tuple[Payload, int]] | None = None  # not known before the device's ABI is
        info: dict | None = None
        reconnects = 0
        step = "starting"
        pushing = False  # once true, the work folder may exist and is removed at the end
        try:
            while pending is None or pending:
                try:
                    step = "reading device info"
                    info = info or self.session.info()
                    if pending is None:
                        pending = self._plan(info, threads)
                        continue
                    step = "removing stale work folders"
                    self.session.remove_stale()
                    step = "pushing files"
                    pushing = True
                    self.session.push_missing(self.files)
                    while pending:
                        payload, count = pending[0]
                        step = f"measuring threads={count} with {payload.tool}"
                        record = self._measure(info, payload, count)
                        self.store.append(record)
                        self.finished.append(record)
                        pending.pop(0)
                        logging.info("%s: %s threads=%d done", self.session.serial,
                                     payload.tool, count)
                except _Disconnected as error:
                    reconnects += 1
                    logging.warning("%s: disconnected while %s (%s); reconnecting (%d/%d)",
                                    self.session.serial, step, error, reconnects, self.retries)
                    if reconnects > self.retries:
                        raise
                    try:
                        self.session.reconnect()
                    except _Disconnected:
                        pass  # the next step fails fast and counts as another attempt
        except _Disconnected:
            done = ", ".join(str(r["threads"]) for r in self.finished) or "none"
            raise UserError(
                f"device {self.session.serial} disconnected while {step} and {self.retries} "
                f"reconnect attempts did not get it back for good; finished on it: threads {done} "
                f"(saved in {self.store.path}); reconnect it and run again: finished measurements "
                "are not repeated") from None
        except _TimedOut as error:
            raise UserError(f"timed out on device {self.session.serial}: `{error.what}` gave no "
                            f"answer within {error.seconds:.0f} s; re-plug the device or raise the "
                            "timeout") from None
        finally:
            if pushing:
                self.session.cleanup()
        return self.finished


def benchmark_on_devices(model: str | os.PathLike, runner: str | os.PathLike, *,
                         results_path: str | os.PathLike,
                         targets: str | Sequence[str] = "all",
                         threads: Sequence[int] = (1,),
                         libraries: Sequence[str | os.PathLike] = (),
                         settings: RunSettings = RunSettings(),
                         timeouts: Timeouts = Timeouts(),
                         retries: int = 3,
                         client: adbutils.AdbClient | None = None,
                         benchmark_model: str | os.PathLike | None = None) -> list[dict]:
    """Measure `model` on each target for each thread count.

    `runner` with `libraries` goes to the devices of the ABI it is built for (an
    x86_64 build: emulators); arm64-v8a devices otherwise get the arm64 bundle
    (arm64_bundle.BUNDLE_DIR). Returns one dict per measurement, {target, device,
    threads, runner (the runner's JSON), model, model_sha256, runner_sha256 (for
    the bundle: its manifest's), bundle (ABI and hash of what ran), outputs_sha256,
    settings, tool}, including those already in `results_path` from an earlier,
    interrupted call (not measured again). With `benchmark_model` (LiteRT's official
    binary) every device of its ABI also runs that, on models without custom ops,
    in records whose tool is "benchmark_model" and whose runner holds what
    benchmark_model_output reads from its log. Any device failing raises one
    UserError after the others have finished.
    """
    model = Path(model)
    if not model.is_file():
        raise UserError(f"{model} does not exist: build it first or fix the path")
    payloads = _Payloads(Path(runner), [Path(lib) for lib in libraries],
                         Path(benchmark_model) if benchmark_model else None)
    peer_skip = peer_refusal(model) if benchmark_model else None
    client = client or _client()
    serials = discover(targets, client, timeouts, retries)
    store = ResultStore(results_path)
    done = store.finished()

    def on_device(serial: str) -> list[dict]:
        session = DeviceSession(client, serial, timeouts)
        return _DeviceRun(session, model, payloads, settings, store, done, retries,
                          peer_skip).run(threads)

    errors: list[str] = []
    results: list[dict] = []
    with ThreadPoolExecutor(max_workers=len(serials), thread_name_prefix="adb") as pool:
        futures = [pool.submit(on_device, serial) for serial in serials]
        for future in futures:
            try:
                results.extend(future.result())
            except UserError as error:
                errors.append(str(error))
    if errors:
        raise UserError("\n".join(errors) + f"\nevery finished measurement is saved in "
                        f"{store.path}; run again to resume")
    return results

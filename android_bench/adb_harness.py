"""Run the native benchmark runner on Android devices over ADB.

Built on adbutils over the platform `adb` server. For each device: read what it
is (model, ABI, Android version, SoC, core frequencies, thermal zones), remove
the work folders that earlier sessions left behind, push the runner, its shared
libraries and the model into a fresh work folder under /data/local/tmp, run once
per thread count, pull the runner's JSON and remove the folder again. Devices run
in parallel, one thread each. A short command whose failure matters (mkdir, rm)
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
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import adbutils
from absl import logging
from adbutils.errors import AdbError, AdbTimeout

from android_bench.runner import (ResultStore, RunSettings, crash_message, measurement_base,
                                  measurement_identity, runner_command)
from core.errors import UserError

DEVICE_TMP = "/data/local/tmp"
WORK_PREFIX = "edgepipe-"
# Inside a work folder: the runner with its libraries (its rpath is $ORIGIN), the model
# alone in its own folder and the runner's JSON in a third, so that no model name can
# clash with the runner, a library or an output.
BIN_DIR, MODEL_DIR, RESULTS_DIR = "bin", "model", "results"
# A work folder in which nothing changed for this long belongs to no live session
# (a session writes into it at least once per measurement); see _is_stale.
STALE_AFTER_S = 6 * 3600
SYNC_DATA_MAX = 64 * 1024  # the sync protocol's largest DATA chunk
STDERR_TAIL_LINES = 20
# A shell reports a command killed by signal N as exit status 128 + N (adbd does too).
SIGNAL_EXIT_BASE = 128


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
        Output is decoded here, bad bytes replaced: a runner may print any bytes."""
        try:
            raw = self.device.shell2(command, timeout=timeout, v2=True, encoding=None)
        except AdbTimeout:
            raise _TimedOut(what, timeout) from None
        except (AdbError, OSError, EOFError) as error:
            raise _Disconnected(f"{what}: {error}") from None
        return adbutils.ShellReturn(
            command=raw.command, returncode=raw.returncode,
            output=raw.output.decode("utf-8", errors="replace"),
            stdout=raw.stdout.decode("utf-8", errors="replace"),
            stderr=raw.stderr.decode("utf-8", errors="replace"))

    def info(self) -> dict:
        result = self.shell(_INFO_SCRIPT, self.timeouts.command, "reading device info")
        return _parse_info(self.serial, result.stdout)

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
        folders = [f"{self.run_dir}/{name}" for name in (BIN_DIR, MODEL_DIR, RESULTS_DIR)]
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


class _DeviceRun:
    """All thread counts on one device, with reconnects and resumption."""

    def __init__(self, session: DeviceSession, files: list[tuple[Path, str]], model: Path,
                 runner: Path, base: dict, settings: RunSettings, store: ResultStore,
                 retries: int):
        self.session, self.files, self.model, self.runner = session, files, model, runner
        self.base, self.settings, self.store, self.retries = base, settings, store, retries
        self.finished: list[dict] = []

    def _command(self, threads: int, json_path: str) -> str:
        d = self.session.run_dir
        argv = runner_command(f"{d}/{BIN_DIR}/{self.runner.name}",
                              f"{d}/{MODEL_DIR}/{self.model.name}", threads, self.settings,
                              json_path)
        return (f"cd {shlex.quote(d)} && LD_LIBRARY_PATH={shlex.quote(f'{d}/{BIN_DIR}')} "
                f"{shlex.join(argv)}")

    def _measure(self, info: dict, threads: int) -> dict:
        session = self.session
        json_path = f"{session.run_dir}/{RESULTS_DIR}/result-{threads}.json"
        what = f"{self.runner.name} --num_threads={threads} on {session.serial}"
        result = session.shell(self._command(threads, json_path), session.timeouts.run, what)
        if SIGNAL_EXIT_BASE < result.returncode <= SIGNAL_EXIT_BASE + 64:
            crash = crash_message(self.runner, result.returncode - SIGNAL_EXIT_BASE, result.stderr)
            raise UserError(f"on device {session.serial} (threads={threads}), {crash}")
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-STDERR_TAIL_LINES:])
            raise UserError(f"the runner failed on device {session.serial} (threads={threads}, "
                            f"exit status {result.returncode}); its stderr ends with:\n{tail}")
        data = session.read_file(json_path)
        if not data:
            raise UserError(f"the runner exited 0 on device {session.serial} (threads={threads}) "
                            f"but wrote no JSON to {json_path}; check that it accepts --json_output")
        try:
            runner_json = json.loads(data.decode("utf-8", errors="replace"))
        except json.JSONDecodeError as error:
            raise UserError(f"the runner's JSON from device {session.serial} (threads={threads}) "
                            f"is not valid JSON ({error})") from None
        return {**self.base, "device": info, "threads": threads, "runner": runner_json}

    def run(self, threads: Sequence[int]) -> list[dict]:
        pending = list(threads)
        info: dict | None = None
        reconnects = 0
        step = "starting"
        try:
            while pending:
                try:
                    step = "reading device info"
                    info = info or self.session.info()
                    step = "removing stale work folders"
                    self.session.remove_stale()
                    step = "pushing files"
                    self.session.push_missing(self.files)
                    while pending:
                        step = f"measuring threads={pending[0]}"
                        record = self._measure(info, pending[0])
                        self.store.append(record)
                        self.finished.append(record)
                        logging.info("%s: threads=%d done", self.session.serial, pending.pop(0))
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
            self.session.cleanup()
        return self.finished


def _placements(runner: Path, libraries: list[Path], model: Path) -> list[tuple[Path, str]]:
    """Each file with its path in the work folder (BIN_DIR, MODEL_DIR), checked: the
    runner and its libraries share a folder, so only their names must differ."""
    for path in (runner, *libraries, model):
        if not path.is_file():
            raise UserError(f"{path} does not exist: build it first or fix the path")
    names = [path.name for path in (runner, *libraries)]
    if len(set(names)) != len(names):
        raise UserError(f"the runner and its libraries must have distinct file names (they "
                        f"share one folder on the device): {names}; rename one")
    return [*((path, f"{BIN_DIR}/{path.name}") for path in (runner, *libraries)),
            (model, f"{MODEL_DIR}/{model.name}")]


def benchmark_on_devices(model: str | os.PathLike, runner: str | os.PathLike, *,
                         results_path: str | os.PathLike,
                         targets: str | Sequence[str] = "all",
                         threads: Sequence[int] = (1,),
                         libraries: Sequence[str | os.PathLike] = (),
                         settings: RunSettings = RunSettings(),
                         timeouts: Timeouts = Timeouts(),
                         retries: int = 3,
                         client: adbutils.AdbClient | None = None) -> list[dict]:
    """Measure `model` with `runner` on each target for each thread count.

    Returns one dict per measurement, {target, device, threads, runner (the
    runner's JSON), model, model_sha256, runner_sha256, settings}, including those
    already in `results_path` from an earlier, interrupted call (not measured again).
    Any device failing raises one UserError after the others have finished.
    """
    model, runner = Path(model), Path(runner)
    files = _placements(runner, [Path(lib) for lib in libraries], model)
    client = client or _client()
    serials = discover(targets, client, timeouts, retries)
    store = ResultStore(results_path)
    base = measurement_base(model, runner, settings)
    done = store.finished()

    def on_device(serial: str) -> list[dict]:
        wanted = [t for t in threads
                  if measurement_identity({**base, "target": serial, "threads": t}) not in done]
        reused = [done[measurement_identity({**base, "target": serial, "threads": t})]
                  for t in threads if t not in wanted]
        if not wanted:
            return reused
        session = DeviceSession(client, serial, timeouts)
        device_run = _DeviceRun(session, files, model, runner, {**base, "target": serial},
                                settings, store, retries)
        return reused + device_run.run(wanted)

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

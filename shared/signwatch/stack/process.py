"""Starting, recognising and stopping the server processes of the stack.

A started server is recorded in ``.stack/<service>.pid`` as JSON: its pid, its start time (field 22
of /proc/<pid>/stat, so that a recycled pid is never mistaken for ours) and a marker string that its
command line must contain. `down` only signals processes that pass both checks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from .errors import StackError

T = TypeVar("T")


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    starttime: int
    marker: str
    command: str

    @classmethod
    def load(cls, path: Path) -> "ProcessRecord | None":
        try:
            data = json.loads(path.read_text())
            return cls(int(data["pid"]), int(data["starttime"]), str(data["marker"]), str(data["command"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)) + "\n")
        tmp.replace(path)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, starttime) of a live process, None when there is none."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) is in parentheses and may contain spaces
    rest = raw[raw.rindex(")") + 2 :].split()
    return rest[0], int(rest[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def _dead(state: str, pid: int) -> bool:
    """A zombie is dead, unless only its main thread exited and other threads still run."""
    if state not in ("Z", "X"):
        return False
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    return all((_proc_stat_task(pid, int(t)) or ("Z",))[0] in ("Z", "X") for t in tasks)


def _proc_stat_task(pid: int, tid: int) -> tuple[str, int] | None:
    try:
        raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2 :].split()
    return rest[0], int(rest[19])


def is_alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and not _dead(stat[0], pid)


def is_ours(record: ProcessRecord) -> bool:
    """True while the recorded process is still running and is the one we started."""
    stat = _proc_stat(record.pid)
    if stat is None or stat[1] != record.starttime or _dead(stat[0], record.pid):
        return False
    return record.marker in _cmdline(record.pid)


def running(pid_file: Path) -> ProcessRecord | None:
    """The record of our live process, or None (a stale pid file is removed)."""
    record = ProcessRecord.load(pid_file)
    if record is None:
        pid_file.unlink(missing_ok=True)
        return None
    if not is_ours(record):
        _reap(record.pid)
        pid_file.unlink(missing_ok=True)
        return None
    return record


def start(
    argv: Sequence[str],
    *,
    pid_file: Path,
    log_file: Path,
    marker: str,
    cwd: Path,
    env: dict[str, str] | None = None,
) -> ProcessRecord:
    """Start a server detached from us (own session, stdin closed, output to ``log_file``)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise StackError(f"cannot start {argv[0]}: {exc}") from None
    # the child keeps running after we exit; tell subprocess not to warn about it
    proc.returncode = 0
    stat = _proc_stat(proc.pid)
    starttime = stat[1] if stat else 0
    record = ProcessRecord(proc.pid, starttime, marker, " ".join(argv))
    record.save(pid_file)
    return record


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our own child (a zombie otherwise)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    except OSError:
        pass


def stop(record: ProcessRecord, *, timeout: float = 20.0) -> bool:
    """SIGTERM the process (and its process group), SIGKILL after ``timeout`` s. False if not ours."""
    if not is_ours(record):
        return False
    _signal(record, signal.SIGTERM)
    if not _wait_gone(record.pid, timeout) and is_ours(record):
        _signal(record, signal.SIGKILL)
        _wait_gone(record.pid, 5.0)
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if not is_alive(pid):
            _reap(pid)  # if it is our own child, collect it rather than leave a zombie
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _signal(record: ProcessRecord, sig: signal.Signals) -> None:
    try:
        if os.getpgid(record.pid) == record.pid:  # started with start_new_session: its own group
            os.killpg(record.pid, sig)
        else:
            os.kill(record.pid, sig)
    except ProcessLookupError:
        pass


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(host: str, port: int) -> bool:
    """True when we could bind host:port now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def require_free_ports(service: str, host: str, ports: Sequence[int], hint: str) -> None:
    busy = [p for p in ports if not port_free(host, p)]
    if busy:
        which = ", ".join(str(p) for p in busy)
        raise StackError(
            f"{service}: port {which} on {host} is already in use by a process this stack did not "
            f"start. Stop that process or {hint}."
        )


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


def wait_until(
    what: str,
    probe: Callable[[], T | None],
    *,
    timeout: float,
    alive: Callable[[], bool] | None = None,
    log_file: Path | None = None,
    echo: Callable[[str], None] | None = None,
    interval: float = 0.2,
) -> T:
    """Poll ``probe`` until it returns something other than None/False, with a deadline.

    Fails early when ``alive`` says the server process has exited. Prints a progress line every
    few seconds through ``echo``.
    """
    start_time = time.monotonic()
    deadline = start_time + timeout
    next_report = start_time + 5.0
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        now = time.monotonic()
        if alive is not None and not alive():
            tail = f"; last lines of {log_file}:\n{log_tail(log_file)}" if log_file else ""
            raise StackError(f"{what} exited during start-up{tail}")
        if now >= deadline:
            tail = f"; last lines of {log_file}:\n{log_tail(log_file)}" if log_file else ""
            raise StackError(f"{what} did not answer within {timeout:.0f} s{tail}")
        if echo is not None and now >= next_report:
            echo(f"  ... waiting for {what} ({now - start_time:.0f} s)")
            next_report = now + 5.0
        time.sleep(min(interval, max(0.0, deadline - now)))

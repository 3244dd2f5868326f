"""A Redis master, one replica and a Sentinel of a test's own on free loopback ports, for the
failover test: the shared stack's Redis stays untouched.

The Sentinel (Debian's ``redis-sentinel``) judges the master down after ``DOWN_AFTER_MS`` without
an answer and promotes the replica; with one Sentinel its quorum is 1. Production runs three
Sentinels (quorum 2) on three machines (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import redis

from tests.conftest import wait_until
from tests.integration.serving import free_port

MASTER_NAME = "signwatch"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        package = "redis-sentinel" if name == "redis-sentinel" else "redis-server"
        raise RuntimeError(f"{name} is not installed (apt-get install -y {package})")
    return found


class ReplicationLink:
    """A TCP relay between the replica and its master. ``cut()`` stops passing the master's
    replication stream on (it waits in the master's buffers, as behind a network partition): what
    the master acknowledges from then on never reaches the replica."""

    def __init__(self, master_port: int) -> None:
        self.master_port = master_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._cut = threading.Event()
        self._closed = threading.Event()
        threading.Thread(target=self._serve, name="replication-link", daemon=True).start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                replica, _ = self.listener.accept()
                master = socket.create_connection(("127.0.0.1", self.master_port))
            except OSError:
                continue
            threading.Thread(target=self._pump, args=(replica, master, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(master, replica, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_master: bool) -> None:
        try:
            while not self._closed.is_set():
                if from_master and self._cut.is_set():
                    time.sleep(0.05)
                    continue
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.close()

    def cut(self) -> None:
        self._cut.set()

    def close(self) -> None:
        self._closed.set()
        self.listener.close()


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_connect_timeout=0.3, socket_timeout=0.5, decode_responses=True)


class SentinelSet:
    """``start()`` starts the master, the replica (synced) and the Sentinel (watching the master);
    ``kill_master()`` is kill -9; ``master_port()`` is the port the Sentinel names now."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ports = {"a": free_port(), "b": free_port()}
        self.sentinel_port = free_port()
        self.processes: dict[str, subprocess.Popen] = {}
        self.link: ReplicationLink | None = None
        self.url = f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{MASTER_NAME}/0"

    def _start_redis(self, name: str, *extra: str) -> None:
        folder = self.folder / name
        folder.mkdir(parents=True, exist_ok=True)
        # as deploy/k8s runs Redis: an append-only file (fsync every second)
        self.processes[name] = subprocess.Popen(
            [_binary("redis-server"), "--port", str(self.ports[name]), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--dir", str(folder),
             "--repl-diskless-sync-delay", "0", *extra],  # a replica syncs at once, not after 5 s
            stdout=(folder / "redis.log").open("ab"), stderr=subprocess.STDOUT)

    def start(self) -> "SentinelSet":
        self._start_redis("a")
        self.link = ReplicationLink(self.ports["a"])  # the replica syncs through it
        self._start_redis("b", "--replicaof", "127.0.0.1", str(self.link.port))
        wait_until(lambda: self._role("b") == ("slave", "up"), 20, interval_s=0.05,
                   what="the replica to sync with the master")
        folder = self.folder / "sentinel"
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "sentinel.conf"  # the Sentinel rewrites it: its own file
        config.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {folder}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.ports['a']} 1\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n")
        self.processes["sentinel"] = subprocess.Popen(
            [_binary("redis-sentinel"), str(config)], stdout=(folder / "sentinel.log").open("ab"),
            stderr=subprocess.STDOUT)
        # the Sentinel knows the master and has found its replica (from the master's INFO)
        wait_until(lambda: self._sentinel_sees_replica(), 20, interval_s=0.1, what="the Sentinel to find the replica")
        return self

    def _role(self, name: str) -> tuple[str, str] | None:
        try:
            info = _client(self.ports[name]).info("replication")
        except redis.RedisError:
            return None
        return info["role"], info.get("master_link_status", "")

    def _sentinel_sees_replica(self) -> bool:
        try:
            return len(_client(self.sentinel_port).sentinel_slaves(MASTER_NAME)) == 1
        except redis.RedisError:
            return False

    def master_port(self) -> int | None:
        try:
            _, port = _client(self.sentinel_port).sentinel_get_master_addr_by_name(MASTER_NAME)
            return int(port)
        except (redis.RedisError, TypeError, ValueError):
            return None

    def master(self) -> str:
        port = self.master_port()
        return next(name for name, p in self.ports.items() if p == port)

    def kill_master(self) -> str:
        """kill -9 the master the Sentinel names: no shutdown, no last write to the replica."""
        name = self.master()
        self.processes[name].kill()
        self.processes[name].wait(10)
        return name

    def partition_replica(self) -> None:
        """From now on the replica gets nothing more from the master (ReplicationLink.cut)."""
        self.link.cut()

    def log(self, name: str, chars: int = 3000) -> str:
        path = self.folder / name / ("sentinel.log" if name == "sentinel" else "redis.log")
        try:
            return path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.processes.clear()
        if self.link is not None:
            self.link.close()

"""Redis: Debian's ``redis-server`` on loopback, in the foreground of its own session, no persistence."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from . import process
from .errors import StackError
from .paths import StackConfig, StackPaths

SERVICE = "redis"
APT_TIMEOUT_S = 900


def redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in ("/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _apt(args: list[str]) -> subprocess.CompletedProcess[str]:
    prefix: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            raise StackError("redis-server is missing; install it (apt-get install -y redis-server) and retry")
        prefix = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        return subprocess.run(
            [*prefix, "apt-get", *args], capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S
        )
    except FileNotFoundError:
        raise StackError("redis-server is missing and apt-get is not available; install Redis 7 and retry") from None
    except subprocess.TimeoutExpired:
        raise StackError(f"apt-get {' '.join(args)} did not finish within {APT_TIMEOUT_S} s") from None


def install(echo: Callable[[str], None]) -> str:
    """The path of redis-server, installed with apt-get when missing."""
    found = redis_binary()
    if found:
        return found
    echo("redis: redis-server is missing, installing it with apt-get ...")
    install_args = ["install", "-y", "--no-install-recommends", "redis-server"]
    result = _apt(install_args)
    if result.returncode != 0:
        echo("redis: apt-get install failed, running apt-get update first ...")
        update = _apt(["update"])
        if update.returncode != 0:
            tail = "\n".join("    " + x for x in (update.stdout + update.stderr).strip().splitlines()[-10:])
            raise StackError(f"apt-get update failed:\n{tail}")
        result = _apt(install_args)
    found = redis_binary()
    if result.returncode != 0 or not found:
        tail = "\n".join("    " + x for x in (result.stdout + result.stderr).strip().splitlines()[-10:])
        raise StackError(f"apt-get install redis-server failed:\n{tail}")
    return found


def check_ports(config: StackConfig) -> None:
    process.require_free_ports(
        "redis", config.host, [config.redis_port],
        "choose another port with --redis-port (SIGNWATCH_STACK_REDIS_PORT)",
    )


def start(paths: StackPaths, config: StackConfig, binary: str) -> process.ProcessRecord:
    check_ports(config)
    paths.redis.mkdir(parents=True, exist_ok=True)
    argv = [
        binary,
        "--bind", config.host,
        "--port", str(config.redis_port),
        "--protected-mode", "yes",
        "--dir", str(paths.redis),
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--logfile", "",  # stdout, which goes to .stack/redis/redis.log
    ]
    # redis rewrites its process title to "redis-server 127.0.0.1:6379", so the marker is the name
    return process.start(
        argv, pid_file=paths.pid_file(SERVICE), log_file=paths.redis_log, marker="redis-server", cwd=paths.redis
    )


def probe(config: StackConfig) -> bool:
    import redis

    client = redis.Redis(host=config.host, port=config.redis_port, socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def data_dir(paths: StackPaths) -> Path:
    return paths.redis

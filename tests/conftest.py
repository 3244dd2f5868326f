"""Shared fixtures. Tests marked ``stack`` talk to the real Kafka, Redis and S3 servers that
``signwatch stack up`` started in the project folder (``make test`` does it); they fail, not skip,
when the stack is down, so a broken stack can never pass for a green run."""

from __future__ import annotations

import contextlib
import time
import uuid
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


def wait_until(predicate, timeout_s: float = 30.0, interval_s: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def stop_processes(*procs, grace_s: float = 60) -> None:
    """SIGTERM every process at once, then wait for each; SIGKILL one that outlasts ``grace_s``."""
    import subprocess

    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def stack():
    from signwatch.stack import status

    st = status(PROJECT)
    data = st.model_dump() if hasattr(st, "model_dump") else st
    down = [name for name in ("kafka", "redis", "s3") if not data[name]["up"]]
    if down:
        pytest.fail(f"the local stack is not running ({', '.join(down)} down): run `signwatch stack up`")
    return data


@pytest.fixture(scope="session")
def private_stack(tmp_path_factory):
    """A second Kafka, Redis and S3 of this test session's own, on other ports, for the tests that
    stop, hang (SIGSTOP) or restart a server: the shared stack stays untouched for every other test.

    Yields ``(root, StackConfig)``; ``signwatch.stack.status(root)`` gives its endpoints and pids,
    ``up(root, config)`` brings back what a test stopped. Stopped at the end of the session.
    """
    import shutil

    from signwatch.stack import down, up
    from signwatch.stack.paths import StackConfig, StackPaths

    root = tmp_path_factory.mktemp("private-stack")
    shared_libs = StackPaths.of(PROJECT).kafka_libs
    if shared_libs.is_dir():  # reuse the jars `make test` fetched instead of asking Maven again
        StackPaths.of(root).kafka.mkdir(parents=True, exist_ok=True)
        shutil.copytree(shared_libs, StackPaths.of(root).kafka_libs, symlinks=True)
    # SeaweedFS's gRPC listeners are HTTP + 10000, so the shared stack already holds 18333, 19333,
    # 19340 and 18888: the private S3 and its companions sit elsewhere (all below the ephemeral range)
    config = StackConfig(
        kafka_port=19092, kafka_controller_port=19093, redis_port=16379, s3_port=18433,
        seaweed_master_port=19433, seaweed_volume_port=19440, seaweed_filer_port=18988, seaweed_admin_port=21646,
    )
    up(root, config, echo=lambda *_: None)
    try:
        yield root, config
    finally:
        down(root, echo=lambda *_: None)


@contextlib.contextmanager
def running_service(argv: list[str], env: dict, log_path: Path, base: str, cwd: Path = PROJECT,
                    timeout_s: float = 120):
    """Start ``signwatch ...`` (``argv`` after the command) as a real process, wait until
    ``{base}/health/ready`` answers 200, yield the process; terminate it afterwards."""
    import subprocess
    import sys

    import httpx

    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "signwatch_services.cli", *argv], env=env, cwd=cwd,
                            stdout=log, stderr=subprocess.STDOUT)

    def ready():
        assert proc.poll() is None, f"{' '.join(argv)} exited: {log_path.read_text()[-3000:]}"
        try:
            return httpx.get(f"{base}/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, timeout_s, 0.2, f"`signwatch {' '.join(argv)}` to be ready")
        yield proc
    finally:
        stop_processes(proc)
        log.close()

"""kill -9 the capture service in the middle of a 1,000-request stream and restart it, on the real
stack: the captured records are exactly the sampled events, none lost, no event id twice, and the
restarted consumer writes again within 15 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from signwatch.capture import read_capture_lines, should_sample
from signwatch.config import Settings
from signwatch.ports import open_store
from tests.conftest import wait_until
from tests.integration.serving import free_port, live_server
from tests.unit.helpers import png_bytes

pytestmark = pytest.mark.stack

REQUESTS = 1000
SAMPLING = 50.0


def _env(stack, unique: str) -> dict[str, str]:
    return {
        "SIGNWATCH_BUS_URL": f"kafka://{stack['kafka']['bootstrap']}",
        "SIGNWATCH_STORE_URL": f"s3://{stack['s3']['bucket']}?endpoint={stack['s3']['endpoint']}",
        "SIGNWATCH_STATE_URL": stack["redis"]["url"],
        "SIGNWATCH_S3_ACCESS_KEY": stack["s3"]["access_key"],
        "SIGNWATCH_S3_SECRET_KEY": stack["s3"]["secret_key"],
        "SIGNWATCH_INFERENCE_TOPIC": f"crash-{unique}.inference",
        "SIGNWATCH_CAPTURE_GROUP": f"crash-{unique}.capture",
        "SIGNWATCH_CAPTURE_PREFIX": f"crash-{unique}/datacapture",
        "SIGNWATCH_CAPTURE_SAMPLING_PERCENTAGE": str(SAMPLING),
        "SIGNWATCH_CAPTURE_FLUSH_SECONDS": "1",
        "SIGNWATCH_CAPTURE_BATCH_RECORDS": "50",
    }


def _start_capture(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, int]:
    cli = Path(sys.executable).parent / "signwatch"
    port = free_port()
    full = {**os.environ, **env, "SIGNWATCH_CAPTURE_PORT": str(port)}
    return subprocess.Popen([str(cli), "serve", "capture"], env=full, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True), port


def _serving(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _captured(store, prefix: str) -> list[str]:
    ids = []
    for key in store.list(prefix):
        records, bad = read_capture_lines(store.get(key))
        assert bad == 0
        ids += [r["eventMetadata"]["eventId"] for r in records]
    return ids


def _alive(capture: subprocess.Popen, log: Path) -> bool:
    """True while the capture process runs; its log in the failure once it has exited."""
    if capture.poll() is not None:
        raise AssertionError(f"capture exited with {capture.returncode}:\n{log.read_text(errors='replace')[-5000:]}")
    return True


def _diagnostics(port: int, publisher) -> str:
    """What a failure needs to be read: the capture's own counters and the server's buffer."""
    lines = [f"publisher buffered (events, bytes): {publisher.buffered if publisher else None}"]
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        lines += [ln for ln in text.splitlines() if ln.startswith(("signwatch_consumer", "signwatch_capture")) and "_created" not in ln]
    except httpx.HTTPError as exc:
        lines.append(f"capture's /metrics did not answer: {exc}")
    return "\n".join(lines)


def test_kill_9_capture_mid_stream_loses_and_duplicates_nothing(stack, unique, tmp_path):
    env = _env(stack, unique)
    settings = Settings(**{k.removeprefix("SIGNWATCH_").lower(): v for k, v in env.items()
                           if k not in ("SIGNWATCH_S3_ACCESS_KEY", "SIGNWATCH_S3_SECRET_KEY")},
                        s3_access_key=env["SIGNWATCH_S3_ACCESS_KEY"], s3_secret_key=env["SIGNWATCH_S3_SECRET_KEY"])
    store = open_store(settings.store_url, env["SIGNWATCH_S3_ACCESS_KEY"], env["SIGNWATCH_S3_SECRET_KEY"])
    prefix = settings.capture_prefix
    log = tmp_path / "capture.log"
    bodies = [png_bytes(seed=i % 16, size=32) for i in range(16)]
    event_ids: list[str] = []
    capture, port = _start_capture(env, log)
    try:
        with live_server(settings) as (url, core), httpx.Client(base_url=url, timeout=30) as client:
            def send(i: int) -> str:
                r = client.post("/invocations", content=bodies[i % 16], headers={"content-type": "image/png"})
                assert r.status_code == 200, r.text
                return r.headers["X-Signwatch-Event-Id"]

            with ThreadPoolExecutor(4) as pool:
                event_ids += pool.map(send, range(400))
                wait_until(lambda: _alive(capture, log) and len(_captured(store, prefix)) >= 50, 90,
                           interval_s=0.5, what="capture to write its first records")
                os.killpg(capture.pid, signal.SIGKILL)  # mid-stream: no flush, no commit, no leave
                capture.wait(10)
                event_ids += pool.map(send, range(400, 700))
                before = len(_captured(store, prefix))
                capture, port = _start_capture(env, log)
                event_ids += pool.map(send, range(700, REQUESTS))
            core.publisher.drain(30)
            wait_until(lambda: _serving(port), 90, interval_s=0.1, what="the restarted capture to start")
            started = time.monotonic()  # its consumer runs: from here the dead member's partitions must come back
            wait_until(lambda: len(_captured(store, prefix)) > before, 60, interval_s=0.25,
                       what="the restarted capture to write")
            resumed_s = time.monotonic() - started
            print(f"restarted capture wrote again {resumed_s:.1f} s after it started")
            sampled = {e for e in event_ids if should_sample(e, SAMPLING)}
            wait_until(lambda: set(_captured(store, prefix)) >= sampled, 90, interval_s=1,
                       what="every sampled event to be captured")
        time.sleep(2)  # let a late (duplicate) file land, if one were coming
        captured = _captured(store, prefix)
        assert len(event_ids) == REQUESTS and len(set(event_ids)) == REQUESTS
        assert len(captured) == len(set(captured)), "an event id was captured twice"
        assert set(captured) == sampled
        assert resumed_s < 15, f"the restarted capture took {resumed_s:.1f} s to write again"
    finally:
        print(_diagnostics(port, core.publisher if "core" in locals() else None))
        if capture.poll() is None:
            os.killpg(capture.pid, signal.SIGTERM)
            capture.wait(30)
        print("--- capture's log (both runs) ---\n" + log.read_text(errors="replace")[-20_000:])
        for key in store.list(f"crash-{unique}/"):
            store.delete(key)

"""Kafka stopped, Kafka hung (SIGSTOP), S3 down, each for 20 s, while requests keep coming, on the
tests' private stack (the shared one is never touched): no request fails, latency stays normal,
the service stays ready (it answers; a down broker or store shows in the body of /health/ready,
never by 503: docs/operations.md), and every event (claim checks included) arrives exactly once."""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from signwatch.config import Settings
from signwatch.events import InferenceEvent
from signwatch.ports import open_bus, open_store
from signwatch.publishing import resolve_input
from signwatch.stack import status, up
from signwatch.stack import process as stack_process
from signwatch.stack.paths import StackPaths
from tests.conftest import wait_until
from tests.integration.serving import live_server
from tests.unit.helpers import png_bytes

pytestmark = pytest.mark.stack

OUTAGE_S = 20.0
CLIENTS = 4
SMALL = png_bytes(seed=1, size=8)  # inline in the event
LARGE = png_bytes(seed=2, size=64)  # ~12 KB: over the 4 KiB inline limit, travels by claim check


@pytest.fixture(scope="module")
def served(private_stack):
    root, config = private_stack
    st = status(root)
    topic = f"outage-{os.getpid()}-{int(time.time())}.inference"
    settings = Settings(
        bus_url=f"kafka://{config.kafka_bootstrap}", state_url="memory://",
        store_url=f"s3://{config.bucket}?endpoint={config.s3_endpoint}",
        s3_access_key=st.s3.access_key, s3_secret_key=st.s3.secret_key,
        inference_topic=topic, inline_input_limit_bytes=4096, endpoint=f"outage{os.getpid()}",
    )
    with live_server(settings) as (url, core):
        yield root, config, settings, url, core


class Load:
    """CLIENTS closed-loop clients, alternating small and large inputs, until stopped."""

    def __init__(self, url: str) -> None:
        self.url, self.results, self.stopping = url, [], threading.Event()
        self.pool = ThreadPoolExecutor(CLIENTS)
        self.futures = [self.pool.submit(self._client, i) for i in range(CLIENTS)]

    def _client(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = n
            while not self.stopping.is_set():
                body = LARGE if i % 2 else SMALL
                t0 = time.monotonic()
                r = client.post("/invocations", content=body, headers={"content-type": "image/png"})
                self.results.append((t0, time.monotonic() - t0, r.status_code, r.headers.get("X-Signwatch-Event-Id")))
                i += 1

    def stop(self) -> None:
        self.stopping.set()
        for f in self.futures:
            f.result(60)
        self.pool.shutdown()

    def p99(self, start: float, end: float) -> float:
        lat = sorted(d for t, d, _, _ in self.results if start <= t < end)
        assert len(lat) > 20, f"only {len(lat)} requests between {start} and {end}"
        return lat[int(0.99 * (len(lat) - 1))]


def _ready(url: str) -> dict:
    return httpx.get(f"{url}/health/ready", timeout=10).json()


def _dependency(url: str, name: str) -> bool:
    return _ready(url)["dependencies"][name]


def _stays_ready(url: str, until: float, down: str) -> None:
    """Probe as Kubernetes does (every 0.5 s here, 3 s timeout) until ``until``: every probe of
    /health/ready, /v2/health/ready and /ping answers 200 while ``down`` shows down in the body."""
    probes = []
    while time.monotonic() < until:
        ready = httpx.get(f"{url}/health/ready", timeout=3)
        v2 = httpx.get(f"{url}/v2/health/ready", timeout=3).status_code
        ping = httpx.get(f"{url}/ping", timeout=3).status_code
        probes.append((ready.status_code, v2, ping, ready.json()["dependencies"][down]))
        time.sleep(0.5)
    assert len(probes) >= 10 and set(probes) == {(200, 200, 200, False)}, Counter(probes)


def _check_delivery(settings: Settings, core, load: Load) -> None:
    assert all(status == 200 for _, _, status, _ in load.results), Counter(s for _, _, s, _ in load.results)
    sent = [e for _, _, _, e in load.results]
    assert core.publisher.drain(90), f"still buffered: {core.publisher.buffered}"
    assert core.publisher.outcomes.labels("dropped")._value.get() == 0
    assert core.publisher.outcomes.labels("failed")._value.get() == 0
    bus = open_bus(settings.bus_url)
    store = open_store(settings.store_url, settings.s3_access_key.get_secret_value(),
                       settings.s3_secret_key.get_secret_value())
    wanted, seen, events = set(sent), Counter(), {}
    consumer = bus.consumer([settings.inference_topic], f"check-{time.time_ns()}")
    try:
        def all_arrived() -> bool:
            for m in consumer.poll(timeout_ms=500, max_records=2000):
                if m.key in wanted:
                    seen[m.key] += 1
                    events[m.key] = m.value
            return set(seen) >= wanted
        wait_until(all_arrived, 90, interval_s=0, what="every event on the topic")
        time.sleep(1)
        all_arrived()  # anything duplicated right behind
    finally:
        consumer.close()
        bus.close()
    assert [k for k, n in seen.items() if n > 1] == [], "events arrived more than once"
    claims = [InferenceEvent.model_validate_json(v) for v in events.values()]
    claims = [e for e in claims if e.input.ref is not None]
    assert len(claims) >= len(sent) // 3, "the large inputs should travel by claim check"
    for event in claims[:: max(1, len(claims) // 50)]:
        assert resolve_input(event.input, store) == LARGE


def _baseline(load: Load, seconds: float = 6.0) -> tuple[float, float]:
    t0 = time.monotonic()
    time.sleep(seconds)
    return t0, time.monotonic()


def _record(root, name: str):
    return stack_process.ProcessRecord.load(StackPaths.of(root).pid_file(name))


def test_s3_down_for_20_s(served):
    root, config, settings, url, core = served
    load = Load(url)
    try:
        b0, b1 = _baseline(load)
        record = _record(root, "seaweed")
        stack_process.stop(record, timeout=20)
        try:
            down0 = time.monotonic()
            wait_until(lambda: _dependency(url, "store") is False, 10, what="readiness to see S3 down")
            _stays_ready(url, down0 + OUTAGE_S, "store")
            down1 = time.monotonic()
        finally:
            up(root, config, echo=None)  # back for whatever runs next, even when this failed
    finally:
        load.stop()
    assert core.publisher.retries.labels("claim_check")._value.get() > 0, "no claim check waited for S3"
    normal, outage = load.p99(b0, b1), load.p99(down0, down1)
    print(f"S3 down: p99 {outage * 1000:.1f} ms (normal {normal * 1000:.1f} ms), {len(load.results)} requests")
    assert outage <= 3 * normal + 0.05, f"p99 {outage * 1000:.0f} ms during the outage, {normal * 1000:.0f} ms before"
    _check_delivery(settings, core, load)


def test_kafka_hung_for_20_s(served):
    root, config, settings, url, core = served
    load = Load(url)
    pid = _record(root, "kafka").pid
    try:
        b0, b1 = _baseline(load)
        os.kill(pid, signal.SIGSTOP)
        try:
            hung0 = time.monotonic()
            wait_until(lambda: _dependency(url, "bus") is False, 10, what="readiness to see Kafka hang")
            _stays_ready(url, hung0 + OUTAGE_S, "bus")
            hung1 = time.monotonic()
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda: _dependency(url, "bus"), 60, interval_s=0.5, what="Kafka back")
    finally:
        load.stop()
    normal, hung = load.p99(b0, b1), load.p99(hung0, hung1)
    lat = [d for t, d, _, _ in load.results if hung0 <= t < hung1]
    print(f"kafka hung: p99 {hung * 1000:.1f} ms (normal {normal * 1000:.1f} ms), "
          f"p50 {statistics.median(lat) * 1000:.1f} ms, {len(lat)} requests")
    assert hung <= 3 * normal, f"p99 {hung * 1000:.0f} ms while Kafka hung, {normal * 1000:.0f} ms before"
    _check_delivery(settings, core, load)


def test_kafka_stopped_for_20_s(served):
    root, config, settings, url, core = served
    load = Load(url)
    try:
        b0, b1 = _baseline(load)
        stack_process.stop(_record(root, "kafka"), timeout=30)
        try:
            down0 = time.monotonic()
            wait_until(lambda: _dependency(url, "bus") is False, 10, what="readiness to see Kafka down")
            _stays_ready(url, down0 + OUTAGE_S, "bus")
            down1 = time.monotonic()
        finally:
            up(root, config, echo=None)
        wait_until(lambda: _dependency(url, "bus"), 60, interval_s=0.5, what="Kafka back")
    finally:
        load.stop()
    normal, outage = load.p99(b0, b1), load.p99(down0, down1)
    print(f"kafka stopped: p99 {outage * 1000:.1f} ms (normal {normal * 1000:.1f} ms), {len(load.results)} requests")
    assert outage <= 3 * normal + 0.05, f"p99 {outage * 1000:.0f} ms while Kafka was down, {normal * 1000:.0f} ms before"
    _check_delivery(settings, core, load)

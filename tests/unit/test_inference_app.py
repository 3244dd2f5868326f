from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient

from signwatch.config import Settings
from signwatch.events import InferenceEvent
from signwatch.runtime import open_ports
from signwatch_services.inference.server import build_core, create_app
from tests.conftest import wait_until
from tests.unit.helpers import png_bytes


@pytest.fixture
def app_and_ports(tmp_path, unique):
    settings = Settings(bus_url=f"memory://app-{unique}", store_url=tmp_path.as_uri(),
                        state_url="memory://", max_body_bytes=64 * 1024,
                        inline_input_limit_bytes=2048)
    ports = open_ports(settings)
    core = build_core(settings, ports)
    with TestClient(create_app(core)) as client:
        yield client, ports, core
    core.close()


def _events(ports):
    return [InferenceEvent.model_validate_json(m.value)
            for m in ports.bus.consumer(["signwatch.inference"], "t").poll(timeout_ms=200)]


def test_invocation_answers_top5_and_publishes_one_event(app_and_ports):
    client, ports, core = app_and_ports
    body = png_bytes(size=32)
    r = client.post("/invocations", content=body,
                    headers={"content-type": "image/png", "X-Amzn-SageMaker-Inference-Id": "abc"})
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert len(preds) == 5
    assert {"class_id", "label", "probability"} == set(preds[0])
    probs = [p["probability"] for p in preds]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    core.publisher.drain()
    [event] = _events(ports)
    assert event.event_id == r.headers["X-Signwatch-Event-Id"]
    assert event.inference_id == "abc"
    assert event.output.model_dump(mode="json") == r.json()
    # Larger than the 2 KiB inline limit: the input travels by claim check.
    assert event.input.data is None and ports.store.get(event.input.ref) == body


def test_npy_and_concurrent_requests_share_batches(app_and_ports):
    client, ports, core = app_and_ports
    buf = io.BytesIO()
    np.save(buf, np.zeros((16, 16, 3), dtype=np.uint8))
    r = client.post("/invocations", content=buf.getvalue(), headers={"content-type": "application/x-npy"})
    assert r.status_code == 200


@pytest.mark.parametrize("body, ctype, status", [
    (b"", "image/png", 400),
    (b"this is not an image", "image/png", 400),
    (b"plain text", "text/plain", 415),
    (png_bytes(size=32)[:120], "image/png", 400),
    (b"\x89PNG\r\n\x1a\n" + b"0" * 70_000, "image/png", 413),
])
def test_bad_requests_get_a_json_4xx_and_publish_nothing(app_and_ports, body, ctype, status):
    client, ports, core = app_and_ports
    r = client.post("/invocations", content=body, headers={"content-type": ctype})
    assert r.status_code == status
    assert set(r.json()["error"]) == {"code", "message"}
    # a body refused as too large may not have been read to its end: the connection is not kept
    assert (r.headers.get("connection") == "close") == (status == 413)
    core.publisher.drain()
    assert _events(ports) == []


def test_health_and_metrics(app_and_ports):
    client, ports, core = app_and_ports
    assert client.get("/health/live").json() == {"alive": True}
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert client.get("/ping").status_code == 200
    client.post("/invocations", content=png_bytes(), headers={"content-type": "image/png"})
    core.publisher.drain()
    text = client.get("/metrics").text
    assert 'signwatch_events_total{outcome="published"} 1.0' in text
    assert "signwatch_inference_latency_seconds_count 1.0" in text


class FlakyBus:
    """Refuses every publish while ``down``: an outage, then the broker is back."""

    def __init__(self):
        self.down, self.published = True, []

    def ensure_topics(self, *a): pass

    def publish(self, topic, key, value, on_delivery=None):
        if self.down:
            raise RuntimeError("broker unreachable")
        self.published.append(key)
        if on_delivery:
            on_delivery(None)

    def flush(self, timeout_s=10): pass
    def ping(self): return not self.down
    def close(self): pass


def test_a_bus_outage_never_fails_a_request_and_the_event_waits_then_flows(tmp_path):
    from signwatch.ports.state_memory import MemoryState
    from signwatch.ports.store_file import FileStore
    from signwatch.runtime import Ports

    bus = FlakyBus()
    settings = Settings(store_url=tmp_path.as_uri())
    core = build_core(settings, Ports(bus, FileStore(tmp_path), MemoryState()))
    core.publisher.backoff_s = core.publisher.max_backoff_s = 0.02
    with TestClient(create_app(core)) as client:
        r = client.post("/invocations", content=png_bytes(), headers={"content-type": "image/png"})
        assert r.status_code == 200
        wait_until(lambda: core.publisher.retries.labels("bus")._value.get() >= 2, 10, what="retries")
        text = client.get("/metrics").text
        assert "signwatch_events_buffered 1.0" in text
        assert 'signwatch_events_total{outcome="failed"} 0.0' in text
        ready = client.get("/health/ready")  # it answers: ready; the broker shows in the body and metrics
        assert ready.status_code == 200, ready.json()
        assert ready.json()["dependencies"] == {"bus": False, "store": True}
        assert 'signwatch_dependency_up{dependency="bus"} 0.0' in client.get("/metrics").text
        assert client.get("/v2/health/ready").status_code == 200 and client.get("/ping").status_code == 200
        bus.down = False
        assert core.publisher.drain(10)
        assert bus.published == [r.headers["X-Signwatch-Event-Id"]]
        text = client.get("/metrics").text
        assert 'signwatch_events_total{outcome="published"} 1.0' in text and "signwatch_events_buffered 0.0" in text
        assert client.get("/health/ready").json()["dependencies"]["bus"] is True
        assert 'signwatch_dependency_up{dependency="bus"} 1.0' in client.get("/metrics").text
    core.close()


def test_not_ready_while_the_event_buffer_is_full_and_ready_again_once_it_drains(tmp_path):
    from signwatch.ports.state_memory import MemoryState
    from signwatch.ports.store_file import FileStore
    from signwatch.runtime import Ports

    bus = FlakyBus()
    settings = Settings(store_url=tmp_path.as_uri(), event_buffer_events=2)
    core = build_core(settings, Ports(bus, FileStore(tmp_path), MemoryState()))
    core.publisher.backoff_s = core.publisher.max_backoff_s = 0.02
    with TestClient(create_app(core)) as client:
        for _ in range(2):
            assert client.post("/invocations", content=png_bytes(), headers={"content-type": "image/png"}).status_code == 200
        for path in ("/health/ready", "/v2/health/ready", "/ping"):
            assert client.get(path).status_code == 503, path
        assert client.get("/health/ready").json()["checks"]["event_buffer"] is False
        bus.down = False
        assert core.publisher.drain(10)
        for path in ("/health/ready", "/v2/health/ready", "/ping"):
            assert client.get(path).status_code == 200, path
    core.close()

"""``POST /ground-truth`` on the monitor: labels in over HTTP, out on the ground-truth topic."""

from __future__ import annotations

import json
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from signwatch.config import Settings
from signwatch.data.classes import CLASS_NAMES
from signwatch.events import GroundTruthRecord
from signwatch.monitoring.groundtruth import MergeCounts, class_index, parse_label
from signwatch.ports.bus import PublishError
from signwatch.ports.bus_memory import MemoryBus
from signwatch_services.monitor.ground_truth_routes import (
    MAX_GROUND_TRUTH_BODY_BYTES,
    MAX_LABELS_PER_CALL,
    ground_truth_router,
)

TOKEN = "t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STOP = CLASS_NAMES.index("Stop")


class Served:
    """What the monitor knows of the served model: None until it knows it."""

    def __init__(self, names: tuple[str, ...] | None = CLASS_NAMES) -> None:
        self.names = names

    def __call__(self) -> tuple[str, ...] | None:
        return self.names


def make_client(settings: Settings, bus, served: Served) -> TestClient:
    app = FastAPI()
    app.include_router(ground_truth_router(settings, bus, served))
    return TestClient(app)


@pytest.fixture
def api(unique):
    settings = Settings(bus_url=f"memory://gt-{unique}", admin_token=TOKEN, endpoint="signs")
    bus = MemoryBus(f"gt-{unique}")
    served = Served()
    with make_client(settings, bus, served) as client:
        yield client, bus, settings, served


def published(bus: MemoryBus, settings: Settings) -> list:
    consumer = bus.consumer([settings.ground_truth_topic], f"reader-{time.monotonic_ns()}")
    out = []
    while batch := consumer.poll(timeout_ms=10, max_records=100_000):
        out.extend(batch)
    consumer.close()
    return out


def read_back(value: bytes, names=CLASS_NAMES):
    """The topic's value as the monitor reads it: a GroundTruthRecord, and parse_label's label."""
    record = GroundTruthRecord.model_validate_json(value)
    counts = MergeCounts()
    label = parse_label(value, class_index(names), len(names), "topic", counts)
    assert label is not None, counts.as_dict()
    return record, label


def post(client, body, headers=AUTH, **kw):
    return client.post("/ground-truth", content=json.dumps(body), headers={"content-type": "application/json",
                                                                          **headers}, **kw)


def test_both_shapes_published_with_the_id_as_key(api):
    client, bus, settings, _ = api
    body = [
        {"groundTruthData": {"data": "14", "encoding": "CSV"}, "eventMetadata": {"eventId": "e-1"},
         "eventVersion": "0"},
        {"groundTruthData": {"data": "Stop", "encoding": "CSV"},
         "eventMetadata": {"eventId": "e-2", "inferenceId": "inf-2"}, "eventVersion": "0"},
        {"id": "c-1", "label": 3},
        {"id": "c-2", "label": "3"},
        {"inferenceId": "c-3", "label": "Stop"},
        {"eventId": "c-4", "label": "No entry"},
    ]
    r = post(client, body)
    assert r.status_code == 202, r.text
    assert r.json() == {"received": 6, "published": 6, "rejected": {}, "examples": []}

    messages = published(bus, settings)
    by_key = {m.key: m for m in messages}
    assert sorted(by_key) == ["c-1", "c-2", "c-3", "c-4", "e-1", "inf-2"]  # inferenceId first, as the join
    expected = {"e-1": STOP, "inf-2": STOP, "c-1": 3, "c-2": 3, "c-3": STOP, "c-4": CLASS_NAMES.index("No entry")}
    for key, m in by_key.items():
        record, label = read_back(m.value)
        assert record.endpoint == "signs"
        assert label.ids[0] == key and label.class_id == expected[key]
    assert read_back(by_key["inf-2"].value)[1].ids == ("inf-2", "e-2")


def test_a_class_name_with_a_comma_survives_the_csv_field(unique):
    names = ("Go", "Stop, then go")
    settings = Settings(bus_url=f"memory://gt-{unique}", admin_token=TOKEN)
    bus = MemoryBus(f"gt-{unique}")
    with make_client(settings, bus, Served(names)) as client:
        r = post(client, [{"id": "a", "label": "Stop, then go"}])
    assert r.json()["published"] == 1, r.text
    [m] = published(bus, settings)
    assert read_back(m.value, names)[1].class_id == 1


def test_wrong_labels_are_reported_and_not_published(api):
    client, bus, settings, _ = api
    body = [
        {"id": "ok", "label": STOP},
        {"id": "x1", "label": "Unicorn crossing"},
        {"id": "x2", "label": 43},  # GTSRB has 0..42
        {"label": STOP},
        {"id": "", "label": STOP},
        {"id": "x" * 129, "label": STOP},
        {"id": "x3"},
        {"id": "x4", "label": True},
        {"id": "x5", "label": STOP, "lable": 1},
        {"groundTruthData": {"data": "14"}, "eventMetadata": {"eventId": "x6"}, "extra": 1},
        {"groundTruthData": {"data": "14", "encoding": "JSON"}, "eventMetadata": {"eventId": "x7"}},
        {"id": "x8", "label": STOP, "endpoint": "elsewhere"},
        "not an object",
        {"groundTruthData": {"data": 14}, "eventMetadata": {"eventId": "ok-2"}},
    ]
    r = post(client, body)
    assert r.status_code == 202, r.text
    out = r.json()
    assert out["received"] == len(body) and out["published"] == 2
    assert out["rejected"] == {"encoding_not_csv": 1, "id_too_long": 1, "no_id": 2, "no_label": 2,
                               "not_a_ground_truth_record": 1, "not_an_object": 1, "other_endpoint": 1,
                               "unknown_class": 2, "unknown_field": 1}
    assert out["examples"][0] == "[1]: unknown class 'Unicorn crossing'"
    assert any(e.startswith("[3]: no_id") for e in out["examples"])
    assert sorted(m.key for m in published(bus, settings)) == ["ok", "ok-2"]


def test_admin_token_required(api, unique):
    client, bus, settings, _ = api
    r = post(client, [], headers={})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    r = post(client, [], headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
    assert published(bus, settings) == []
    with make_client(Settings(bus_url=f"memory://gt-{unique}"), bus, Served()) as no_token:
        r = post(no_token, [{"id": "a", "label": 1}])
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"


def test_refusals_are_json(api):
    client, *_ = api
    r = client.post("/ground-truth", content=b"[]", headers={**AUTH, "content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = client.post("/ground-truth", content=b"[]", headers=AUTH)
    assert r.status_code == 415
    r = client.post("/ground-truth", content=b"[{", headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = post(client, {"id": "a", "label": 1})
    assert r.status_code == 422 and r.json()["error"]["code"] == "not_a_list"
    r = post(client, [])
    assert r.status_code == 202 and r.json() == {"received": 0, "published": 0, "rejected": {}, "examples": []}


def test_bodies_over_the_limits_are_refused(api):
    client, bus, settings, _ = api
    r = post(client, [{"id": str(i), "label": 1} for i in range(MAX_LABELS_PER_CALL + 1)])
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_labels"
    assert published(bus, settings) == []
    big = b"[" + b" " * MAX_GROUND_TRUTH_BODY_BYTES + b"]"
    r = client.post("/ground-truth", content=big, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    def chunks():  # no Content-Length: refused while reading
        for _ in range(9):
            yield b" " * (1024 * 1024)

    r = client.post("/ground-truth", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_ten_thousand_labels_in_one_call(api):
    client, bus, settings, _ = api
    body = [{"id": f"inference-{i:05d}", "label": i % 43 if i % 2 else CLASS_NAMES[i % 43]}
            for i in range(MAX_LABELS_PER_CALL)]
    started = time.perf_counter()
    r = post(client, body)
    took = time.perf_counter() - started
    assert r.status_code == 202, r.text
    assert r.json()["published"] == MAX_LABELS_PER_CALL
    assert took < 3.0, f"{took:.2f} s for {MAX_LABELS_PER_CALL} labels"
    assert len(published(bus, settings)) == MAX_LABELS_PER_CALL


def test_503_while_the_model_is_unknown(api):
    client, bus, settings, served = api
    served.names = None
    r = post(client, [{"id": "a", "label": 1}])
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_unknown"
    assert int(r.headers["retry-after"]) > 0
    served.names = CLASS_NAMES  # known: taken
    assert post(client, [{"id": "a", "label": 1}]).status_code == 202


class BusDown(MemoryBus):
    """Acknowledges the first ``delivered`` messages, then fails the rest (a broker gone away)."""

    def __init__(self, name: str, delivered: int) -> None:
        super().__init__(name)
        self.left = delivered

    def publish(self, topic, key, value, on_delivery=None, headers=None) -> None:
        if self.left > 0:
            self.left -= 1
            return super().publish(topic, key, value, on_delivery, headers)
        if on_delivery:
            on_delivery(PublishError("broker unreachable"))

    def flush(self, timeout_s: float = 10.0) -> None:
        raise PublishError("3 messages not delivered within 10.0s")


def test_503_with_what_was_published_when_the_bus_fails(unique):
    settings = Settings(bus_url=f"memory://gt-{unique}", admin_token=TOKEN)
    bus = BusDown(f"gt-{unique}", delivered=2)
    with make_client(settings, bus, Served()) as client:
        r = post(client, [{"id": str(i), "label": 1} for i in range(5)] + [{"id": "bad", "label": 99}])
    assert r.status_code == 503
    out = r.json()
    assert out["error"]["code"] == "bus_unavailable" and "again" in out["error"]["message"]
    assert (out["received"], out["published"], out["rejected"]) == (6, 2, {"unknown_class": 1})
    assert "retry-after" in r.headers


def test_the_runner_reads_the_classes_from_the_monitor_loop(unique, tmp_path):
    from signwatch.model.core import ModelSpec
    from signwatch.model.published import ModelFacts, publish_manifest
    from signwatch.runtime import open_ports
    from signwatch_services.monitor.server import build_loop

    settings = Settings(bus_url=f"memory://gt-{unique}", store_url=tmp_path.as_uri(), state_url="memory://",
                        endpoint="ep", admin_token=TOKEN)
    ports = open_ports(settings)
    now = [0.0]
    facts = ModelFacts.for_settings(settings, ports.store, reload_s=30, first_retry_s=1, clock=lambda: now[0])
    loop = build_loop(settings, ports=ports, facts=facts)
    client = make_client(settings, ports.bus, loop.class_names)
    loop.run_once()
    assert loop.handler.monitor is None and post(client, [{"id": "a", "label": 1}]).status_code == 503

    names = tuple(f"sign-{i}" for i in range(10))
    publish_manifest(ports.store, "ep", ModelSpec(architecture="resnet18", input_size=32, class_names=names,
                                                  version="x"))
    now[0] += 2  # past the first retry
    loop.run_once()
    assert loop.class_names() == names
    r = post(client, [{"id": "a", "label": "sign-7"}, {"id": "b", "label": "Stop"}])
    assert r.status_code == 202 and r.json()["published"] == 1 and r.json()["rejected"] == {"unknown_class": 1}

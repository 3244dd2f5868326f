"""The monitor service on the in-memory bus: it only parses, calls the library and publishes;
violations go to the bus (v2, by reference) and the metrics say what it counted and tested."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from signwatch.config import Settings
from signwatch.events import ViolationEvent
from signwatch.model.core import load_spec
from signwatch.model.published import publish_manifest
from signwatch.runtime import open_ports
from signwatch_services.monitor.server import build_loop
from tests.conftest import wait_until
from tests.unit.helpers import inference_event


def test_violations_reach_the_bus_and_the_metrics_count_them(tmp_path, unique):
    settings = Settings(bus_url=f"memory://svc-{unique}", state_url="memory://", store_url=tmp_path.as_uri(),
                        endpoint="ep")
    ports = open_ports(settings)
    registry = CollectorRegistry()
    publish_manifest(ports.store, "ep", load_spec())  # what the inference service does at start
    loop = build_loop(settings, ports=ports, registry=registry)
    for _ in range(120):
        e = inference_event(class_id=14, probability=0.999)
        ports.bus.publish(settings.inference_topic, e.event_id, e.to_bytes())
    ports.bus.publish(settings.inference_topic, "bad", b"not an event")
    while loop.processed < 121 or not loop.handler.idle:
        loop.run_once()
    got = [ViolationEvent.model_validate_json(m.value)
           for m in ports.bus.consumer([settings.violations_topic], "inspect").poll(timeout_ms=100)]
    over = [v for v in got if v.check_name == "over_prediction"]
    assert len(over) == 1 and over[0].class_id == 14 and over[0].samples
    assert all(ports.store.exists(s.ref) for s in over[0].samples)
    text = generate_latest(registry).decode()
    assert 'signwatch_monitor_predictions_total{class_id="14",endpoint="ep"} 120.0' in text
    assert 'signwatch_monitor_violations_total{check="over_prediction",endpoint="ep",state="open"} 1.0' in text
    assert "signwatch_monitor_drift_p_value" in text and "signwatch_monitor_detection_latency_seconds_count" in text
    assert "signwatch_monitor_consumer_lag_seconds" in text and "signwatch_monitor_estimated_accuracy" in text
    dead = ports.bus.consumer([f"{settings.inference_topic}.dlq"], "inspect").poll(timeout_ms=100)
    assert [m.value for m in dead] == [b"not an event"]
    assert loop.handler.monitor.windows.time_window(over[0].time.timestamp() + 1).unreadable == 1


def test_a_claim_whose_claimer_died_is_published_once_by_another_replicas_sweep(tmp_path, unique):
    from datetime import datetime, timezone

    from signwatch.monitoring import Monitor, MonitorConfig
    from signwatch.ports import open_bus
    from signwatch.ports.state_memory import MemoryState
    from signwatch.ports.store_file import FileStore
    from signwatch_services.monitor.metrics import MonitorMetrics
    from signwatch_services.monitor.server import MonitorHandler

    clock = [1_800_000_000.0]
    state = MemoryState(clock=lambda: clock[0])
    config = MonitorConfig(endpoint="ep", outbox_grace_s=15)
    names = load_spec().class_names
    dead = Monitor(state, FileStore(tmp_path), config, names, clock=lambda: clock[0])
    claimed = []
    for i in range(120):  # the claimer counts, claims, and dies before publishing anything
        t = datetime.fromtimestamp(clock[0] + i, timezone.utc)  # its clock stands still: the leases hold
        claimed += dead.observe(inference_event(class_id=14, probability=0.999, time=t))
    assert any(v.check_name == "over_prediction" for v in claimed)
    bus, registry = open_bus(f"memory://outbox-{unique}"), CollectorRegistry()
    alive = MonitorHandler(monitor=Monitor(state, FileStore(tmp_path), config, names, clock=lambda: clock[0]),
                           bus=bus, topic="violations", metrics=MonitorMetrics(registry, "ep"), sweep_every_s=0)

    def on_topic():
        return [ViolationEvent.model_validate_json(m.value)
                for m in bus.consumer(["violations"], f"inspect-{len(claimed)}-{clock[0]}").poll(timeout_ms=100)]

    alive.sweep()
    assert on_topic() == [], "the claimer's lease still holds: it may yet publish"
    clock[0] += 16
    alive.sweep()
    alive.sweep()  # a second sweep finds nothing left
    published = on_topic()
    assert sorted(v.violation_id for v in published) == sorted(v.violation_id for v in claimed), "each once"
    by_id = {v.violation_id: v for v in claimed}
    assert all(v == by_id[v.violation_id] for v in published), "the very violations claimed"
    text = generate_latest(registry).decode()
    assert f'signwatch_monitor_outbox_republished_total{{endpoint="ep"}} {float(len(claimed))}' in text
    assert state.outbox(dead.incidents.outbox.key) == {}


def test_labels_from_the_topic_and_from_files_join_once_and_show_in_the_metrics(tmp_path, unique):
    from datetime import datetime, timezone

    from signwatch.monitoring.groundtruth import label_line, write_labels
    from signwatch_services.monitor.server import build_label_loop

    settings = Settings(bus_url=f"memory://gt-{unique}", state_url="memory://", store_url=tmp_path.as_uri(),
                        endpoint="ep", ground_truth_poll_seconds=0.01)
    ports = open_ports(settings)
    registry = CollectorRegistry()
    publish_manifest(ports.store, "ep", load_spec())
    loop = build_loop(settings, ports=ports, registry=registry)
    labels = build_label_loop(settings, loop, ports, registry)
    events = [inference_event(class_id=i % 43, probability=0.9, inference_id=f"req-{i}") for i in range(60)]
    for e in events:
        ports.bus.publish(settings.inference_topic, e.event_id, e.to_bytes())
    while loop.processed < 60 or not loop.handler.idle:
        loop.run_once()
    # 20 by event id on the topic (one of them twice), 20 by the client's id in a file, a bad record
    for e in events[:20] + events[:1]:
        ports.bus.publish(settings.ground_truth_topic, e.event_id, label_line(e.event_id, e.output.predictions[0].class_id).encode())
    ports.bus.publish(settings.ground_truth_topic, "x", b"{not json")
    write_labels(ports.store, "ep", [(e.inference_id, 0) for e in events[20:40]], datetime.now(timezone.utc))
    ports.bus.publish(settings.ground_truth_topic, "y", label_line("req-50", "no such class").encode())
    def joined():
        labels.run_once()
        return loop.handler.monitor.labels.stats(datetime.now(timezone.utc).timestamp())["matched"] >= 40
    wait_until(joined, 30, 0, "the labels of the topic and of the file to be joined")
    labels.run_once()
    stats = loop.handler.monitor.labels.stats(datetime.now(timezone.utc).timestamp())
    assert stats["matched"] == 40 and stats["duplicates"] == 1 and stats["predictions_pending"] == 20
    wait_until(lambda: loop.run_once() is not None and not loop.handler.monitor.labels_changed, 30, 0,
               "the monitor to judge the labels with no prediction arriving")
    snap = loop.handler.monitor.quality
    assert snap["time"]["labels"] == 40 and snap["time"]["accuracy"] == 0.5, snap["time"]
    text = generate_latest(registry).decode()
    assert 'signwatch_ground_truth_labels_total{endpoint="ep",outcome="matched"} 40.0' in text
    assert 'signwatch_ground_truth_labels_total{endpoint="ep",outcome="unknown_class"} 1.0' in text
    assert 'signwatch_monitor_quality_metric{endpoint="ep",metric="accuracy",window="time"} 0.5' in text
    dead = ports.bus.consumer([f"{settings.ground_truth_topic}.dlq"], "inspect").poll(timeout_ms=100)
    assert [m.value for m in dead] == [b"{not json"]

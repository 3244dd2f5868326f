"""The monitor service on the in-memory bus: it only parses, calls the library and publishes;
violations go to the bus (v2, by reference) and the metrics say what it counted and tested."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from signwatch.config import Settings
from signwatch.events import ViolationEvent
from signwatch.runtime import open_ports
from signwatch_services.monitor.server import build_loop
from tests.unit.helpers import inference_event


def test_violations_reach_the_bus_and_the_metrics_count_them(tmp_path, unique):
    settings = Settings(bus_url=f"memory://svc-{unique}", state_url="memory://", store_url=tmp_path.as_uri(),
                        endpoint="ep")
    ports = open_ports(settings)
    registry = CollectorRegistry()
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

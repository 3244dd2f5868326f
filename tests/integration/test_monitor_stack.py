"""The monitor on the real Kafka, Redis and S3, fed the shipped model's real outputs.

The pools of predictions come from running the model once per session over rendered clean,
snowy, night and foggy signs and over signs attacked into Stop (targeted PGD at 16/255); each
stream resamples them at 1 request per second of event time, ending now.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import boto3
import httpx
import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from signwatch.config import Settings
from signwatch.events import ViolationEvent
from signwatch.model.core import load_spec
from signwatch.model.published import publish_manifest
from signwatch.monitoring import Monitor, MonitorConfig, read_snapshot, registry
from signwatch.monitoring.features import features_of
from signwatch.monitoring.streams import model_pools, stream
from signwatch.monitoring.windows import Windows
from signwatch.ports import open_bus, open_state
from signwatch.ports.state_memory import MemoryState
from signwatch.ports.store_file import FileStore
from signwatch.publishing import make_input_payload
from signwatch.runtime import open_ports
from signwatch_services.monitor.server import build_loop
from tests.conftest import PROJECT, wait_until
from tests.integration.redis_server import RedisServer
from tests.unit.helpers import png_bytes

pytestmark = pytest.mark.stack
DRIFT_CHECKS = {k.name for k in registry.CHECKS if k.needs != "nothing"}
PAYLOAD = make_input_payload(png_bytes(seed=5), "image/png")
SHIPPED = load_spec()  # the shipped model's manifest: the pools are its outputs


@pytest.fixture(scope="module")
def pools():
    return model_pools({"clean": 500, "attacked": 32, "snow": 150, "night": 150, "fog": 150})


def _settings(stack, name: str, state_url: str | None = None) -> Settings:
    s3 = stack["s3"]
    return Settings(
        bus_url=f"kafka://{stack['kafka']['bootstrap']}", state_url=state_url or stack["redis"]["url"],
        store_url=f"s3://{s3['bucket']}?endpoint={s3['endpoint']}", s3_access_key=s3["access_key"],
        s3_secret_key=s3["secret_key"], inference_topic=f"{name}.inference", violations_topic=f"{name}.violations",
        endpoint=name, topic_partitions=3, monitor_group=name)


def _publish(settings: Settings, events) -> None:
    bus = open_bus(settings.bus_url)
    try:
        bus.ensure_topics([settings.inference_topic, settings.violations_topic], 3)
        for e in events:
            bus.publish(settings.inference_topic, e.event_id, e.to_bytes())
        bus.flush(60)
    finally:
        bus.close()


def _read_topic(bootstrap: str, topic: str) -> list[ViolationEvent]:
    """Everything on the topic now, up to its end offsets."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        out = []

        def done():
            for records in consumer.poll(timeout_ms=300).values():
                out.extend(ViolationEvent.model_validate_json(r.value) for r in records)
            return all(consumer.position(tp) >= ends[tp] for tp in parts)

        wait_until(done, 30, interval_s=0, what=f"the whole of {topic}")
        return out
    finally:
        consumer.close()


def _run_until_counted(loops, totals, timeout_s=180):
    threads = [loop.start_thread() for loop in loops]
    try:
        wait_until(lambda: all(loop.processed >= n and loop.handler.idle for loop, n in zip(loops, totals)),
                   timeout_s, interval_s=0.2, what="the monitors to count and check every event")
    finally:
        for loop in loops:
            loop.stop()
        for t in threads:
            t.join(30)


def _one_process_counts(events, endpoint: str, tmp_path):
    """What a single monitor counts for the same events (in memory)."""
    m = Monitor(MemoryState(), FileStore(tmp_path / endpoint), MonitorConfig(endpoint=endpoint), SHIPPED.class_names)
    for e in events:
        m.windows.record(e, features_of(e.output.predictions))
    return m.windows.time_window(max(e.time.timestamp() for e in events))


def test_clean_attacked_snow_night_and_fog_streams(stack, unique, pools, tmp_path):
    now = time.time()
    plans = {"clean": [("clean", 2000)], "attacked": [("clean", 400), ("attacked", 300)],
             "snow": [("clean", 400), ("snow", 200)], "night": [("clean", 400), ("night", 200)],
             "fog": [("clean", 400), ("fog", 200)]}
    loops, totals, settings_of = [], [], {}
    for i, (name, plan) in enumerate(plans.items()):
        s = _settings(stack, f"mon-{name}-{unique}")
        n = sum(k for _, k in plan)
        events = stream(pools, plan, s.endpoint, now - n, 1.0, PAYLOAD, seed=i)
        _publish(s, events)
        ports = open_ports(s)
        loops.append(build_loop(s, SHIPPED, ports=ports))
        totals.append(n)
        settings_of[name] = s
    _run_until_counted(loops, totals)

    raised = {name: [v for v in _read_topic(stack["kafka"]["bootstrap"], s.violations_topic) if v.state == "open"]
              for name, s in settings_of.items()}
    assert raised["clean"] == [], [v.check.description for v in raised["clean"]]
    state = open_state(stack["redis"]["url"])
    for shift in ("attacked", "snow", "night", "fog"):  # one incident each, whatever checks fail in it
        assert len(raised[shift]) == 1, (shift, [v.check.description for v in raised[shift]])
    for shift in ("snow", "night", "fog"):
        assert set(raised[shift][0].checks) & DRIFT_CHECKS, (shift, raised[shift][0].checks)
    [over] = raised["attacked"]
    assert over.class_id == 14, over.check.description
    incident = read_snapshot(state, settings_of["attacked"].endpoint)["incidents"][0]
    assert incident["state"] == "open" and "over_prediction" in incident["checks"]

    # Samples are references into S3 with their sha256; the SageMaker report is there too.
    s3c = stack["s3"]
    s3 = boto3.client("s3", endpoint_url=s3c["endpoint"], aws_access_key_id=s3c["access_key"],
                      aws_secret_access_key=s3c["secret_key"], region_name="us-east-1")
    v = over
    assert v.samples and all(s.predicted_class == 14 for s in v.samples)
    body = s3.get_object(Bucket=s3c["bucket"], Key=v.samples[0].ref)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == v.samples[0].sha256
    report = json.loads(s3.get_object(Bucket=s3c["bucket"], Key=v.report)["Body"].read())
    assert v.check.description.startswith(report["violations"][0]["description"])  # SageMaker's shape
    assert len(report["violations"]) == len(v.checks)
    # No baseline in the store: the shipped one judges (never class shares) while one is learned,
    # and it is not written there (the learned one goes there: tests/unit/test_learning.py).
    baselines = f"baselines/{settings_of['clean'].endpoint}/"
    assert "Contents" not in s3.list_objects_v2(Bucket=s3c["bucket"], Prefix=baselines)
    snap = read_snapshot(state, settings_of["attacked"].endpoint)
    assert snap["baseline_status"].startswith("learning: ") and snap["baseline_id"] is not None
    # the snapshot is rewritten at most once a second: replayed at speed it lags the stream
    assert snap["window"]["class_counts"]["14"] >= 20 and snap["estimated_accuracy"] is not None


def _serve_monitor(settings: Settings, port: int) -> subprocess.Popen:
    env = os.environ | {
        "SIGNWATCH_BUS_URL": settings.bus_url, "SIGNWATCH_STATE_URL": settings.state_url,
        "SIGNWATCH_STORE_URL": settings.store_url, "SIGNWATCH_S3_ACCESS_KEY": settings.s3_access_key.get_secret_value(),
        "SIGNWATCH_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
        "SIGNWATCH_INFERENCE_TOPIC": settings.inference_topic, "SIGNWATCH_VIOLATIONS_TOPIC": settings.violations_topic,
        "SIGNWATCH_ENDPOINT": settings.endpoint, "SIGNWATCH_MONITOR_PORT": str(port), "SIGNWATCH_TOPIC_PARTITIONS": "3",
        "SIGNWATCH_MONITOR_GROUP": settings.monitor_group}
    return subprocess.Popen([sys.executable, "-m", "signwatch_services.cli", "serve", "monitor"], env=env, cwd=PROJECT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_two_monitor_processes_raise_one_violation_per_incident_and_count_like_one(stack, unique, pools, tmp_path):
    s = _settings(stack, f"mon-pair-{unique}")
    open_bus(s.bus_url).ensure_topics([s.inference_topic, s.violations_topic], 3)
    publish_manifest(open_ports(s).store, s.endpoint, SHIPPED)  # as the endpoint's inference service does
    ports = [_free_port(), _free_port()]
    procs = [_serve_monitor(s, p) for p in ports]
    try:
        wait_until(lambda: all(_ready(p) for p in ports), 90, interval_s=0.3, what="two monitor processes")
        events = stream(pools, [("clean", 400), ("attacked", 300)], s.endpoint, time.time() - 700, 1.0, PAYLOAD, seed=11)
        _publish(s, events)
        # A process commits only once its last evaluation ran: then every violation is on the topic.
        wait_until(lambda: _committed(s, stack) >= len(events), 120, interval_s=0.5,
                   what="both processes to count, check and commit every event")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)
    violations = _read_topic(stack["kafka"]["bootstrap"], s.violations_topic)
    assert [v for v in violations if v.state == "open" and v.class_id == 14]
    _one_violation_per_incident(violations)
    shared = Windows(open_state(s.state_url), s.endpoint, n_classes=SHIPPED.num_classes).time_window(max(e.time.timestamp() for e in events))
    alone = _one_process_counts(events, s.endpoint, tmp_path)
    assert shared.total == alone.total and np.array_equal(shared.class_counts, alone.class_counts)
    assert shared.low_confidence == alone.low_confidence and np.array_equal(shared.confidence_counts, alone.confidence_counts)


def _one_violation_per_incident(violations) -> None:
    """Two replicas never open one incident twice: per incident group, an incident opens once and
    resolves (if it does) before the next opens."""
    assert len({(v.violation_id, v.state) for v in violations}) == len(violations), "a violation published twice"
    open_now: dict[str, str] = {}
    for v in sorted(violations, key=lambda v: (v.time, v.state != "open")):
        group = registry.get(v.check_name).incident
        if v.state == "open":
            assert group not in open_now, f"{v.check_name} opened while its incident was open: {violations}"
            open_now[group] = v.violation_id
        else:
            assert open_now.pop(group, None) == v.violation_id, f"{v.check_name} resolved out of turn"


def _committed(s: Settings, stack) -> int:
    consumer = KafkaConsumer(bootstrap_servers=stack["kafka"]["bootstrap"], group_id=s.monitor_group,
                             enable_auto_commit=False)
    try:
        parts = [TopicPartition(s.inference_topic, p) for p in range(3)]
        return sum(consumer.committed(tp) or 0 for tp in parts)
    finally:
        consumer.close(autocommit=False)


def test_windows_are_rebuilt_after_a_redis_restart(stack, unique, pools, tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        s = _settings(stack, f"mon-restart-{unique}", state_url=server.url)
        now = time.time()
        events = stream(pools, [("clean", 300)], s.endpoint, now - 150, 2.0, PAYLOAD, seed=5)  # all in the window
        first, second = events[:150], events[150:]
        _publish(s, first)
        ports = open_ports(s)
        loop = build_loop(s, SHIPPED, ports=ports)
        thread = loop.start_thread()
        try:
            windows = loop.handler.monitor.windows
            wait_until(lambda: loop.processed >= 150 and windows.time_window(now).total == 150, 60, interval_s=0.2,
                       what="the first half counted")
            server.restart()  # no persistence: every count is gone
            _publish(s, second)
            # Without the rebuild the window would hold the 150 events that came after the restart.
            try:
                wait_until(lambda: loop.processed >= 300 and loop.handler.idle and windows.time_window(now).total == 300,
                           60, interval_s=0.2, what="the second half counted and the first half recounted")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: processed {loop.processed}, idle {loop.handler.idle}, "
                                     f"window total {windows.time_window(now).total}") from None
            rebuilt = windows.time_window(now)
        finally:
            loop.stop()
            thread.join(30)
            ports.close()
    finally:
        server.stop()
    alone = _one_process_counts(events, s.endpoint, tmp_path)
    assert rebuilt.total == 300 == alone.total
    assert np.array_equal(rebuilt.class_counts, alone.class_counts)

"""kill -9 the Redis master in the middle of a stream, with a replica and a Sentinel watching: the
monitor, on a ``redis+sentinel://`` state URL, follows the Sentinel to the promoted replica, its
windows hold exactly what one monitor counts for the same events (rebuilt from the topic where the
failover lost them), and the incident that spans the failover raises one violation. Kafka and S3
are the shared stack's."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import redis

from signwatch.config import Settings
from signwatch.model.core import load_spec
from signwatch.monitoring import Monitor, MonitorConfig, registry
from signwatch.monitoring.features import features_of
from signwatch.monitoring.streams import model_pools, stream
from signwatch.monitoring.windows import Windows
from signwatch.ports import open_bus, open_state
from signwatch.ports.state_memory import MemoryState
from signwatch.ports.store_file import FileStore
from signwatch.publishing import make_input_payload
from signwatch.runtime import open_ports
from signwatch_services.monitor.server import build_loop
from tests.conftest import wait_until
from tests.integration.redis_sentinel import SentinelSet
from tests.integration.test_monitor_stack import _one_violation_per_incident, _read_topic
from tests.unit.helpers import png_bytes

pytestmark = pytest.mark.stack
PAYLOAD = make_input_payload(png_bytes(seed=5), "image/png")
SHIPPED = load_spec()


def _settings(stack, name: str, state_url: str) -> Settings:
    s3 = stack["s3"]
    return Settings(
        bus_url=f"kafka://{stack['kafka']['bootstrap']}", state_url=state_url,
        store_url=f"s3://{s3['bucket']}?endpoint={s3['endpoint']}", s3_access_key=s3["access_key"],
        s3_secret_key=s3["secret_key"], inference_topic=f"{name}.inference", violations_topic=f"{name}.violations",
        baselines_topic=f"{name}.baselines", endpoint=name, topic_partitions=3, monitor_group=name)


def _publish(settings: Settings, events) -> None:
    bus = open_bus(settings.bus_url)
    try:
        for e in events:
            bus.publish(settings.inference_topic, e.event_id, e.to_bytes())
        bus.flush(60)
    finally:
        bus.close()


@pytest.fixture(scope="module")
def pools():
    return model_pools({"clean": 300, "attacked": 32})


def _alone(events, endpoint: str, folder, end: float):
    """What one monitor counts for the same events (in memory)."""
    alone = Monitor(MemoryState(), FileStore(folder), MonitorConfig(endpoint=endpoint), SHIPPED.class_names)
    for e in events:
        alone.windows.record(e, features_of(e.output.predictions))
    return alone.windows.time_window(end)


def _windows(s: Settings, end: float):
    """The monitor's windows now, read through the Sentinel (from the master it names now; just
    after a failover the Sentinel may name none for a moment: asked again)."""
    def read():
        state = open_state(s.state_url)
        try:
            return Windows(state, s.endpoint, n_classes=SHIPPED.num_classes).time_window(end)
        except redis.RedisError:
            return None
        finally:
            state.close()

    return wait_until(read, 15, interval_s=0.2, what="the Sentinel to name a master that answers")


def _same(a, b) -> bool:
    return a.total == b.total and np.array_equal(a.class_counts, b.class_counts) \
        and np.array_equal(a.confidence_counts, b.confidence_counts)


def test_the_monitor_follows_sentinel_to_the_promoted_replica(stack, unique, tmp_path, caplog, pools):
    started = time.monotonic()
    redis_set = SentinelSet(tmp_path / "redis").start()
    try:
        s = _settings(stack, f"rfail-{unique}", redis_set.url)
        open_bus(s.bus_url).ensure_topics([s.inference_topic, s.violations_topic, s.baselines_topic], 3)
        events = stream(pools, [("clean", 400), ("attacked", 300)], s.endpoint, time.time() - 700, 1.0, PAYLOAD,
                        seed=11)
        before, after = events[:550], events[550:]  # the attack's incident spans the failover
        _publish(s, before)
        ports = open_ports(s)
        loop = build_loop(s, SHIPPED, ports=ports)
        thread = loop.start_thread()
        try:
            wait_until(lambda: loop.processed >= len(before) and loop.handler.idle, 60, interval_s=0.2,
                       what="the monitor to count the first part")
            with caplog.at_level(logging.WARNING):
                killed = redis_set.kill_master()
                killed_at = time.monotonic()
                _publish(s, after)  # the monitor counts on while the Sentinel fails over
                wait_until(lambda: redis_set.master_port() not in (None, redis_set.ports[killed]), 30,
                           interval_s=0.1, what="the Sentinel to promote the replica")
                promoted_s = time.monotonic() - killed_at
                try:
                    wait_until(lambda: loop.processed >= len(events) and loop.handler.idle, 60, interval_s=0.2,
                               what="the monitor to count the rest on the new master")
                except AssertionError as exc:
                    raise AssertionError(f"{exc}: processed {loop.processed}; sentinel log:\n"
                                         f"{redis_set.log('sentinel')}") from None
                followed_s = time.monotonic() - killed_at
        finally:
            loop.stop()
            thread.join(30)
            ports.close()
        rebuilt = any("recounted" in r.getMessage() for r in caplog.records)
        print(f"replica promoted {promoted_s:.1f} s after the kill, every event counted {followed_s:.1f} s after "
              f"it; windows rebuilt: {rebuilt}; whole test {time.monotonic() - started:.1f} s")

        assert redis_set.master() != killed
        end = max(e.time.timestamp() for e in events)
        shared, expected = _windows(s, end), _alone(events, s.endpoint, tmp_path / "alone", end)
        assert _same(shared, expected), (shared.total, expected.total)

        violations = _read_topic(stack["kafka"]["bootstrap"], s.violations_topic)
        _one_violation_per_incident(violations)
        opened = [v for v in violations if v.state == "open"]
        assert len(opened) == 1 and opened[0].class_id == 14, [(v.check_name, v.class_id) for v in opened]
        assert registry.get(opened[0].check_name).incident
    finally:
        redis_set.stop()


def test_counts_the_failover_lost_are_recounted_from_the_topic(stack, unique, tmp_path, caplog, pools):
    """The replica's link is cut while the monitor counts 100 events on the master, so the master
    dies with counts its replica never got (asynchronous replication's window, stretched from
    milliseconds to seconds as by a partition): the monitor sees the failover and recounts its
    windows from the topic (exactly: an event whose token survived is not counted again)."""
    started = time.monotonic()
    redis_set = SentinelSet(tmp_path / "redis").start()
    try:
        s = _settings(stack, f"rlost-{unique}", redis_set.url)
        open_bus(s.bus_url).ensure_topics([s.inference_topic, s.violations_topic, s.baselines_topic], 3)
        events = stream(pools, [("clean", 500), ("attacked", 200)], s.endpoint, time.time() - 700, 1.0, PAYLOAD,
                        seed=12)
        replicated, unreplicated, after = events[:400], events[400:500], events[500:]
        _publish(s, replicated)
        ports = open_ports(s)
        loop = build_loop(s, SHIPPED, ports=ports)
        thread = loop.start_thread()
        counted = lambda n: lambda: loop.processed >= n and loop.handler.idle  # noqa: E731
        try:
            wait_until(counted(len(replicated)), 60, interval_s=0.2, what="the monitor to count the first part")
            replica = "b"
            redis_set.partition_replica()
            _publish(s, unreplicated)
            wait_until(counted(len(replicated) + len(unreplicated)), 60, interval_s=0.2,
                       what="the monitor to count the second part on the master alone")
            with caplog.at_level(logging.WARNING):
                redis_set.kill_master()
                wait_until(lambda: redis_set.master_port() == redis_set.ports[replica], 30, interval_s=0.1,
                           what="the Sentinel to promote the replica")
                end = max(e.time.timestamp() for e in events)
                lost = _alone(events[:500], s.endpoint, tmp_path / "lost", end).total - _windows(s, end).total
                _publish(s, after)
                expected = _alone(events, s.endpoint, tmp_path / "alone", end)
                wait_until(lambda: counted(len(events))() and _same(_windows(s, end), expected), 60,
                           interval_s=0.5, what="the monitor to count the rest and recount what was lost")
        finally:
            loop.stop()
            thread.join(30)
            ports.close()
        rebuilt = [r.getMessage() for r in caplog.records if "recounted" in r.getMessage()]
        print(f"the failover lost {lost} counts; {rebuilt}; whole test {time.monotonic() - started:.1f} s")
        assert lost > 0, "the promoted replica held every count: nothing was lost to recount"
        assert rebuilt
        violations = _read_topic(stack["kafka"]["bootstrap"], s.violations_topic)
        _one_violation_per_incident(violations)
        opened = [v for v in violations if v.state == "open"]
        assert len(opened) == 1 and opened[0].class_id == 14, [(v.check_name, v.class_id) for v in opened]
    finally:
        redis_set.stop()

"""kill -9 the Kafka broker that leads every partition of the inference topic in the middle of 2,000
requests, on a three-broker KRaft cluster of the test's own (replication factor 3,
min.insync.replicas 2): no request fails, the topic holds every event once (acks=all and
idempotence: a retried batch is not written twice), and capture and the monitor see every event
exactly once. S3 and Redis are the shared stack's."""

from __future__ import annotations

import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition

from signwatch.capture import read_capture_lines
from signwatch.config import Settings
from signwatch.runtime import open_ports
from tests.conftest import running_service, wait_until
from tests.integration.kafka_cluster import KafkaCluster
from tests.integration.serving import free_port, live_server
from tests.unit.helpers import png_bytes

pytestmark = [
    pytest.mark.stack,
    pytest.mark.filterwarnings("ignore:read_text is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning"),
]

REQUESTS = 2000
KILL_AT = 1000
LEADER = 2  # leads every partition of the inference topic until it is killed


def _settings(stack, cluster: KafkaCluster, name: str) -> Settings:
    s3 = stack["s3"]
    return Settings(
        bus_url=f"kafka://{cluster.bootstrap}", state_url=stack["redis"]["url"],
        store_url=f"s3://{s3['bucket']}?endpoint={s3['endpoint']}", s3_access_key=s3["access_key"],
        s3_secret_key=s3["secret_key"], endpoint=name, inference_topic=f"{name}.inference",
        violations_topic=f"{name}.violations", explanations_topic=f"{name}.explanations",
        baselines_topic=f"{name}.baselines", topic_partitions=3,
        capture_group=f"{name}.capture", capture_prefix=f"{name}/datacapture", capture_sampling_percentage=100.0,
        capture_flush_seconds=1.0, capture_batch_records=100,
        monitor_group=f"{name}.monitor", monitor_track_window_seconds=0,  # every request counts: no frame folding
    )


def _env(settings: Settings, **ports: int) -> dict[str, str]:
    names = ("bus_url", "state_url", "store_url", "endpoint", "inference_topic", "violations_topic",
             "explanations_topic", "baselines_topic", "topic_partitions", "capture_group", "capture_prefix",
             "capture_sampling_percentage", "capture_flush_seconds", "capture_batch_records", "monitor_group",
             "monitor_track_window_seconds")
    env = {f"SIGNWATCH_{n.upper()}": str(getattr(settings, n)) for n in names}
    env["SIGNWATCH_S3_ACCESS_KEY"] = settings.s3_access_key.get_secret_value()
    env["SIGNWATCH_S3_SECRET_KEY"] = settings.s3_secret_key.get_secret_value()
    return os.environ | env | {f"SIGNWATCH_{k.upper()}": str(v) for k, v in ports.items()}


def _captured(store, prefix: str) -> list[str]:
    ids = []
    for key in store.list(prefix):
        records, bad = read_capture_lines(store.get(key))
        assert bad == 0
        ids += [r["eventMetadata"]["eventId"] for r in records]
    return ids


def _metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def _topic_keys(bootstrap: str, topic: str) -> list[str]:
    """Every record's key on the topic now, from the first offset to the end."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        keys: list[str] = []

        def done() -> bool:
            for records in consumer.poll(timeout_ms=300).values():
                keys.extend(r.key.decode() for r in records)
            return all(consumer.position(tp) >= ends[tp] for tp in parts)

        wait_until(done, 30, interval_s=0, what=f"the whole of {topic}")
        return keys
    finally:
        consumer.close()


def test_killing_the_partition_leader_loses_and_duplicates_nothing(stack, unique, tmp_path):
    started = time.monotonic()
    cluster = KafkaCluster(tmp_path / "kafka").start()
    s = _settings(stack, cluster, f"kfail-{unique}")
    store = open_ports(s).store
    # broker 2 first in every partition's replica list: it leads them all
    cluster.create_topic(s.inference_topic, [[LEADER, 1, 3], [LEADER, 3, 1], [LEADER, 1, 3]])
    capture_port, monitor_port = free_port(), free_port()
    bodies = [png_bytes(seed=i, size=32) for i in range(16)]
    event_ids: list[str] = []
    killed_at: list[float] = []
    kill_lock = threading.Lock()
    try:
        with live_server(s) as (url, core), \
                running_service(["serve", "capture"], _env(s, capture_port=capture_port), tmp_path / "capture.log",
                                f"http://127.0.0.1:{capture_port}"), \
                running_service(["serve", "monitor"], _env(s, monitor_port=monitor_port), tmp_path / "monitor.log",
                                f"http://127.0.0.1:{monitor_port}"), \
                httpx.Client(base_url=url, timeout=60) as client:
            print(f"cluster and services up after {time.monotonic() - started:.1f} s")

            def send(i: int) -> str:
                if i == KILL_AT:
                    with kill_lock:
                        cluster.kill(LEADER)  # mid-stream: requests before and after it are in flight
                        killed_at.append(time.monotonic())
                r = client.post("/invocations", content=bodies[i % 16], headers={"content-type": "image/png"})
                assert r.status_code == 200, (i, r.status_code, r.text)
                return r.headers["X-Signwatch-Event-Id"]

            t0 = time.monotonic()
            with ThreadPoolExecutor(4) as pool:
                event_ids += pool.map(send, range(REQUESTS))
            print(f"{REQUESTS} requests in {time.monotonic() - t0:.1f} s")
            core.publisher.drain(60)
            leaders = cluster.leaders(s.inference_topic)
            assert LEADER not in leaders.values() and -1 not in leaders.values(), leaders
            wanted = set(event_ids)
            wait_until(lambda: set(_captured(store, s.capture_prefix)) >= wanted, 60, interval_s=1,
                       what="capture to write every event")
            wait_until(lambda: _metric(monitor_port, "signwatch_monitor_predictions_total") >= REQUESTS, 60,
                       interval_s=1, what="the monitor to count every event")
            time.sleep(2)  # a late duplicate (a batch redelivered after the failover) would land now
            counted = _metric(monitor_port, "signwatch_monitor_predictions_total")
            capture_records = _metric(capture_port, "signwatch_capture_records_total")
        print(f"every event seen by capture and the monitor {time.monotonic() - killed_at[0]:.1f} s "
              f"after the kill; whole test {time.monotonic() - started:.1f} s")

        assert len(event_ids) == REQUESTS == len(set(event_ids)), "every request answered with its own event"
        keys = _topic_keys(cluster.bootstrap, s.inference_topic)
        assert len(keys) == REQUESTS and set(keys) == wanted, "the topic holds every event once"
        captured = _captured(store, s.capture_prefix)
        assert len(captured) == REQUESTS and set(captured) == wanted, "capture wrote every event once"
        assert capture_records == REQUESTS
        assert counted == REQUESTS, "the monitor counted every event once"
        # the topics the services created themselves took the cluster's replication
        for topic in (s.violations_topic, s.baselines_topic):
            assert all(len(replicas) == 3 for replicas, _ in cluster.replicas(topic).values())
            assert cluster.topic_config(topic, "min.insync.replicas") == "2"
    finally:
        print("--- killed broker's log ---\n" + cluster.log_tail(LEADER))
        cluster.stop()
        for key in store.list(f"kfail-{unique}/"):
            store.delete(key)

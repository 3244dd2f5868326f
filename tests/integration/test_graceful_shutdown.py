"""SIGTERM under traffic, on the real stack: nothing lost, nothing committed twice.

A real ``signwatch serve inference`` and ``signwatch serve capture`` take requests; mid-stream
both get SIGTERM (what Kubernetes sends). Capture holds its records in memory (flush every 60 s,
1000 records), so everything it wrote must have been written by the shutdown itself, and its
committed offsets must be exactly the records written. Every request that got a 200 must be on
the topic (the producer flushed). A second capture then takes over from the committed offsets:
every event ends up captured exactly once.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time

import boto3
import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition

from signwatch.data import render_batch
from signwatch.imaging import encode_png
from signwatch.stack import stack_env
from tests.conftest import PROJECT, wait_until
from tests.e2e.test_loop_on_real_stack import _free_port

pytestmark = pytest.mark.stack
GROUP = "signwatch-capture"


def _start(service: str, env: dict, log_path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "signwatch_services.cli", "serve", service], env=env,
                            cwd=PROJECT, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)


def _ready(proc, url, log):
    def check():
        assert proc.poll() is None, f"exited with {proc.returncode}: {open(log).read()[-2000:]}"
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    return check


def _captured(s3, bucket, prefix) -> dict[str, list[dict]]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            out[o["Key"]] = [json.loads(line) for line in body.splitlines() if line.strip()]
    return out


def _topic_event_ids(bootstrap, topic) -> list[str]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=3000)
    try:
        return [json.loads(m.value)["event_id"] for m in consumer]
    finally:
        consumer.close()


def test_sigterm_under_traffic_loses_nothing_and_commits_nothing_twice(stack, unique, tmp_path):
    topic, prefix = f"shutdown-{unique}.inference", f"shutdown-{unique}"
    port, capture_port = _free_port(), _free_port()
    env = os.environ | stack_env(PROJECT) | {
        "SIGNWATCH_PORT": str(port), "SIGNWATCH_CAPTURE_PORT": str(capture_port),
        "SIGNWATCH_ENDPOINT": f"shutdown-{unique}", "SIGNWATCH_INFERENCE_TOPIC": topic,
        "SIGNWATCH_CAPTURE_PREFIX": prefix, "SIGNWATCH_CAPTURE_SAMPLING_PERCENTAGE": "100",
        "SIGNWATCH_CAPTURE_FLUSH_SECONDS": "60", "SIGNWATCH_CAPTURE_BATCH_RECORDS": "1000",
    }
    inference = _start("inference", env, tmp_path / "inference.log")
    capture = _start("capture", env, tmp_path / "capture.log")
    procs = [inference, capture]
    try:
        wait_until(_ready(inference, f"http://127.0.0.1:{port}/health/ready", tmp_path / "inference.log"),
                   120, 0.2, "inference ready")
        wait_until(_ready(capture, f"http://127.0.0.1:{capture_port}/health/ready", tmp_path / "capture.log"),
                   60, 0.2, "capture ready")
        bodies = [encode_png(img) for img in render_batch(list(range(43)) * 2, seed=3, size=64)]
        acked: list[str] = []
        refused = threading.Event()

        def traffic():  # bounded: at most 400 requests or 90 s, ends when the server is gone
            deadline = time.monotonic() + 90
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                for i in range(400):
                    if time.monotonic() > deadline:
                        return
                    try:
                        r = client.post("/invocations", content=bodies[i % len(bodies)],
                                        headers={"content-type": "image/png"})
                    except httpx.HTTPError:
                        refused.set()
                        return
                    if r.status_code == 200:
                        acked.append(r.headers["X-Signwatch-Event-Id"])

        sender = threading.Thread(target=traffic)
        sender.start()
        # Capture must have consumed some of the stream before the signal, so that it has a batch to flush.
        capture_metrics = f"http://127.0.0.1:{capture_port}/metrics"

        def consumed():
            text = httpx.get(capture_metrics, timeout=5).text
            line = [l for l in text.splitlines()
                    if l.startswith("signwatch_consumer_messages_total") and 'outcome="processed"' in l]
            return line and float(line[0].split()[-1]) >= 30
        wait_until(consumed, 60, 0.1, "capture to consume 30 events")
        assert not _captured_s3(stack, prefix), "nothing is flushed before the signal (60 s / 1000 records)"
        started = time.monotonic()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(60) for p in procs]
        took = time.monotonic() - started
        sender.join(60)
        assert codes == [0, 0], [open(tmp_path / f).read()[-3000:] for f in ("inference.log", "capture.log")]
        assert took < 30, f"shutdown took {took:.1f} s"
        assert refused.is_set() and len(acked) >= 30

        # The producer flushed: every acknowledged request is on the topic.
        bootstrap = stack["kafka"]["bootstrap"]
        on_topic = _topic_event_ids(bootstrap, topic)
        assert set(acked) <= set(on_topic), f"{len(set(acked) - set(on_topic))} acknowledged events lost"
        assert len(on_topic) == len(set(on_topic)), "an event was published twice"

        # Capture flushed on stop, then committed exactly what it had written.
        files = _captured_s3(stack, prefix)
        assert files, "the shutdown flushed the buffered records"
        written = collections.Counter()
        for key, records in files.items():
            partition = int(key.rsplit("-p", 1)[1].split("-o")[0])
            written[partition] += len(records)
        reader = KafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False)
        try:  # the group's committed offsets, read without joining the group
            committed = {p: reader.committed(TopicPartition(topic, p)) or 0
                         for p in reader.partitions_for_topic(topic)}
        finally:
            reader.close()
        assert {p: n for p, n in committed.items() if n > 0} == dict(written), (committed, written)

        # A second capture resumes at the committed offsets: every event captured exactly once.
        capture2 = _start("capture", env | {"SIGNWATCH_CAPTURE_FLUSH_SECONDS": "1"}, tmp_path / "capture2.log")
        procs.append(capture2)

        def all_captured():
            ids = [r["eventMetadata"]["eventId"] for recs in _captured_s3(stack, prefix).values() for r in recs]
            return ids if len(ids) >= len(on_topic) else None
        ids = wait_until(all_captured, 60, 0.5, "the second capture to catch up")
        assert capture2.poll() is None, "the second capture died"
        assert sorted(ids) == sorted(on_topic), "each event exactly once"
        capture2.send_signal(signal.SIGTERM)
        assert capture2.wait(60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def _captured_s3(stack, prefix):
    s3conf = stack["s3"]
    s3 = boto3.client("s3", endpoint_url=s3conf["endpoint"], aws_access_key_id=s3conf["access_key"],
                      aws_secret_access_key=s3conf["secret_key"], region_name="us-east-1")
    return _captured(s3, s3conf["bucket"], prefix + "/")

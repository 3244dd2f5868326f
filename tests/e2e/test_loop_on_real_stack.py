"""The whole loop on real Kafka, Redis and S3, with the services as real processes over HTTP.

50 rendered signs go to ``signwatch serve all``; then a stream attacked towards Stop. Every
assertion reads the real servers back with their own clients (kafka-python, redis-py, boto3).
"""

from __future__ import annotations

import base64
import collections
import json
import os
import socket
import subprocess
import sys

import boto3
import httpx
import numpy as np
import pytest
import redis
from kafka import KafkaConsumer

from signwatch.attacks import targeted_pgd
from signwatch.capture import should_sample
from signwatch.data import render_batch
from signwatch_services.demo import DEMO_EPS, DEMO_STEPS
from signwatch.imaging import encode_png
from signwatch.model import load_model
from signwatch.model.core import to_unit_tensor
from signwatch.stack import stack_env
from tests.conftest import PROJECT, running_service, wait_until

pytestmark = pytest.mark.stack
STOP = 14
SAMPLING = 50.0
ADMIN_TOKEN = "e2e-" + __import__("secrets").token_hex(8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run_id():
    import uuid

    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def service(stack, run_id, tmp_path_factory):
    port = _free_port()
    env = os.environ | stack_env(PROJECT) | {
        "SIGNWATCH_PORT": str(port),
        "SIGNWATCH_ENDPOINT": f"e2e-{run_id}",
        "SIGNWATCH_INFERENCE_TOPIC": f"e2e-{run_id}.inference",
        "SIGNWATCH_VIOLATIONS_TOPIC": f"e2e-{run_id}.violations",
        "SIGNWATCH_EXPLANATIONS_TOPIC": f"e2e-{run_id}.explanations",
        "SIGNWATCH_CAPTURE_SAMPLING_PERCENTAGE": str(SAMPLING),
        "SIGNWATCH_CAPTURE_FLUSH_SECONDS": "1",
        "SIGNWATCH_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    log = tmp_path_factory.mktemp("e2e") / "serve-all.log"
    base = f"http://127.0.0.1:{port}"
    with running_service(["serve", "all"], env, log, base):
        yield {"base": base, "env": env, "endpoint": env["SIGNWATCH_ENDPOINT"], "log": str(log)}


def _consume_all(bootstrap: str, topic: str, want: int, timeout_s: float = 60):
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False)
    got = []
    try:
        def enough():
            for records in consumer.poll(timeout_ms=500).values():
                got.extend(records)
            return len(got) >= want
        wait_until(enough, timeout_s, interval_s=0, what=f"{want} messages on {topic}")
        for records in consumer.poll(timeout_ms=1000).values():  # and nothing more
            got.extend(records)
    finally:
        consumer.close()
    return got


def _post(base: str, body: bytes, ctype: str = "image/png") -> httpx.Response:
    return httpx.post(f"{base}/invocations", content=body, headers={"content-type": ctype}, timeout=30)


def test_bad_requests_get_json_4xx(service):
    from tests.unit.helpers import png_bytes

    for body, ctype, status in [(b"", "image/png", 400), (b"GIF89a nope", "image/gif", 415),
                                (b"not an image", "image/png", 400),
                                (png_bytes(size=48)[:150], "image/png", 400)]:
        r = _post(service["base"], body, ctype)
        assert r.status_code == status, r.text
        assert r.json()["error"]["message"]


def test_fifty_images_then_a_skewed_stream_end_to_end(service, stack, run_id):
    bootstrap = stack["kafka"]["bootstrap"]
    s3conf = stack["s3"]
    endpoint = service["endpoint"]
    model, spec = load_model()
    rng = np.random.default_rng(7)
    images = render_batch(rng.integers(0, 43, 50).tolist(), seed=1234, size=spec.input_size)

    # 1. Fifty clean images over HTTP.
    responses = [_post(service["base"], encode_png(img)) for img in images]
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    event_ids = [r.headers["X-Signwatch-Event-Id"] for r in responses]
    top1 = [r.json()["predictions"][0]["class_id"] for r in responses]
    assert top1.count(STOP) / 50 <= 0.5, "precondition: the clean stream is not already Stop-heavy"

    # 2. Fifty events on the inference topic, one per request.
    events = _consume_all(bootstrap, f"e2e-{run_id}.inference", 50)
    assert sorted(json.loads(e.value)["event_id"] for e in events) == sorted(event_ids)

    # 3. The sampled records in S3, read back with boto3, have exactly the design's schema.
    s3 = boto3.client("s3", endpoint_url=s3conf["endpoint"], aws_access_key_id=s3conf["access_key"],
                      aws_secret_access_key=s3conf["secret_key"], region_name="us-east-1")
    expected = {i for i in event_ids if should_sample(i, SAMPLING)}
    assert 0 < len(expected) < 50

    def captured():
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=s3conf["bucket"], Prefix=f"datacapture/{endpoint}/AllTraffic/") for o in page.get("Contents", [])]
        recs = [json.loads(line) for k in keys
                for line in s3.get_object(Bucket=s3conf["bucket"], Key=k)["Body"].read().splitlines()]
        return (keys, recs) if len(recs) >= len(expected) else None

    keys, records = wait_until(captured, 30, interval_s=0.5, what="the capture files")
    assert all(k.endswith(".jsonl") and f"/{endpoint}/AllTraffic/20" in k for k in keys)
    assert {r["eventMetadata"]["eventId"] for r in records} == expected
    by_id = dict(zip(event_ids, zip(images, responses)))
    for r in records:
        assert set(r) == {"captureData", "eventMetadata", "eventVersion"} and r["eventVersion"] == "0"
        inp, out = r["captureData"]["endpointInput"], r["captureData"]["endpointOutput"]
        assert set(inp) == set(out) == {"observedContentType", "mode", "data", "encoding"}
        assert (inp["observedContentType"], inp["mode"], inp["encoding"]) == ("image/png", "INPUT", "BASE64")
        assert (out["observedContentType"], out["mode"], out["encoding"]) == ("application/json", "OUTPUT", "JSON")
        # no inferenceId: none was sent; the image's perceptual hash rides along for the batch job
        assert set(r["eventMetadata"]) == {"eventId", "inferenceTime", "imageHash"}
        image, response = by_id[r["eventMetadata"]["eventId"]]
        assert base64.b64decode(inp["data"]) == encode_png(image)
        assert out["data"].encode() == response.content  # exactly the bytes the client received

    # 4. Redis counts equal the predictions.
    rds = redis.Redis.from_url(stack["redis"]["url"], decode_responses=True)

    def counts():
        total = collections.Counter()
        for key in rds.scan_iter(f"signwatch:counts:{endpoint}:*"):
            total.update({k: int(v) for k, v in rds.hgetall(key).items()})
        return total if total["total"] >= 50 else None

    total = wait_until(counts, 30, interval_s=0.2, what="the monitor's counts")
    assert {k: v for k, v in total.items() if k.startswith("class:")} == {
        f"class:{c}": n for c, n in collections.Counter(top1).items()}
    assert total["total"] == 50

    # 5. A skewed stream (attacked towards Stop) raises exactly one violation for class 14.
    to_attack = render_batch(rng.integers(0, 43, 90).tolist(), seed=4321, size=spec.input_size)
    result = targeted_pgd(model, spec, to_unit_tensor(list(to_attack), spec.input_size), target=STOP,
                          eps=DEMO_EPS, steps=DEMO_STEPS)
    adversarial = (result.adversarial.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    attacked = [_post(service["base"], encode_png(img)).json()["predictions"][0]["class_id"] for img in adversarial]
    assert (top1 + attacked).count(STOP) / 140 > 0.5, "the attack made Stop the majority"
    violations = [json.loads(m.value) for m in _consume_all(bootstrap, f"e2e-{run_id}.violations", 1)]
    # The model incident (the screening's adversarial_share, its own "attack" incident, may open beside it)
    stop = [v for v in violations if v["class_id"] == STOP and v["check_name"] != "adversarial_share"]
    assert len(stop) == 1, violations
    assert stop[0]["check"]["constraint_check_type"] == "baseline_drift_check"
    assert stop[0]["check"]["description"].startswith("Class 14 (Stop) predicted")
    assert stop[0]["samples"], "the violation carries the inputs behind it"

    # 6. The explanation lands in S3 and is announced on the explanations topic.
    vid = stop[0]["violation_id"]

    def explained():
        msgs = [json.loads(m.value) for m in _consume_all(bootstrap, f"e2e-{run_id}.explanations",
                                                           len(violations), timeout_s=60)]
        return [m for m in msgs if m["violation_id"] == vid]

    [explanation] = wait_until(explained, 90, interval_s=0.5, what="the explanation event")
    from datetime import datetime

    latency = (datetime.fromisoformat(explanation["time"]) - datetime.fromisoformat(stop[0]["time"])).total_seconds()
    print(f"violation -> explanation report in S3: {latency:.2f} s")
    assert latency < 30, f"the report took {latency:.1f} s"
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=s3conf["bucket"],
                                                  Prefix=f"explanations/{vid}/").get("Contents", [])}
    assert set(explanation["objects"]) <= listed
    pngs = [k for k in listed if k.endswith(".png")]
    assert pngs, listed
    assert s3.get_object(Bucket=s3conf["bucket"], Key=pngs[0])["Body"].read()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(s3.get_object(Bucket=s3conf["bucket"], Key=explanation["report"])["Body"].read())
    assert report["violation_id"] == vid and report["samples"]


def test_explain_endpoint_and_metrics_on_the_running_service(service):
    image = render_batch([14], seed=77, size=64)[0]
    r = httpx.post(f"{service['base']}/explain?method=fullgrad", content=encode_png(image),
                   headers={"content-type": "image/png"}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["completeness_rel_error"] < 1e-3
    assert base64.b64decode(body["panel_png_base64"])[:4] == b"\x89PNG"
    metrics = httpx.get(f"{service['base']}/metrics", timeout=10).text
    assert 'signwatch_events_total{outcome="failed"} 0.0' in metrics
    assert "signwatch_consumer_messages_total" in metrics


def test_debugger_switched_on_over_http_records_to_s3_and_a_trial_reads_it(service, stack, monkeypatch):
    from signwatch.debugger import create_trial, fullgrad_result_from_trial

    admin = f"{service['base']}/admin/debugger"
    body = {"enabled": True, "include_regex": ".*bn|.*bias|.*downsample|.*ResNet_input|.*image|fc",
            "sample_rate": 1.0}
    assert httpx.put(admin, json=body, timeout=10).status_code == 401
    assert httpx.put(admin, json=body, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    r = httpx.put(admin, json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    assert r.status_code == 200, r.text
    images = render_batch([14, 25], seed=91, size=64)
    answers = [_post(service["base"], encode_png(img)).json() for img in images]
    off = {"enabled": False}
    assert httpx.put(admin, json=off, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10).status_code == 200

    s3 = stack["s3"]
    monkeypatch.setenv("SIGNWATCH_S3_ACCESS_KEY", s3["access_key"])
    monkeypatch.setenv("SIGNWATCH_S3_SECRET_KEY", s3["secret_key"])
    uri = f"s3://{s3['bucket']}/tensors/{service['endpoint']}?endpoint={s3['endpoint']}"
    def recorded():
        trial = create_trial(uri)
        return trial if len(trial.steps()) >= 2 else None

    trial = wait_until(recorded, 30, interval_s=0.3, what="two recorded steps in S3")
    step = trial.steps()[-1]
    names = trial.tensor_names(step=step)
    assert {"image", "gradient/image", "layer1.0.bn1_output", "gradient/layer1.0.bn1_output",
            "layer1.0.bn1.running_mean"} <= set(names)
    result = fullgrad_result_from_trial(trial, step)
    assert result.map.shape == (1, 1, 64, 64)
    assert result.completeness_rel_error < 1e-3
    assert result.target in {a["predictions"][0]["class_id"] for a in answers}


def test_batch_monitoring_job_over_the_captured_files_in_s3(service, stack, run_id):
    """The reference's scheduled job, on the records the loop captured in S3."""
    key = f"monitoring/e2e-{run_id}/constraint_violations.json"
    s3conf = stack["s3"]
    s3 = boto3.client("s3", endpoint_url=s3conf["endpoint"], aws_access_key_id=s3conf["access_key"],
                      aws_secret_access_key=s3conf["secret_key"], region_name="us-east-1")
    for img in render_batch(list(range(10)), seed=5, size=64):
        assert _post(service["base"], encode_png(img)).status_code == 200
    wait_until(lambda: s3.list_objects_v2(Bucket=s3conf["bucket"],
                                          Prefix=f"datacapture/{service['endpoint']}/").get("KeyCount"),
               30, interval_s=0.3, what="captured files")
    done = subprocess.run([sys.executable, "-m", "signwatch_services.cli", "monitor", "batch",
                           "--prefix", f"datacapture/{service['endpoint']}/", "--output", key],
                          env=service["env"], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 2), done.stderr
    report = json.loads(done.stdout)
    assert report["total"] > 0 and report["unreadable"] == 0
    stored = json.loads(s3.get_object(Bucket=s3conf["bucket"], Key=key)["Body"].read())
    assert stored == {"violations": report["violations"]}
    assert (done.returncode == 2) == bool(report["violations"])

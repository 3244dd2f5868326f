"""The development stack (`signwatch stack up`): real Kafka, Redis and SeaweedFS S3 on loopback.

These tests use the stack that is already running (the Makefile runs `signwatch stack up` before
pytest); only the idempotence test calls `up` itself, and it must start nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from signwatch.stack import StackStatus, stack_env, status

pytestmark = [
    pytest.mark.stack,
    # kafka-python 3.0 loads its protocol schemas with the legacy importlib.resources API
    pytest.mark.filterwarnings("ignore:read_text is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning"),
]

PROJECT = Path(__file__).resolve().parents[2]
ROOT = Path(os.environ.get("SIGNWATCH_STACK_ROOT", PROJECT))


def _stack_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT / "shared"), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "signwatch.stack", *args, "--root", str(ROOT)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )


@pytest.fixture(scope="module")
def stack() -> StackStatus:
    st = status(ROOT)
    if not st.all_up:
        pytest.fail(
            f"the stack under {ROOT} is not (fully) up: {st.model_dump()}; "
            "run `python -m signwatch.stack up` first"
        )
    return st


def _s3(stack: StackStatus, secret: str | None = None):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=stack.s3.endpoint,
        aws_access_key_id=stack.s3.access_key,
        aws_secret_access_key=secret if secret is not None else stack.s3.secret_key,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )


def test_status_json_has_every_endpoint_and_all_are_up(stack: StackStatus) -> None:
    result = _stack_cli("status", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)  # exactly one JSON object, nothing else on stdout
    assert set(doc) == {"kafka", "redis", "s3"}
    assert set(doc["kafka"]) == {"bootstrap", "up"}
    assert set(doc["redis"]) == {"url", "up"}
    assert set(doc["s3"]) == {"endpoint", "access_key", "secret_key", "bucket", "up"}
    assert doc["kafka"]["up"] and doc["redis"]["up"] and doc["s3"]["up"]
    assert doc["kafka"]["bootstrap"].startswith("127.0.0.1:")
    assert doc["redis"]["url"].startswith("redis://127.0.0.1:")
    assert doc["s3"]["endpoint"].startswith("http://127.0.0.1:")
    assert doc["s3"]["bucket"] == "signwatch"
    assert doc["s3"]["access_key"] and doc["s3"]["secret_key"]


def test_plain_status_prints_a_table(stack: StackStatus) -> None:
    result = _stack_cli("status", timeout=60)
    assert result.returncode == 0, result.stderr
    for name in ("kafka", "redis", "s3"):
        assert name in result.stdout
    assert "DOWN" not in result.stdout


def test_stack_env_points_at_the_running_stack(stack: StackStatus) -> None:
    env = stack_env(ROOT)
    assert env["SIGNWATCH_BUS_URL"] == f"kafka://{stack.kafka.bootstrap}"
    assert env["SIGNWATCH_STATE_URL"] == stack.redis.url
    assert env["SIGNWATCH_STORE_URL"] == f"s3://{stack.s3.bucket}?endpoint={stack.s3.endpoint}"
    assert env["SIGNWATCH_S3_ACCESS_KEY"] == stack.s3.access_key
    assert env["SIGNWATCH_S3_SECRET_KEY"] == stack.s3.secret_key


def test_credentials_file_is_private() -> None:
    mode = (ROOT / ".stack" / "credentials.json").stat().st_mode & 0o777
    assert mode == 0o600


def test_up_again_is_harmless(stack: StackStatus) -> None:
    before = status(ROOT).pids()
    assert all(before.values()), before
    t0 = time.monotonic()
    result = _stack_cli("up", timeout=120)
    elapsed = time.monotonic() - t0
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("already running") == 3, result.stdout
    assert elapsed < 30, f"a second `up` took {elapsed:.1f} s"
    after = status(ROOT)
    assert after.all_up
    assert after.pids() == before


def test_s3_refuses_anonymous_requests(stack: StackStatus) -> None:
    for url in (stack.s3.endpoint + "/", f"{stack.s3.endpoint}/{stack.s3.bucket}/"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url, timeout=10)
        assert info.value.code == 403

    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import ClientError

    unsigned = boto3.client(
        "s3", endpoint_url=stack.s3.endpoint, region_name="us-east-1",
        config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as err:
        unsigned.put_object(Bucket=stack.s3.bucket, Key=f"anonymous/{uuid.uuid4().hex}", Body=b"x")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_s3_refuses_a_wrong_secret(stack: StackStatus) -> None:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as err:
        _s3(stack, secret=stack.s3.secret_key + "-wrong").list_buckets()
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_s3_round_trip_with_the_credentials(stack: StackStatus) -> None:
    s3 = _s3(stack)
    assert stack.s3.bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    key = f"tests/stack/{uuid.uuid4().hex}.txt"
    s3.put_object(Bucket=stack.s3.bucket, Key=key, Body=b"hello signwatch")
    try:
        assert s3.get_object(Bucket=stack.s3.bucket, Key=key)["Body"].read() == b"hello signwatch"
    finally:
        s3.delete_object(Bucket=stack.s3.bucket, Key=key)


def test_kafka_round_trip(stack: StackStatus) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    topic = f"signwatch.test.stack.{uuid.uuid4().hex[:12]}"
    bootstrap = stack.kafka.bootstrap
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-stack")
    try:
        admin.create_topics({topic: {"num_partitions": 1, "replication_factor": 1}}, wait_for_metadata=True)
        assert topic in admin.list_topics()

        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        try:
            sent = [f"message-{i}".encode() for i in range(5)]
            for i, value in enumerate(sent):
                producer.send(topic, key=str(i).encode(), value=value).get(timeout=30)
            producer.flush(timeout=30)
        finally:
            producer.close()

        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=f"test-stack-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        received: list[bytes] = []
        try:
            deadline = time.monotonic() + 60
            while len(received) < len(sent) and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=500).values():
                    received.extend(r.value for r in records)
        finally:
            consumer.close()
        assert received == sent
    finally:
        try:
            admin.delete_topics([topic])
        finally:
            admin.close()


def test_redis_ping_set_get(stack: StackStatus) -> None:
    import redis

    client = redis.Redis.from_url(stack.redis.url, socket_timeout=5)
    try:
        assert client.ping()
        key = f"signwatch:test:stack:{uuid.uuid4().hex}"
        client.set(key, b"value", ex=60)
        assert client.get(key) == b"value"
        client.delete(key)
    finally:
        client.close()

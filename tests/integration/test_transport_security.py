"""The whole loop over secured servers: a Kafka broker of the test's own with a SASL_SSL listener
(SCRAM-SHA-512 for the services, its user created through the admin API; PLAIN beside it) and a
mutual-TLS listener, a redis-server on a TLS port with a password, a CA and certificates made here.
Inference publishes, capture writes to S3 (the shared stack's), the monitor counts in the TLS Redis.
A wrong password, an untrusted CA or a missing client certificate stops a service at start with the
reason (exit code 2) within seconds, and readiness stays false.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from signwatch.capture import read_capture_lines
from signwatch.config import Settings
from signwatch.model.core import load_spec
from signwatch.monitoring.windows import Windows
from signwatch.ports import open_bus, open_state
from signwatch.ports.security import Credentials, KafkaSecurity, RedisSecurity, ServerRefused
from signwatch.runtime import open_ports
from signwatch_services.capture.server import build_loop as capture_loop
from signwatch_services.health import port_checks
from signwatch_services.monitor.server import build_loop as monitor_loop
from tests.conftest import PROJECT, wait_until
from tests.integration.secure_servers import PLAIN_PASSWORD, PLAIN_USER, SecureKafka, TlsRedis, make_pki
from tests.integration.serving import live_server
from tests.unit.helpers import png_bytes

pytestmark = [
    pytest.mark.stack,
    pytest.mark.filterwarnings("ignore:read_text is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning"),
]

SERVICE_USER, SERVICE_PASSWORD = "signwatch", "scram-secret-of-signwatch"
REDIS_PASSWORD = "redis-secret"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    folder = tmp_path_factory.mktemp("secured")
    pki = make_pki(folder / "pki")
    redis_server = TlsRedis(folder / "redis", pki, REDIS_PASSWORD).start()
    kafka = SecureKafka(folder / "kafka", pki)
    try:
        kafka.start()
        kafka.add_scram_user("SCRAM-SHA-512", SERVICE_USER, SERVICE_PASSWORD)
        password_file = folder / "kafka-password"  # as a Kubernetes secret is mounted
        password_file.write_text(SERVICE_PASSWORD + "\n")
        yield pki, kafka, redis_server, password_file
    finally:
        kafka.stop()
        redis_server.stop()


def _env(secured, stack, unique: str, **overrides: str) -> dict[str, str]:
    """SIGNWATCH_ variables of a service on the secured servers (the password from a file)."""
    pki, kafka, redis_server, password_file = secured
    s3 = stack["s3"]
    return {
        "SIGNWATCH_BUS_URL": f"kafka://{kafka.sasl_bootstrap}?security_protocol=SASL_SSL&sasl_mechanism=SCRAM-SHA-512",
        "SIGNWATCH_KAFKA_SASL_USERNAME": SERVICE_USER, "SIGNWATCH_KAFKA_SASL_PASSWORD_FILE": str(password_file),
        "SIGNWATCH_KAFKA_SSL_CA_FILE": str(pki.ca),
        "SIGNWATCH_STATE_URL": redis_server.url, "SIGNWATCH_REDIS_PASSWORD": REDIS_PASSWORD,
        "SIGNWATCH_REDIS_SSL_CA_FILE": str(pki.ca),
        "SIGNWATCH_STORE_URL": f"s3://{s3['bucket']}?endpoint={s3['endpoint']}",
        "SIGNWATCH_S3_ACCESS_KEY": s3["access_key"], "SIGNWATCH_S3_SECRET_KEY": s3["secret_key"],
        "SIGNWATCH_ENDPOINT": f"tls-{unique}", "SIGNWATCH_INFERENCE_TOPIC": f"tls-{unique}.inference",
        "SIGNWATCH_VIOLATIONS_TOPIC": f"tls-{unique}.violations", "SIGNWATCH_CAPTURE_PREFIX": f"tls-{unique}/datacapture",
        "SIGNWATCH_CAPTURE_FLUSH_SECONDS": "1", "SIGNWATCH_MONITOR_LEARN_BASELINE_SECONDS": "0",
    } | overrides


def _settings(env: dict[str, str], monkeypatch) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_the_whole_loop_runs_over_sasl_ssl_kafka_and_tls_redis(secured, stack, unique, monkeypatch):
    settings = _settings(_env(secured, stack, unique), monkeypatch)
    assert settings.kafka_sasl_password.get_secret_value() == SERVICE_PASSWORD  # read from the file
    ports = open_ports(settings)
    assert all(port_checks(ports)().values()), "ready over SASL_SSL, TLS Redis and S3"
    capture, monitor = capture_loop(settings, ports), monitor_loop(settings, load_spec(), ports)
    threads = [capture.start_thread(), monitor.start_thread()]
    n = 12
    try:
        with live_server(settings, ports) as (url, core):
            with httpx.Client(base_url=url, timeout=30) as client:
                for i in range(n):
                    r = client.post("/invocations", content=png_bytes(seed=i, size=28),
                                    headers={"content-type": "image/png"})
                    assert r.status_code == 200, r.text
            core.publisher.drain(30)

            def captured() -> int:
                return sum(len(read_capture_lines(ports.store.get(k))[0])
                           for k in ports.store.list(settings.capture_prefix))

            wait_until(lambda: captured() == n, 60, interval_s=0.5, what="capture to write every event to S3")
            windows = Windows(open_state(settings.state_url, Credentials.from_settings(settings)), settings.endpoint,
                              n_classes=load_spec().num_classes)
            wait_until(lambda: windows.time_window(time.time()).total == n, 60, interval_s=0.5,
                       what="the monitor to count every event in the TLS Redis")
    finally:
        for loop in (capture, monitor):
            loop.stop()
        for t in threads:
            t.join(30)
        ports.close()


def test_plain_and_mutual_tls_reach_the_broker(secured, unique):
    pki, kafka, _, _ = secured
    buses = {
        "PLAIN": open_bus(f"kafka://{kafka.sasl_bootstrap}", Credentials(kafka=KafkaSecurity(
            protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username=PLAIN_USER, sasl_password=PLAIN_PASSWORD,
            ssl_ca_file=str(pki.ca)))),
        "mTLS": open_bus(f"kafka://{kafka.ssl_bootstrap}?security_protocol=SSL&ssl_ca_file={pki.ca}"
                         f"&ssl_cert_file={pki.client_cert}&ssl_key_file={pki.client_key}"),
    }
    for name, bus in buses.items():
        topic = f"tls-{unique}-{name}"
        try:
            bus.ensure_topics([topic], 1)
            bus.publish(topic, "k", name.encode())
            bus.flush(10)
            consumer = bus.consumer([topic], f"g-{unique}-{name}")
            try:
                got: list = []
                wait_until(lambda: got.extend(consumer.poll(500)) or got, 30, what=f"the {name} consumer to read")
                assert got[0].value == name.encode()
            finally:
                consumer.close()
        finally:
            bus.close()


def _serve(env: dict[str, str], service: str = "capture") -> tuple[subprocess.CompletedProcess, float]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SIGNWATCH_")} | env
    full["SIGNWATCH_CAPTURE_PORT"] = "0"
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "signwatch_services.cli", "serve", service], env=full, cwd=PROJECT,
                          capture_output=True, text=True, timeout=60)
    return done, time.monotonic() - start


@pytest.mark.parametrize("case, overrides, reason", [
    ("wrong SASL password", {"SIGNWATCH_KAFKA_SASL_PASSWORD_FILE": None, "SIGNWATCH_KAFKA_SASL_PASSWORD": "wrong"},
     "authentication failed"),
    ("untrusted CA", {"SIGNWATCH_KAFKA_SSL_CA_FILE": "other-ca"}, "TLS handshake failed"),
    ("wrong Redis password", {"SIGNWATCH_REDIS_PASSWORD": "wrong"}, "authentication failed"),
    ("Redis with an untrusted CA", {"SIGNWATCH_REDIS_SSL_CA_FILE": "other-ca"}, "TLS handshake failed"),
])
def test_a_refused_credential_stops_the_service_at_start_with_the_reason(secured, stack, unique, case, overrides,
                                                                        reason):
    env = _env(secured, stack, unique)
    for name, value in overrides.items():  # None: unset
        env.pop(name, None)
        if value is not None:
            env[name] = str(secured[0].other_ca) if value == "other-ca" else value
    done, took = _serve(env)
    assert done.returncode == 2, (case, done.returncode, done.stderr[-2000:])
    assert reason in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert took < 30, f"{case}: refused after {took:.0f} s"


def test_readiness_stays_false_while_the_broker_refuses_the_password(secured, stack, unique, monkeypatch):
    env = _env(secured, stack, unique, SIGNWATCH_KAFKA_SASL_PASSWORD="wrong")
    env.pop("SIGNWATCH_KAFKA_SASL_PASSWORD_FILE")
    ports = open_ports(_settings(env, monkeypatch))
    try:
        with pytest.raises(ServerRefused, match="authentication failed"):
            ports.bus.ensure_topics([f"tls-{unique}.inference"], 3)
        start = time.monotonic()
        checks = port_checks(ports)()
        assert checks == {"bus": False, "store": True, "state": True} and time.monotonic() - start < 10
    finally:
        ports.close()
    with pytest.raises(ServerRefused, match="authentication failed"):
        open_state(secured[2].url, Credentials(redis=RedisSecurity(password="wrong", ssl_ca_file=str(secured[0].ca))))

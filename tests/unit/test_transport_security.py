"""Transport security options: parsed once (settings, URL query, secret files), checked at start,
mapped to librdkafka's names and kafka-python's keywords; redis-py's TLS options; S3's CA bundle."""

from __future__ import annotations

import http.server
import ssl
import threading

import pytest

from signwatch.config import Settings
from signwatch.ports import SCHEMES, UnsupportedURL, check_url, open_bus, open_state, open_store, register
from signwatch.ports.security import Credentials, KafkaSecurity, RedisSecurity, S3Credentials, TransportSecurityError

SCRAM = dict(protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="svc", sasl_password="pw")


def test_sasl_ssl_maps_to_librdkafka_and_kafka_python(tmp_path):
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "c.pem", "k.pem"))
    for f in (ca, cert, key):
        f.write_text("-")
    security = KafkaSecurity(**SCRAM, ssl_ca_file=str(ca), ssl_cert_file=str(cert), ssl_key_file=str(key),
                             ssl_key_password="kp").checked()
    assert security.librdkafka() == {
        "security.protocol": "sasl_ssl", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "svc",
        "sasl.password": "pw", "ssl.ca.location": str(ca), "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key), "ssl.key.password": "kp"}
    assert security.kafka_python() == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "svc",
        "sasl_plain_password": "pw", "ssl_check_hostname": True, "ssl_cafile": str(ca), "ssl_certfile": str(cert),
        "ssl_keyfile": str(key), "ssl_password": "kp"}
    assert "pw" not in repr(security)
    assert KafkaSecurity().librdkafka() == {"security.protocol": "plaintext"}
    assert KafkaSecurity().kafka_python() == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize("options, message", [
    (dict(protocol="TLS"), "security_protocol must be one of"),
    (dict(protocol="SASL_SSL", sasl_username="u", sasl_password="p"), "needs sasl_mechanism"),
    (dict(protocol="SASL_SSL", sasl_mechanism="GSSAPI", sasl_username="u", sasl_password="p"), "needs sasl_mechanism"),
    (dict(protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u"), "needs a username and a password"),
    (dict(protocol="SSL", sasl_mechanism="PLAIN"), "would be ignored"),
    (dict(protocol="PLAINTEXT", ssl_ca_file="/etc/hostname"), "would be ignored"),
    (dict(protocol="SSL", ssl_cert_file="/etc/hostname"), "go together"),
    (dict(protocol="SSL", ssl_ca_file="/nowhere/ca.pem"), "is not a readable file"),
])
def test_options_that_cannot_work_are_refused_at_start(options, message):
    with pytest.raises(TransportSecurityError, match=message):
        KafkaSecurity(**options).checked()


def test_the_bus_urls_query_overrides_the_settings_but_never_carries_a_secret():
    credentials = Credentials(kafka=KafkaSecurity(sasl_username="svc", sasl_password="pw"))
    bus = open_bus("kafka://b1:9093,b2:9093?security_protocol=sasl_ssl&sasl_mechanism=scram-sha-256", credentials)
    assert bus._security.protocol == "SASL_SSL" and bus._security.sasl_mechanism == "SCRAM-SHA-256"
    assert bus._security.librdkafka()["sasl.password"] == "pw"
    for url in ("kafka://b1:9093?sasl_password=pw", "kafka://b1:9093?password=pw"):
        with pytest.raises(UnsupportedURL, match="would put a secret in the URL") as info:
            check_url("bus", url)
        assert "SIGNWATCH_" in str(info.value)
    with pytest.raises(UnsupportedURL, match="must not carry a user or password") as info:
        open_bus("kafka://svc:pw@b1:9093")
    assert ":pw@" not in str(info.value)
    with pytest.raises(UnsupportedURL, match="needs sasl_mechanism"):  # a bad combination is a URL error at open
        open_bus("kafka://b1:9093?security_protocol=SASL_SSL")


def test_secrets_come_from_the_environment_or_a_mounted_file(tmp_path, monkeypatch):
    secret = tmp_path / "password"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("SIGNWATCH_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("SIGNWATCH_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("SIGNWATCH_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("SIGNWATCH_KAFKA_SASL_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("SIGNWATCH_REDIS_PASSWORD", "redis-pw")
    monkeypatch.setenv("SIGNWATCH_S3_CA_BUNDLE", str(secret))
    credentials = Credentials.from_settings(Settings())
    assert credentials.kafka.sasl_password == "from-a-file" and credentials.kafka.checked()
    assert credentials.redis.password == "redis-pw"
    assert credentials.s3.ca_bundle == str(secret)
    monkeypatch.setenv("SIGNWATCH_KAFKA_SASL_PASSWORD", "both")
    with pytest.raises(ValueError, match="not both"):
        Settings()
    monkeypatch.delenv("SIGNWATCH_KAFKA_SASL_PASSWORD")
    monkeypatch.setenv("SIGNWATCH_KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="kafka_sasl_password_file"):
        Settings()


def test_redis_options_add_the_password_and_the_ca_for_rediss(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    security = RedisSecurity(password="pw", ssl_ca_file=str(ca))
    assert security.client_options("rediss") == {"password": "pw", "ssl_ca_certs": str(ca), "ssl_cert_reqs": "required"}
    with pytest.raises(TransportSecurityError, match="not rediss://"):
        security.client_options("redis")
    assert RedisSecurity(password="pw").client_options("redis") == {"password": "pw"}


def test_a_password_in_the_redis_url_is_allowed_and_never_repeated(monkeypatch):
    check_url("state", "redis://:secret@127.0.0.1:1/0")  # redis-py's own URL form
    with pytest.raises(UnsupportedURL) as info:
        open_state("mongodb://u:secret@127.0.0.1")
    assert "secret" not in str(info.value)


def test_every_port_is_opened_through_one_registry_and_a_scheme_is_one_line(tmp_path):
    assert {(p, s) for p, s in SCHEMES} >= {("bus", "kafka"), ("bus", "memory"), ("store", "s3"), ("store", "file"),
                                            ("state", "redis"), ("state", "rediss"), ("state", "memory")}
    seen = []
    register("state", "test-scheme", lambda url, credentials: seen.append((url.query, credentials)) or "opened",
             {"db"})
    try:
        credentials = Credentials(redis=RedisSecurity(password="pw"))
        assert open_state("test-scheme://host?db=2", credentials) == "opened"
        assert seen == [({"db": "2"}, credentials)]
        with pytest.raises(UnsupportedURL, match="x not supported"):
            check_url("state", "test-scheme://host?x=1")
    finally:
        del SCHEMES[("state", "test-scheme")]


def test_s3_over_https_trusts_a_private_ca_bundle(tmp_path):
    from tests.integration.secure_servers import make_pki

    pki = make_pki(tmp_path / "pki")

    class Bucket(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - HEAD /bucket: it exists
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Bucket)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"s3://bucket?endpoint=https://127.0.0.1:{server.server_port}"
        keys = dict(access_key="a", secret_key="s")
        trusted = open_store(url, Credentials(s3=S3Credentials(**keys, ca_bundle=str(pki.ca))))
        untrusted = open_store(url, Credentials(s3=S3Credentials(**keys)))
        assert trusted.ping() and not untrusted.ping()
    finally:
        server.shutdown()
        server.server_close()

"""Secured servers of a test's own, on free loopback ports: a CA and certificates made here, one
KRaft Kafka broker with a SASL_SSL listener (PLAIN and SCRAM-SHA-256/512) and an SSL listener that
requires client certificates, and a redis-server with a TLS port and a password. The shared stack
stays untouched. Kafka's jars are the shared stack's (``.stack/kafka/libs``).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from signwatch.stack.kafka import LOG4J_CONFIG, _random_cluster_id, java_binary
from signwatch.stack.paths import StackPaths, project_file
from tests.conftest import PROJECT, wait_until
from tests.integration.kafka_cluster import HEAP, _free_ports

ADMIN_USER, ADMIN_PASSWORD = "admin", "admin-secret"
PLAIN_USER, PLAIN_PASSWORD = "plain-user", "plain-secret"
KEYSTORE_PASSWORD = "keystore-secret"


@dataclass
class Pki:
    """PEM files: ``ca`` signed ``server_cert``/``server_key`` (127.0.0.1 and localhost) and
    ``client_cert``/``client_key``; ``other_ca`` signed nothing here (an untrusted CA);
    ``server_keystore`` is the server's key and chain as PKCS#12 (for the JVM)."""

    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    server_keystore: Path
    client_cert: Path
    client_key: Path


def make_pki(folder: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool, usage=None, sans=()):
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
                critical=True)
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(path: Path, *objects) -> Path:
        data = b""
        for obj in objects:
            if isinstance(obj, x509.Certificate):
                data += obj.public_bytes(serialization.Encoding.PEM)
            else:
                data += obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
        path.write_bytes(data)
        return path

    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate("signwatch test CA", ca_key, "signwatch test CA", ca_key, ca=True)
    other_cert = certificate("an untrusted CA", other_key, "an untrusted CA", other_key, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server_cert = certificate(
        "127.0.0.1", server_key, "signwatch test CA", ca_key, ca=False,
        usage=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    client_cert = certificate("signwatch-client", client_key, "signwatch test CA", ca_key, ca=False,
                              usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    keystore = folder / "server.p12"
    keystore.write_bytes(pkcs12.serialize_key_and_certificates(
        b"server", server_key, server_cert, [ca_cert],
        serialization.BestAvailableEncryption(KEYSTORE_PASSWORD.encode())))
    return Pki(ca=write(folder / "ca.pem", ca_cert), other_ca=write(folder / "other-ca.pem", other_cert),
               server_cert=write(folder / "server.pem", server_cert, ca_cert),
               server_key=write(folder / "server.key", server_key), server_keystore=keystore,
               client_cert=write(folder / "client.pem", client_cert), client_key=write(folder / "client.key", client_key))


SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
controller.listener.names=CONTROLLER
listeners=SASL_SSL://127.0.0.1:{sasl_port},SSL://127.0.0.1:{ssl_port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=SASL_SSL://127.0.0.1:{sasl_port},SSL://127.0.0.1:{ssl_port}
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
log.dirs={data_dir}
num.partitions=3
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
default.replication.factor=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
background.threads=2
log.cleaner.enable=false

# TLS: the broker's key and chain (PKCS#12), the CA that signs client certificates
ssl.keystore.type=PKCS12
ssl.keystore.location={keystore}
ssl.keystore.password={keystore_password}
ssl.key.password={keystore_password}
ssl.truststore.type=PEM
ssl.truststore.location={ca}
listener.name.ssl.ssl.client.auth=required

# SASL: PLAIN users from this file, SCRAM users from the metadata log (an admin made at format time,
# the service's through the admin API)
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required \
  username="{admin}" password="{admin_password}" user_{admin}="{admin_password}" user_{plain_user}="{plain_password}";
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \
  username="{admin}" password="{admin_password}";
"""


class SecureKafka:
    """One KRaft broker: ``sasl_bootstrap`` (SASL_SSL) and ``ssl_bootstrap`` (mutual TLS)."""

    def __init__(self, folder: Path, pki: Pki) -> None:
        self.folder, self.pki = folder, pki
        self.sasl_port, self.ssl_port, self.controller_port = _free_ports(3)
        self.sasl_bootstrap = f"127.0.0.1:{self.sasl_port}"
        self.ssl_bootstrap = f"127.0.0.1:{self.ssl_port}"
        self.process: subprocess.Popen | None = None
        self.libs = StackPaths.of(PROJECT).kafka_libs
        if not (self.libs / "VERSION").is_file():
            raise RuntimeError(f"no Kafka jars in {self.libs}: run `signwatch stack up` once")

    def _java(self, *args: str) -> list[str]:
        log4j = project_file(StackPaths.of(PROJECT), LOG4J_CONFIG)
        return [java_binary(), *HEAP, "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log4j}",
                f"-Dkafka.logs.dir={self.folder}", "-cp", str(self.libs / "*"), *args]

    def admin_config(self) -> dict[str, str]:
        """librdkafka settings of the SCRAM admin bootstrapped at format time."""
        return {"bootstrap.servers": self.sasl_bootstrap, "security.protocol": "sasl_ssl",
                "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": ADMIN_USER, "sasl.password": ADMIN_PASSWORD,
                "ssl.ca.location": str(self.pki.ca), "socket.timeout.ms": 5000,
                "logger": logging.getLogger("secure_kafka")}

    def start(self, timeout_s: float = 60) -> "SecureKafka":
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "server.properties"
        config.write_text(SERVER_PROPERTIES.format(
            controller_port=self.controller_port, sasl_port=self.sasl_port, ssl_port=self.ssl_port,
            data_dir=self.folder / "data", keystore=self.pki.server_keystore, keystore_password=KEYSTORE_PASSWORD,
            ca=self.pki.ca, admin=ADMIN_USER, admin_password=ADMIN_PASSWORD, plain_user=PLAIN_USER,
            plain_password=PLAIN_PASSWORD))
        formatted = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", "--cluster-id", _random_cluster_id(), "--config",
                       str(config), "--add-scram", f"SCRAM-SHA-512=[name={ADMIN_USER},password={ADMIN_PASSWORD}]"),
            capture_output=True, text=True, timeout=120)
        if formatted.returncode != 0:
            raise RuntimeError(f"formatting the broker failed:\n{(formatted.stdout + formatted.stderr)[-3000:]}")
        with (self.folder / "server.log").open("ab") as log:
            self.process = subprocess.Popen(self._java("kafka.Kafka", str(config)), stdout=log,
                                            stderr=subprocess.STDOUT, cwd=self.folder)
        wait_until(self._up, timeout_s, interval_s=0.5, what="the secured Kafka broker")
        return self

    def _up(self) -> bool:
        from confluent_kafka.admin import AdminClient

        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"the broker exited with {self.process.returncode}:\n{self.log_tail()}")
        try:
            return bool(AdminClient(self.admin_config()).list_topics(timeout=2).brokers)
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def add_scram_user(self, mechanism: str, user: str, password: str) -> None:
        """Through the admin API, as an operator's tooling would."""
        from confluent_kafka.admin import AdminClient, ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

        admin = AdminClient(self.admin_config())
        info = ScramCredentialInfo(ScramMechanism[mechanism.replace("-", "_")], 4096)
        for future in admin.alter_user_scram_credentials(
                [UserScramCredentialUpsertion(user, info, password.encode())]).values():
            future.result(timeout=30)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return (self.folder / "server.log").read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None


class TlsRedis:
    """redis-server on a TLS port only, with ``requirepass``; client certificates not asked for."""

    def __init__(self, folder: Path, pki: Pki, password: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary, self.folder, self.pki, self.password = binary, folder, pki, password
        [self.port] = _free_ports(1)
        self.url = f"rediss://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, password=self.password, ssl_ca_certs=str(self.pki.ca),
                                             socket_connect_timeout=0.5, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def start(self) -> "TlsRedis":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [self.binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
             "--tls-cert-file", str(self.pki.server_cert), "--tls-key-file", str(self.pki.server_key),
             "--tls-ca-cert-file", str(self.pki.ca), "--tls-auth-clients", "no", "--requirepass", self.password,
             "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, 15, interval_s=0.05, what=f"TLS redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None

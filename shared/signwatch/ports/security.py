"""How the adapters authenticate and encrypt: one object per server kind, built once from the
settings by a composition root (``Credentials.from_settings``) and handed to ``open_bus``,
``open_store`` and ``open_state``. Nothing here reads the environment.

Kafka's options come from the settings and may be overridden by the bus URL's query for the
non-secret ones (``kafka://host:9093?security_protocol=SASL_SSL&sasl_mechanism=SCRAM-SHA-512``); a
password in a URL is refused, so that it never lands in a manifest, a log line or ``ps``. The same
options are mapped to librdkafka's names (the producer) and to kafka-python's keyword arguments
(consumers and the admin client).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

# The bus URL's query options besides linger_ms: only what may be read by anyone who sees the URL.
KAFKA_URL_SECURITY_OPTIONS = frozenset({
    "security_protocol", "sasl_mechanism", "sasl_username", "ssl_ca_file", "ssl_cert_file", "ssl_key_file",
})
# Refused in a query with a pointer to where they belong.
SECRET_URL_OPTIONS = frozenset({"password", "sasl_password", "ssl_key_password", "ssl_password", "secret_key"})


class TransportSecurityError(ValueError):
    """Transport security options that cannot work (refused at start, before any connection)."""


class ServerRefused(RuntimeError):
    """A server turned this client away: wrong password, untrusted certificate. Retrying does
    not help, so a service stops at start with this message instead of waiting for it."""


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca_file: str | None = None
    ssl_cert_file: str | None = None
    ssl_key_file: str | None = None
    ssl_key_password: str | None = field(default=None, repr=False)

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def with_url_options(self, query: dict[str, str]) -> KafkaSecurity:
        """These options overridden by the bus URL's query (its non-secret ones), then checked."""
        secrets = sorted(set(query) & SECRET_URL_OPTIONS)
        if secrets:
            raise TransportSecurityError(
                f"kafka URL option(s) {', '.join(secrets)} would put a secret in the URL: set "
                "SIGNWATCH_KAFKA_SASL_PASSWORD / SIGNWATCH_KAFKA_SSL_KEY_PASSWORD (or their *_FILE variant "
                "naming a mounted secret) instead")
        names = {"security_protocol": "protocol"}
        updates = {names.get(k, k): v for k, v in query.items() if k in KAFKA_URL_SECURITY_OPTIONS}
        if "protocol" in updates:
            updates["protocol"] = updates["protocol"].upper()
        if "sasl_mechanism" in updates:
            updates["sasl_mechanism"] = updates["sasl_mechanism"].upper()
        return replace(self, **updates).checked()

    def checked(self) -> KafkaSecurity:
        """Self, or TransportSecurityError naming what cannot work (at start, not at the first event)."""
        if self.protocol not in KAFKA_PROTOCOLS:
            raise TransportSecurityError(
                f"kafka security_protocol must be one of {', '.join(KAFKA_PROTOCOLS)}, got {self.protocol!r}")
        if self.uses_sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise TransportSecurityError(
                    f"kafka {self.protocol} needs sasl_mechanism {', '.join(SASL_MECHANISMS)}, got {self.sasl_mechanism!r}")
            if not self.sasl_username or not self.sasl_password:
                raise TransportSecurityError(
                    f"kafka {self.protocol} needs a username and a password (SIGNWATCH_KAFKA_SASL_USERNAME and "
                    "SIGNWATCH_KAFKA_SASL_PASSWORD or SIGNWATCH_KAFKA_SASL_PASSWORD_FILE)")
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password:
            raise TransportSecurityError(
                f"kafka SASL options are set but security_protocol is {self.protocol}: they would be ignored "
                "(use SASL_SSL)")
        tls_files = (self.ssl_ca_file, self.ssl_cert_file, self.ssl_key_file)
        if not self.uses_tls and any(tls_files):
            raise TransportSecurityError(
                f"kafka TLS files are set but security_protocol is {self.protocol}: they would be ignored (use SSL "
                "or SASL_SSL)")
        if bool(self.ssl_cert_file) != bool(self.ssl_key_file):
            raise TransportSecurityError("kafka ssl_cert_file and ssl_key_file go together (mutual TLS)")
        _existing_files("kafka", {"ssl_ca_file": self.ssl_ca_file, "ssl_cert_file": self.ssl_cert_file,
                                  "ssl_key_file": self.ssl_key_file})
        return self

    def librdkafka(self) -> dict[str, str]:
        """confluent-kafka (librdkafka) configuration properties."""
        config = {"security.protocol": self.protocol.lower()}
        if self.uses_sasl:
            config |= {"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.sasl_username,
                       "sasl.password": self.sasl_password}
        if self.uses_tls:
            config |= _present({"ssl.ca.location": self.ssl_ca_file, "ssl.certificate.location": self.ssl_cert_file,
                                "ssl.key.location": self.ssl_key_file, "ssl.key.password": self.ssl_key_password})
        return config

    def kafka_python(self) -> dict[str, object]:
        """kafka-python keyword arguments (KafkaConsumer, KafkaAdminClient)."""
        kwargs: dict[str, object] = {"security_protocol": self.protocol}
        if self.uses_sasl:
            kwargs |= {"sasl_mechanism": self.sasl_mechanism, "sasl_plain_username": self.sasl_username,
                       "sasl_plain_password": self.sasl_password}
        if self.uses_tls:
            kwargs |= {"ssl_check_hostname": True}
            kwargs |= _present({"ssl_cafile": self.ssl_ca_file, "ssl_certfile": self.ssl_cert_file,
                                "ssl_keyfile": self.ssl_key_file, "ssl_password": self.ssl_key_password})
        return kwargs


@dataclass(frozen=True)
class RedisSecurity:
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_ca_file: str | None = None
    ssl_cert_file: str | None = None
    ssl_key_file: str | None = None

    def client_options(self, scheme: str) -> dict[str, object]:
        """redis-py keyword arguments; a password or username in the URL itself takes precedence
        (redis-py's from_url lets the URL's parts win over these)."""
        options = _present({"username": self.username, "password": self.password})
        tls = {"ssl_ca_certs": self.ssl_ca_file, "ssl_certfile": self.ssl_cert_file, "ssl_keyfile": self.ssl_key_file}
        if scheme != "rediss":
            if any(tls.values()):
                raise TransportSecurityError("Redis TLS files are set but the state URL is not rediss://: they "
                                             "would be ignored")
            return options
        if bool(self.ssl_cert_file) != bool(self.ssl_key_file):
            raise TransportSecurityError("Redis ssl_cert_file and ssl_key_file go together (mutual TLS)")
        _existing_files("redis", tls)
        return options | _present(tls) | {"ssl_cert_reqs": "required"}


@dataclass(frozen=True)
class S3Credentials:
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    region: str = "us-east-1"
    ca_bundle: str | None = None  # an https endpoint signed by a private CA (boto3's verify=)

    def checked(self) -> S3Credentials:
        _existing_files("s3", {"ca_bundle": self.ca_bundle})
        return self


@dataclass(frozen=True)
class Credentials:
    """Everything the adapters need besides their URL."""

    kafka: KafkaSecurity = KafkaSecurity()
    redis: RedisSecurity = RedisSecurity()
    s3: S3Credentials = S3Credentials()

    @classmethod
    def from_settings(cls, settings) -> Credentials:
        return cls(
            kafka=KafkaSecurity(
                protocol=settings.kafka_security_protocol, sasl_mechanism=settings.kafka_sasl_mechanism,
                sasl_username=settings.kafka_sasl_username, sasl_password=_secret(settings.kafka_sasl_password),
                ssl_ca_file=_path(settings.kafka_ssl_ca_file), ssl_cert_file=_path(settings.kafka_ssl_cert_file),
                ssl_key_file=_path(settings.kafka_ssl_key_file),
                ssl_key_password=_secret(settings.kafka_ssl_key_password)),
            redis=RedisSecurity(
                username=settings.redis_username, password=_secret(settings.redis_password),
                ssl_ca_file=_path(settings.redis_ssl_ca_file), ssl_cert_file=_path(settings.redis_ssl_cert_file),
                ssl_key_file=_path(settings.redis_ssl_key_file)),
            s3=S3Credentials(access_key=_secret(settings.s3_access_key), secret_key=_secret(settings.s3_secret_key),
                             region=settings.s3_region, ca_bundle=_path(settings.s3_ca_bundle)),
        )


def _secret(value) -> str | None:
    return value.get_secret_value() if value is not None else None


def _path(value) -> str | None:
    return str(value) if value is not None else None


def _present(options: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in options.items() if v is not None}


def _existing_files(server: str, files: dict[str, str | None]) -> None:
    for name, path in files.items():
        if path is not None and not Path(path).is_file():
            raise TransportSecurityError(f"{server} {name} {path} is not a readable file")

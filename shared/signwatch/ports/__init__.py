"""Ports and their adapters, picked by URL scheme from one registry (as faust finds its stores).

=========  =====================================  =====================================
port       production                             embedded / unit tests
=========  =====================================  =====================================
bus        ``kafka://host:port[,host:port]``      ``memory://[name]``
           ``[?linger_ms=N&security_protocol=..]``
store      ``s3://bucket?endpoint=https://...``   ``file:///absolute/path`` or ``file:rel``
state      ``redis://[:password@]host:port/db``   ``memory://``
           ``rediss://...`` (TLS)
           ``redis+sentinel://h:p[,h:p]/master[/db]``
=========  =====================================  =====================================

Each scheme is registered once, below, with the URL query options its adapter reads and its
opener; an opener is named ``"module:function"`` and imported only when a URL of its scheme is
opened, so that the embedded mode loads no client library. Everything besides the URL (passwords,
CA files, S3 keys) comes in a :class:`~signwatch.ports.security.Credentials` built from the
settings by the composition root: nothing below reads the environment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any
from urllib.parse import ParseResult, parse_qs, unquote, urlparse

from signwatch.ports.bus import EventBus
from signwatch.ports.security import (
    KAFKA_URL_SECURITY_OPTIONS, SECRET_URL_OPTIONS, Credentials, S3Credentials, TransportSecurityError,
)
from signwatch.ports.state import StateStore
from signwatch.ports.store import ObjectStore


class UnsupportedURL(ValueError):
    pass


PORTS = ("bus", "store", "state")


@dataclass(frozen=True)
class PortURL:
    """A port URL parsed once: what every opener receives."""

    url: str
    parsed: ParseResult
    query: dict[str, str]  # the last value of each option

    @property
    def redacted(self) -> str:
        return _redacted(self.url)


Opener = Callable[[PortURL, Credentials], Any]


@dataclass(frozen=True)
class Scheme:
    port: str
    name: str
    opener: str | Opener  # "module:function", imported at the first open (or the function itself)
    # The query options the adapter reads. Any other is refused at start: a misspelt or unsupported
    # option must not be silently ignored and leave a connection in plaintext that its operator
    # believes encrypted. None: the client library's own options, passed through (redis-py's from_url).
    options: frozenset[str] | None = frozenset()

    def open(self, url: PortURL, credentials: Credentials):
        opener = self.opener
        if isinstance(opener, str):
            module, _, function = opener.partition(":")
            opener = getattr(import_module(module), function)
        return opener(url, credentials)


SCHEMES: dict[tuple[str, str], Scheme] = {}


def register(port: str, scheme: str, opener: str | Opener, options: frozenset[str] | set[str] | None = ()) -> None:
    """Serve ``scheme://`` URLs of ``port`` (bus, store, state) with ``opener(PortURL, Credentials)``."""
    if port not in PORTS:
        raise ValueError(f"port must be one of {PORTS}, got {port!r}")
    SCHEMES[(port, scheme)] = Scheme(port, scheme, opener, None if options is None else frozenset(options))


# Production schemes first: messages list them in this order.
register("bus", "kafka", "signwatch.ports.bus_kafka:open_url", {"linger_ms"} | KAFKA_URL_SECURITY_OPTIONS)
register("bus", "memory", "signwatch.ports.bus_memory:open_url")
register("store", "s3", "signwatch.ports.store_s3:open_url", {"endpoint", "region"})
register("store", "file", "signwatch.ports.store_file:open_url")
register("state", "redis", "signwatch.ports.state_redis:open_url", None)  # redis-py's own query options
register("state", "rediss", "signwatch.ports.state_redis:open_url", None)
register("state", "unix", "signwatch.ports.state_redis:open_url", None)
register("state", "redis+sentinel", "signwatch.ports.state_redis:open_sentinel_url")  # no query options
register("state", "memory", "signwatch.ports.state_memory:open_url")


def _redacted(url: str) -> str:
    """The URL without a password, for messages."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    return parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@")).geturl()


def parse_url(port: str, url: str) -> tuple[Scheme, PortURL]:
    """The scheme serving ``url`` and the URL parsed, or UnsupportedURL naming what is wrong."""
    parsed = urlparse(url)
    scheme = SCHEMES.get((port, parsed.scheme))
    if scheme is None:
        known = [name for p, name in SCHEMES if p == port]
        raise UnsupportedURL(f"{port} URL must be {' or '.join(s + '://' for s in known)}, "
                             f"got {_redacted(url)!r}")
    query = parse_qs(parsed.query, keep_blank_values=True)
    if scheme.options is not None:
        secrets = sorted(set(query) & SECRET_URL_OPTIONS)
        if secrets:
            raise UnsupportedURL(
                f"{parsed.scheme}:// URL option(s) {', '.join(secrets)} would put a secret in the URL: set it "
                f"in SIGNWATCH_ settings or their *_FILE variant instead: {_redacted(url)}")
        unknown = sorted(set(query) - scheme.options)
        if unknown:
            known = ", ".join(sorted(scheme.options)) or "none"
            raise UnsupportedURL(f"{parsed.scheme}:// URL option(s) {', '.join(unknown)} not supported "
                                 f"(supported: {known}): {_redacted(url)}")
    return scheme, PortURL(url, parsed, {k: v[-1] for k, v in query.items()})


def s3_location(url: str, fallback_store_url: str | None = None) -> tuple[str, str]:
    """(the store URL of the bucket, the key or prefix) of ``s3://bucket/key[?endpoint=URL&region=R]``;
    without options of its own, the S3 options of ``fallback_store_url`` (the configured store: the same S3)."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise UnsupportedURL(f"expected s3://bucket/key, got {_redacted(url)!r}")
    query = parsed.query
    if not query and fallback_store_url and urlparse(fallback_store_url).scheme == "s3":
        query = urlparse(fallback_store_url).query
    store_url = f"s3://{parsed.netloc}" + (f"?{query}" if query else "")
    parse_url("store", store_url)  # only the options the store reads
    return store_url, unquote(parsed.path).lstrip("/")


def check_url(port: str, url: str) -> None:
    """Raise UnsupportedURL unless ``url`` names an adapter of ``port`` (bus, store, state) with only
    the options it reads: settings call this so that a bad URL stops a service at start."""
    parse_url(port, url)


def _open(port: str, url: str, credentials: Credentials | None):
    scheme, parsed = parse_url(port, url)
    try:
        return scheme.open(parsed, credentials or Credentials())
    except TransportSecurityError as exc:
        raise UnsupportedURL(f"{exc} ({parsed.redacted})") from None


def open_bus(url: str, credentials: Credentials | None = None) -> EventBus:
    return _open("bus", url, credentials)


def open_store(url: str, credentials: Credentials | str | None = None, secret_key: str | None = None, *,
               access_key: str | None = None) -> ObjectStore:
    """``open_store(url, credentials)``; tests' shorthand ``open_store(url, access_key, secret_key)``
    stands for S3 keys alone."""
    if isinstance(credentials, str) or secret_key is not None or access_key is not None:
        keys = S3Credentials(access_key=access_key or credentials, secret_key=secret_key)
        credentials = Credentials(s3=keys)
    return _open("store", url, credentials)


def open_state(url: str, credentials: Credentials | None = None) -> StateStore:
    return _open("state", url, credentials)

"""Ports and their adapters, picked by URL scheme (as faust picks its stores).

=========  =====================================  =====================================
port       production                             embedded / unit tests
=========  =====================================  =====================================
bus        ``kafka://host:port[,host:port]``      ``memory://[name]``
           ``[?linger_ms=N]``
store      ``s3://bucket?endpoint=http://...``    ``file:///absolute/path`` or ``file:rel``
state      ``redis://host:port/db``               ``memory://``
=========  =====================================  =====================================

Adapters are imported lazily so that the embedded mode needs no client libraries loaded.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from signwatch.ports.bus import EventBus
from signwatch.ports.state import StateStore
from signwatch.ports.store import ObjectStore


class UnsupportedURL(ValueError):
    pass


# The query options each adapter reads. Any other is refused at start: a misspelt or unsupported
# option (``?security_protocol=SASL_SSL``) must not be silently ignored and leave a connection in
# plaintext that its operator believes encrypted.
URL_OPTIONS: dict[str, frozenset[str]] = {
    "kafka": frozenset({"linger_ms"}),
    "s3": frozenset({"endpoint", "region"}),
    "file": frozenset(),
    "memory": frozenset(),
}


def _query(url: str, parsed) -> dict[str, list[str]]:
    """The URL's query options, refusing any its adapter does not read."""
    query = parse_qs(parsed.query, keep_blank_values=True)
    unknown = sorted(set(query) - URL_OPTIONS.get(parsed.scheme, frozenset(query)))
    if unknown:
        known = ", ".join(sorted(URL_OPTIONS[parsed.scheme])) or "none"
        raise UnsupportedURL(f"{parsed.scheme}:// URL option(s) {', '.join(unknown)} not supported "
                             f"(supported: {known}): {_redacted(url)}")
    return query


def _redacted(url: str) -> str:
    """The URL without a password, for messages."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    return parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@")).geturl()


def check_url(port: str, url: str) -> None:
    """Raise UnsupportedURL unless ``url`` names an adapter of ``port`` (bus, store, state) with only
    the options it reads: settings call this so that a bad URL stops a service at start."""
    parsed = urlparse(url)
    schemes = {"bus": ("kafka", "memory"), "store": ("s3", "file"), "state": ("redis", "rediss", "unix", "memory")}
    if parsed.scheme not in schemes[port]:
        raise UnsupportedURL(f"{port} URL must be {' or '.join(s + '://' for s in schemes[port])}, "
                             f"got {_redacted(url)!r}")
    _query(url, parsed)  # redis:// options are redis-py's own (from_url): not checked here


def open_bus(url: str) -> EventBus:
    parsed = urlparse(url)
    if parsed.scheme == "memory":
        from signwatch.ports.bus_memory import MemoryBus

        _query(url, parsed)
        return MemoryBus(name=(parsed.netloc + parsed.path) or "default")
    if parsed.scheme == "kafka":
        from signwatch.ports.bus_kafka import LINGER_MS, MAX_LINGER_MS, KafkaBus

        if not parsed.netloc:
            raise UnsupportedURL(f"kafka URL needs host:port: {url!r}")
        query = _query(url, parsed)
        try:
            linger = int(query.get("linger_ms", [LINGER_MS])[0])
        except ValueError:
            linger = -1
        if not 0 <= linger <= MAX_LINGER_MS:  # refused here, not at the first event (librdkafka's range)
            raise UnsupportedURL(f"kafka URL's linger_ms must be an integer from 0 to {MAX_LINGER_MS}: {url!r}")
        return KafkaBus(bootstrap=parsed.netloc, linger_ms=linger)
    raise UnsupportedURL(f"bus URL must be kafka:// or memory://, got {url!r}")


def open_store(url: str, access_key: str | None = None, secret_key: str | None = None,
               region: str = "us-east-1") -> ObjectStore:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from signwatch.ports.store_file import FileStore

        path = unquote(parsed.netloc + parsed.path) if parsed.netloc else unquote(parsed.path)
        if not path:
            raise UnsupportedURL(f"file URL needs a path: {url!r}")
        return FileStore(Path(path))
    if parsed.scheme == "s3":
        from signwatch.ports.store_s3 import S3Store

        if not parsed.netloc:
            raise UnsupportedURL(f"s3 URL needs a bucket: {url!r}")
        query = _query(url, parsed)
        endpoint = query.get("endpoint", [None])[0]
        return S3Store(
            bucket=parsed.netloc, endpoint=endpoint, access_key=access_key,
            secret_key=secret_key, region=query.get("region", [region])[0],
        )
    raise UnsupportedURL(f"store URL must be s3:// or file://, got {url!r}")


def open_state(url: str) -> StateStore:
    parsed = urlparse(url)
    if parsed.scheme == "memory":
        from signwatch.ports.state_memory import MemoryState

        return MemoryState()
    if parsed.scheme in ("redis", "rediss", "unix"):
        from signwatch.ports.state_redis import RedisState

        return RedisState(url)
    raise UnsupportedURL(f"state URL must be redis:// or memory://, got {url!r}")

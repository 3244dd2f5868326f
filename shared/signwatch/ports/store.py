"""The object-store port: bytes under string keys, listed by prefix.

Keys are relative ("datacapture/signwatch/AllTraffic/2026/11/27/13/x.jsonl"); an adapter maps
them to a bucket or a folder. ``put`` replaces atomically: a reader sees the old or the new
object, never half of one.
"""

from __future__ import annotations

import posixpath
from typing import Protocol


class ObjectNotFound(KeyError):
    pass


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Store ``data`` and return its URI (``s3://bucket/key`` or ``file:///path``)."""

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix``, sorted."""

    def delete(self, key: str) -> None: ...

    def uri(self, key: str) -> str: ...

    def ping(self) -> bool: ...


def check_key(key: str) -> str:
    """Refuse keys that could escape the store's root (``..``, absolute paths, empties)."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid object key: {key!r}")
    norm = posixpath.normpath(key)
    if norm != key.rstrip("/") or norm.startswith("..") or "/../" in f"/{norm}/":
        raise ValueError(f"invalid object key: {key!r}")
    return key

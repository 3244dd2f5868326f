"""In-process state store with the same semantics as the Redis one, TTLs included."""

from __future__ import annotations

import threading
import time
from typing import Any

from signwatch.ports.state import Increment, OutboxEntry, Push


class MemoryState:
    def __init__(self, clock=time.monotonic) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {}
        self._expiry: dict[str, float] = {}
        self._clock = clock

    def _live(self, key: str) -> bool:
        exp = self._expiry.get(key)
        if exp is not None and exp <= self._clock():
            self._data.pop(key, None)
            self._expiry.pop(key, None)
        return key in self._data

    def _expire(self, key: str, ttl_s: int) -> None:
        self._expiry[key] = self._clock() + ttl_s

    def apply_once(
        self, token: str, token_ttl_s: int, increments: list[Increment], pushes: list[Push]
    ) -> bool:
        with self._lock:
            if self._live(token):
                return False
            self._data[token] = "1"
            self._expire(token, token_ttl_s)
            for inc in increments:
                h = self._data[inc.key] if self._live(inc.key) else {}
                h[inc.field] = h.get(inc.field, 0) + inc.amount
                self._data[inc.key] = h
                self._expire(inc.key, inc.ttl_s)
            for push in pushes:
                lst = self._data[push.key] if self._live(push.key) else []
                lst.insert(0, push.value)
                del lst[push.max_len :]
                self._data[push.key] = lst
                self._expire(push.key, push.ttl_s)
            return True

    def apply_many(self, batch: list[tuple[str, int, list[Increment], list[Push]]]) -> list[bool]:
        return [self.apply_once(*item) for item in batch]

    def get_counts(self, keys: list[str]) -> list[dict[str, int]]:
        with self._lock:
            return [dict(self._data[k]) if self._live(k) else {} for k in keys]

    def get_list(self, key: str) -> list[str]:
        with self._lock:
            return list(self._data[key]) if self._live(key) else []

    def set_once(self, key: str, ttl_s: int) -> bool:
        with self._lock:
            if self._live(key):
                return False
            self._data[key] = "1"
            self._expire(key, ttl_s)
            return True

    def set_value(self, key: str, value: str, ttl_s: int, if_absent: bool = False) -> bool:
        with self._lock:
            if if_absent and self._live(key):
                return False
            self._data[key] = value
            self._expire(key, max(1, ttl_s))
            return True

    def get_value(self, key: str) -> str | None:
        with self._lock:
            value = self._data[key] if self._live(key) else None
            return value if isinstance(value, str) else None

    def claim(self, key: str, value: str, ttl_s: int, entry: OutboxEntry, delete: tuple[str, ...] = ()) -> bool:
        with self._lock:
            if self._live(key):
                return False
            self._data[key] = value
            self._expire(key, max(1, ttl_s))
            box = self._data[entry.outbox] if self._live(entry.outbox) else {}
            box[entry.entry_id] = entry.value
            self._data[entry.outbox] = box
            self._expire(entry.outbox, max(1, entry.ttl_s))
            self._data[entry.lease] = "1"
            self._expire(entry.lease, max(1, entry.lease_s))
            for k in delete:
                self._data.pop(k, None)
                self._expiry.pop(k, None)
            return True

    def outbox(self, key: str) -> dict[str, str]:
        with self._lock:
            return dict(self._data[key]) if self._live(key) else {}

    def outbox_done(self, key: str, entry_id: str) -> None:
        with self._lock:
            if self._live(key):
                self._data[key].pop(entry_id, None)

    def delete(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._data.pop(k, None)
                self._expiry.pop(k, None)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        return None

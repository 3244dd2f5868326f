"""In-process state store with the same semantics as the Redis one, TTLs included."""

from __future__ import annotations

import threading
import time
from typing import Any

from signwatch.ports.state import Increment, JoinItem, JoinKeys, OutboxEntry, Push


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

    def join(self, keys: JoinKeys, items: list[JoinItem]) -> list[str]:
        with self._lock:
            return [self._join_one(keys, item) for item in items]

    @staticmethod
    def _where(keys: JoinKeys, i: int, field: str) -> tuple[str, str]:
        """(hash key, field in it) of ``field`` in day ``i`` (sharded as the Redis script does)."""
        n = keys.shard_chars
        return (f"{keys.days[i]}:{field[:n]}", field[n:]) if n else (keys.days[i], field)

    def _hash(self, key: str, ttl_s: int) -> dict:
        """The hash at ``key`` (created if need be), its expiry renewed: every write renews it."""
        h = self._data[key] if self._live(key) else {}
        self._data[key] = h
        self._expire(key, ttl_s)
        return h

    def _find(self, keys: JoinKeys, field: str) -> tuple[int, str | None]:
        for i in range(len(keys.days)):
            key, f = self._where(keys, i, field)
            if self._live(key) and f in self._data[key]:
                return i, self._data[key][f]
        return -1, None

    def _set(self, keys: JoinKeys, i: int, field: str, value: str) -> None:
        key, f = self._where(keys, i, field)
        if i == 0:
            self._hash(key, keys.day_ttl_s)[f] = value  # a write to the newest day renews its expiry
        else:
            self._data[key][f] = value

    def _bump(self, key: str, field: str, amount: int, ttl_s: int) -> None:
        h = self._hash(key, ttl_s)
        h[field] = h.get(field, 0) + amount

    def _pair(self, keys: JoinKeys, true: str, prediction: str, note: str) -> None:
        predicted, bin_ = prediction.split(",")
        pairs = self._hash(keys.pairs, keys.pairs_ttl_s)
        for f in (f"{true},{predicted}", f"n{bin_}") + ((f"c{bin_}",) if true == predicted else ()):
            pairs[f] = pairs.get(f, 0) + 1
        recent = self._data[keys.recent] if self._live(keys.recent) else []
        recent.insert(0, f"{true},{predicted},{bin_},{note}")
        del recent[keys.recent_max:]
        self._data[keys.recent] = recent
        self._expire(keys.recent, keys.pairs_ttl_s)
        self._bump(keys.day_stats[0], "matched", 1, keys.day_ttl_s)

    def _join_one(self, keys: JoinKeys, item: JoinItem) -> str:
        ttl = keys.day_ttl_s
        if item.side == "prediction":
            for field in (item.field, item.alias):
                if field is None:
                    continue
                i, v = self._find(keys, field)
                if v is not None and v[0] == "L":  # its label was here first
                    self._set(keys, i, field, "M")
                    self._bump(keys.day_stats[i], "labels_waiting", -1, ttl)
                    if field == item.alias:
                        self._set(keys, 0, item.field, "M")
                    elif item.alias:
                        j, w = self._find(keys, item.alias)  # labelled by its other id too before it came
                        if w is not None and w[0] == "L":  # that label is a duplicate, not one waiting
                            self._bump(keys.day_stats[j], "labels_waiting", -1, ttl)
                            self._bump(keys.day_stats[0], "duplicates", 1, ttl)
                        self._set(keys, 0, item.alias, "A" + item.field)
                    self._pair(keys, v[1:], item.value, item.note)
                    return "matched"
                if v is not None and field == item.field:
                    return "seen"
            self._set(keys, 0, item.field, "P" + item.value)
            if item.alias:
                self._set(keys, 0, item.alias, "A" + item.field)
            self._bump(keys.day_stats[0], "predictions_pending", 1, ttl)
            return "pending"
        field = item.field
        i, v = self._find(keys, field)
        if v is not None and v[0] == "A":
            field = v[1:]
            i, v = self._find(keys, field)
        if v is None:
            self._set(keys, 0, item.field, "L" + item.value)
            self._bump(keys.day_stats[0], "labels_waiting", 1, ttl)
            return "waiting"
        if v[0] == "P":
            self._set(keys, i, field, "M")
            self._bump(keys.day_stats[i], "predictions_pending", -1, ttl)
            self._pair(keys, item.value, v[1:], item.note)
            return "matched"
        self._bump(keys.day_stats[0], "duplicates", 1, ttl)
        return "duplicate"

    def delete(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._data.pop(k, None)
                self._expiry.pop(k, None)

    def failovers(self) -> int:
        return 0

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        return None


def open_url(url, credentials) -> MemoryState:
    return MemoryState()

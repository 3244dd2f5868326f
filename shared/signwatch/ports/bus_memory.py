"""In-process event bus for the embedded demo and the unit tests.

Topics are lists of partitions held by a process-wide broker keyed by the URL's name
(``memory://`` and ``memory://name``), so that services built from the same URL share topics.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from signwatch.ports.bus import DeliveryCallback, Headers, Message, encode_headers, next_offsets, partition_for


class _Broker:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.topics: dict[str, list[list[Message]]] = {}
        self.committed: dict[str, dict[tuple[str, int], int]] = defaultdict(dict)

    def ensure(self, topic: str, partitions: int) -> None:
        with self.lock:
            self.topics.setdefault(topic, [[] for _ in range(partitions)])


_BROKERS: dict[str, _Broker] = {}
_BROKERS_LOCK = threading.Lock()


def _broker(name: str) -> _Broker:
    with _BROKERS_LOCK:
        return _BROKERS.setdefault(name, _Broker())


class MemoryConsumer:
    def __init__(self, broker: _Broker, topics: list[str], group: str) -> None:
        self._broker = broker
        self._topics = topics
        self._group = group
        with broker.lock:
            committed = broker.committed[group]
            self._position = {
                (t, p): committed.get((t, p), 0)
                for t in topics
                for p in range(len(broker.topics.get(t, [])))
            }
        self._closed = False

    def _ready(self) -> list[tuple[str, int]]:
        ready = []
        for t in self._topics:
            for p, log in enumerate(self._broker.topics.get(t, [])):
                if self._position.setdefault((t, p), self._broker.committed[self._group].get((t, p), 0)) < len(log):
                    ready.append((t, p))
        return ready

    def poll(self, timeout_ms: int = 500, max_records: int = 500) -> list[Message]:
        deadline = time.monotonic() + timeout_ms / 1000
        with self._broker.lock:
            while not self._closed and not self._ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._broker.lock.wait(left)
            out: list[Message] = []
            for t, p in self._ready():
                log = self._broker.topics[t][p]
                start = self._position[(t, p)]
                chunk = log[start : start + max_records - len(out)]
                out.extend(chunk)
                self._position[(t, p)] = start + len(chunk)
                if len(out) >= max_records:
                    break
            return out

    def lag(self) -> int:
        with self._broker.lock:
            return sum(max(0, len(log) - self._position.get((t, p), 0))
                       for t in self._topics for p, log in enumerate(self._broker.topics.get(t, [])))

    def commit(self, messages: list[Message]) -> None:
        with self._broker.lock:
            committed = self._broker.committed[self._group]
            for tp, off in next_offsets(messages).items():
                committed[tp] = max(committed.get(tp, 0), off)

    def close(self) -> None:
        with self._broker.lock:
            self._closed = True
            self._broker.lock.notify_all()


class MemoryBus:
    def __init__(self, name: str = "default", default_partitions: int = 3) -> None:
        self._broker = _broker(name)
        self._default_partitions = default_partitions

    def ensure_topics(self, topics: list[str], partitions: int) -> None:
        for t in topics:
            self._broker.ensure(t, partitions)

    def publish(
        self, topic: str, key: str, value: bytes, on_delivery: DeliveryCallback | None = None,
        headers: Headers | None = None,
    ) -> None:
        self._broker.ensure(topic, self._default_partitions)
        with self._broker.lock:
            parts = self._broker.topics[topic]
            p = partition_for(key, len(parts))
            parts[p].append(
                Message(topic, p, len(parts[p]), key, bytes(value), int(time.time() * 1000),
                        encode_headers(headers))
            )
            self._broker.lock.notify_all()
        if on_delivery:
            on_delivery(None)

    def flush(self, timeout_s: float = 10.0) -> None:
        return None

    def consumer(self, topics: list[str], group: str) -> MemoryConsumer:
        for t in topics:
            self._broker.ensure(t, self._default_partitions)
        return MemoryConsumer(self._broker, topics, group)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        return None


def open_url(url, credentials) -> MemoryBus:
    """``memory://[name]``: buses of one name in one process share their topics."""
    return MemoryBus(name=(url.parsed.netloc + url.parsed.path) or "default")

"""Label files dropped in the store go to the ground-truth topic, each file once across replicas.

Users' labelling tools write SageMaker's layout, ``{prefix}/{endpoint}/yyyy/mm/dd/hh/*.jsonl``
(the hour the labels were collected; ``groundtruth.write_labels``). Every
``ground_truth_poll_seconds`` the label loop lists the day folders of the retention window and
takes each file it has not taken before: one replica holds a file's lease (5 minutes) while it
publishes the file's records to the topic and waits for the bus; then the file is marked done
(for the retention window and two days more). A replica that dies half-way leaves the lease to
run out and another publishes the whole file again: its records that had reached the topic are
duplicates at the join, which counts the first label of a prediction only. A file over
``groundtruth.MAX_FILE_BYTES`` is marked done unread and logged. A file in the folder of a day
older than the retention window is not looked at (its predictions are forgotten anyway).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone

from signwatch.monitoring.groundtruth import MAX_FILE_BYTES, MergeCounts
from signwatch.ports.bus import EventBus, publish_all
from signwatch.ports.state import StateStore
from signwatch.ports.store import ObjectStore
from signwatch_services.monitor.label_intake import read_items

LEASE_S = 300
DAY_S = 86_400
log = logging.getLogger(__name__)


class LabelFiles:
    def __init__(self, store: ObjectStore, state: StateStore, bus: EventBus, prefix: str, endpoint: str,
                 topic: str, retention_s: int, poll_s: float, class_names: Callable[[], tuple[str, ...] | None],
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.state, self.bus = store, state, bus
        self.prefix, self.endpoint, self.topic = prefix.rstrip("/"), endpoint, topic
        self.retention_s, self.poll_s, self.class_names, self.clock = retention_s, poll_s, class_names, clock
        self._polled = float("-inf")
        self.taken = 0  # files this replica published (for tests and logs)

    def _done_key(self, key: str) -> str:
        return f"signwatch:gt-file:{self.endpoint}:{hashlib.sha256(key.encode()).hexdigest()[:32]}"

    def _day_folders(self) -> list[str]:
        now = self.clock()
        days = {datetime.fromtimestamp(now - d * DAY_S, timezone.utc) for d in range(self.retention_s // DAY_S + 2)}
        return [f"{self.prefix}/{self.endpoint}/{d:%Y/%m/%d}/" for d in sorted(days)]

    def poll(self) -> None:
        """Take every new file (at most once every ``poll_s``); a failure is logged and the
        file left for the next poll."""
        if time.monotonic() - self._polled < self.poll_s:
            return
        self._polled = time.monotonic()
        names = self.class_names()
        if names is None:
            return
        try:
            for folder in self._day_folders():
                for key in sorted(self.store.list(folder)):
                    if key.endswith(".jsonl") and self.state.get_value(self._done_key(key)) is None:
                        self._take(key, names)
        except Exception as exc:  # noqa: BLE001 - the store, Redis or Kafka away: the next poll tries again
            log.warning("label files: %s: %s (next poll in %.0f s)", type(exc).__name__, exc, self.poll_s)

    def _take(self, key: str, names: tuple[str, ...]) -> None:
        done = self._done_key(key)
        if not self.state.set_once(done + ":lease", LEASE_S):
            return  # another replica is taking it
        data = self.store.get(key)
        counts = MergeCounts()
        if len(data) > MAX_FILE_BYTES:
            log.error("label file %s: %d bytes over %d: skipped", key, len(data), MAX_FILE_BYTES)
            self._mark(done, {"skipped": "too_large", "bytes": len(data)})
            return
        items = []
        for n, line in enumerate(data.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except ValueError:
                counts.bad["not_json"] += 1
                counts.note(f"{key}:{n}", "not_json")
        messages = read_items(items, self.endpoint, names, counts)
        delivered, error = publish_all(self.bus, self.topic, messages)
        if error is not None:
            self.state.delete(done + ":lease")  # published again whole at the next poll
            raise RuntimeError(f"{key}: {delivered} of {len(messages)} labels published: {error}")
        self._mark(done, {"published": delivered, "problems": counts.as_dict()})
        self.taken += 1
        log.info("label file %s: %d labels to %s (%d refused)", key, delivered, self.topic,
                 sum(counts.bad.values()) + counts.unknown_class)

    def _mark(self, done: str, summary: dict) -> None:
        self.state.set_value(done, json.dumps(summary), self.retention_s + 2 * DAY_S)

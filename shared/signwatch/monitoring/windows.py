"""The two windows, kept in the state store and shared by every replica.

- Time window (default 5 minutes): one counter hash per ``bucket_s`` (default 10 s) of event
  time, ``signwatch:counts:{endpoint}:{bucket}``, holding running sums: the total, one counter
  per class, per confidence bin and per margin bin, the low-confidence count and the sum of
  confidences. Reading the window is ``window_s / bucket_s`` hashes, whatever the traffic.
- Count window (default the last 200 predictions): a capped list of compact entries
  (``class,confidence bin,margin bin,low``), newest first.

One event is one atomic ``apply_once`` keyed by its event id (a replay, or another replica
seeing it again, counts nothing): a handful of increments and two capped pushes. Samples of
recent inputs per class (and of low-confidence ones) are kept beside, by reference when the
event used a claim check, inline otherwise; the monitor moves inline ones to the store only
when a violation needs them.

The windows belong to the endpoint, not to one model: ``n_classes`` is the served model's class
count, which the monitor changes when a new model is served. Counts of class ids the new model
does not have (left by the previous model) are then kept out of the class counts and the total
(``other_classes``; the time window's confidence bins, not kept per class, still hold them) until
they leave the window; the monitor never records such an id for the current model (it counts
that event as unreadable instead).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from signwatch.events import InferenceEvent
from signwatch.monitoring.checks import WindowCounts
from signwatch.monitoring.features import N_BINS, Features
from signwatch.ports.state import Increment, Push, StateStore

CONF_SCALE = 1_000_000  # confidences are summed as integers (Redis HINCRBY)


@dataclass
class Windows:
    state: StateStore
    endpoint: str
    window_s: int = 300
    bucket_s: int = 10
    count_n: int = 200
    samples_per_class: int = 8
    n_classes: int = field(kw_only=True)  # the served model's, never a default
    # the store's failovers the windows were rebuilt after (lost), and the count lost last read
    _failovers_rebuilt: int = field(default=0, init=False, repr=False)
    _failovers_now: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._failovers_rebuilt = self._failovers_now = self.state.failovers()  # none before these windows

    @property
    def ttl_s(self) -> int:
        return self.window_s + 2 * self.bucket_s

    def bucket_key(self, bucket: int) -> str:
        return f"signwatch:counts:{self.endpoint}:{bucket}"

    @property
    def recent_key(self) -> str:
        return f"signwatch:recent:{self.endpoint}"

    def samples_key(self, class_id: int | None) -> str:
        return f"signwatch:samples:{self.endpoint}:{'low' if class_id is None else class_id}"

    def record(self, event: InferenceEvent, f: Features) -> bool:
        """Count one event; False when this event id was counted before."""
        return self.state.apply_once(*self._changes(event, f))

    def record_many(self, items: list[tuple[InferenceEvent, Features]]) -> list[bool]:
        """Count several events in one round trip (each still exactly once)."""
        return self.state.apply_many([self._changes(e, f) for e, f in items])

    def _changes(self, event: InferenceEvent, f: Features):
        ts = event.time.timestamp()
        key, ttl = self.bucket_key(int(ts) // self.bucket_s), self.ttl_s
        incs = [Increment(key, "total", 1, ttl), Increment(key, f"class:{f.class_id}", 1, ttl),
                Increment(key, f"conf:{f.confidence_bin}", 1, ttl),
                Increment(key, f"margin:{f.margin_bin}", 1, ttl),
                Increment(key, "conf_sum", int(round(f.confidence * CONF_SCALE)), ttl)]
        entry = f"{f.class_id},{f.confidence_bin},{f.margin_bin},{int(f.low_confidence)}"
        sample = json.dumps({"event_id": event.event_id, "input": event.input.model_dump(),
                             "predicted_class": f.class_id, "probability": f.confidence,
                             "time": ts}, separators=(",", ":"))
        pushes = [Push(self.recent_key, entry, self.count_n, max(ttl, 86_400)),
                  Push(self.samples_key(f.class_id), sample, self.samples_per_class, ttl)]
        if f.low_confidence:
            incs.append(Increment(key, "low_confidence", 1, ttl))
            pushes.append(Push(self.samples_key(None), sample, self.samples_per_class, ttl))
        return f"signwatch:seen:{self.endpoint}:{event.event_id}", ttl, incs, pushes

    def record_unreadable(self, ts: float, token: str) -> None:
        key = self.bucket_key(int(ts) // self.bucket_s)
        self.state.apply_once(f"signwatch:seen:{self.endpoint}:{token}", self.ttl_s,
                              [Increment(key, "unreadable", 1, self.ttl_s)], [])

    def time_window(self, now_ts: float) -> WindowCounts:
        last = int(now_ts) // self.bucket_s
        first = (int(now_ts) - self.window_s) // self.bucket_s + 1
        hashes = self.state.get_counts([self.bucket_key(b) for b in range(first, last + 1)])
        classes, conf, margin = np.zeros(self.n_classes), np.zeros(N_BINS), np.zeros(N_BINS)
        total = low = unreadable = conf_sum = other = 0
        for h in hashes:
            for name, v in h.items():
                kind, _, idx = name.partition(":")
                if kind == "total":
                    total += v
                elif kind == "class":
                    if 0 <= int(idx) < self.n_classes:
                        classes[int(idx)] += v
                    else:
                        other += v
                elif kind == "conf":
                    conf[int(idx)] += v
                elif kind == "margin":
                    margin[int(idx)] += v
                elif kind == "low_confidence":
                    low += v
                elif kind == "unreadable":
                    unreadable += v
                elif kind == "conf_sum":
                    conf_sum += v
        return WindowCounts("time", total - other, classes, conf, margin, low, conf_sum / CONF_SCALE,
                            unreadable=unreadable, seconds=self.window_s, other_classes=other)

    def count_window(self) -> WindowCounts:
        entries = self.state.get_list(self.recent_key)[: self.count_n]
        classes, conf, margin = np.zeros(self.n_classes), np.zeros(N_BINS), np.zeros(N_BINS)
        low = other = 0
        for e, n in Counter(entries).items():  # few distinct entries: parse each once
            c, cb, mb, lo = (int(x) for x in e.split(",")[:4])
            if not 0 <= c < self.n_classes:
                other += n
                continue
            classes[c] += n
            conf[cb] += n
            margin[mb] += n
            low += lo * n
        return WindowCounts("count", len(entries) - other, classes, conf, margin, low, 0.0, size=self.count_n,
                            other_classes=other)

    def samples(self, class_id: int | None) -> list[dict]:
        return [json.loads(s) for s in self.state.get_list(self.samples_key(class_id))]

    def lost(self) -> bool:
        """True when the state store lost the windows (a restart without persistence) or may have
        lost their last counts: it failed over to a replica, which lacks what the old master had
        not yet replicated. A recount is exact either way: an event whose token survived is not
        counted again."""
        alive = self.state.get_value(f"signwatch:alive:{self.endpoint}") is not None
        self._failovers_now = self.state.failovers()  # after the read: it may have found the new master
        return not alive or self._failovers_now != self._failovers_rebuilt

    def mark_alive(self) -> None:
        """The windows are whole again (rebuilt, or new): up to the failovers seen by ``lost``."""
        self.state.set_value(f"signwatch:alive:{self.endpoint}", "1", 30 * 86_400)
        self._failovers_rebuilt = self._failovers_now

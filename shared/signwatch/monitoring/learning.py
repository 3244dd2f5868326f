"""A baseline learned from an endpoint's first traffic, when nobody uploaded one.

Until a baseline made for the served model is in the store, the monitor counts what a baseline
needs (``Learning.add``: the class counts, the confidence and margin bins of ``features``, the
low-confidence count and running sums for exact means) into one counter hash in the state store
that every replica shares, beside the first event time. The hash holds one field per class and
per bin, whatever the traffic (bounded), and expires unless fed. Each batch of predictions the
windows counted for the first time is one ``apply_once``: a replay counts nothing twice, because
only what the windows took as new is added.

Once the predictions span ``seconds`` of event time and number ``min_count`` (both), one replica
*claims* the takeover (``StateStore.claim``, atomic: the claim, the event and the baseline's two
files go into the baseline outbox and the learning counts are deleted in one step), writes
``statistics.json`` and ``constraints.json`` where ``signwatch baseline suggest --capture
--upload`` would (``baseline.suggest_from_counts``: SageMaker's shapes, the checks read only the
counts), takes the baseline over and publishes a ``BaselineEvent``. The other replicas take the
same files over at their next baseline reload. A claimer that dies before writing or publishing
leaves the entry in the outbox: any replica's sweep, once the claimer's lease ran out, writes the
files (when the store still has no baseline) and publishes the event (``LearnedOutbox``), as the
violations outbox does (``monitoring.outbox``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from pydantic import ValidationError

from signwatch.events import BaselineEvent, InferenceEvent
from signwatch.monitoring import baseline as bl
from signwatch.monitoring.features import N_BINS, Features
from signwatch.ports.state import Increment, OutboxEntry, StateStore

log = logging.getLogger(__name__)
SCALE = 1_000_000               # values summed as integers (Redis HINCRBY), as windows.CONF_SCALE
KEEP_S = 7 * 86_400             # learning counts outlive this much silence (beyond the learning time)
TOKEN_TTL_S = 60                # a batch's apply_once token (each batch is added once: it only guards a retry)
OUTBOX_TTL_S = 7 * 86_400
LEARNED_SOURCE = "learned from"  # statistics.json's signwatch.source of a learned baseline starts so


def learned(statistics: dict) -> bool:
    """True for the statistics of a baseline the monitor learned (rather than one uploaded)."""
    return str((statistics.get("signwatch") or {}).get("source", "")).startswith(LEARNED_SOURCE)


@dataclass(frozen=True)
class Progress:
    """How far learning is: predictions counted, and the event time of the first."""

    counts: dict[str, int]
    first_ts: float | None

    @property
    def total(self) -> int:
        return int(self.counts.get("total", 0))

    def seconds(self, now_ts: float) -> float:
        return max(0.0, now_ts - self.first_ts) if self.first_ts is not None and self.total else 0.0


class Learning:
    """The learning counts of one endpoint and one set of classes (a new model starts afresh)."""

    def __init__(self, state: StateStore, endpoint: str, class_names: tuple[str, ...], seconds: float,
                 min_count: int) -> None:
        self.state, self.endpoint, self.class_names = state, endpoint, tuple(class_names)
        self.seconds, self.min_count = float(seconds), int(min_count)
        digest = hashlib.sha256(json.dumps(self.class_names).encode()).hexdigest()[:12]
        self.key = f"signwatch:learning:{endpoint}:{digest}"
        self._first_set = False

    @property
    def enabled(self) -> bool:
        return self.seconds > 0

    @property
    def first_key(self) -> str:
        return f"{self.key}:first"

    @property
    def ttl_s(self) -> int:
        return int(self.seconds) + KEEP_S

    def add(self, items: list[tuple[InferenceEvent, Features]]) -> None:
        """Count predictions the windows counted for the first time (one atomic step a batch)."""
        if not items:
            return
        fields: dict[str, int] = {"total": len(items)}
        for _, f in items:
            for name, amount in ((f"class:{f.class_id}", 1), (f"conf:{f.confidence_bin}", 1),
                                 (f"margin:{f.margin_bin}", 1), ("low_confidence", int(f.low_confidence)),
                                 ("conf_sum", round(f.confidence * SCALE)),
                                 ("conf_sq", round(f.confidence ** 2 * SCALE)),
                                 ("margin_sum", round(f.margin * SCALE)), ("margin_sq", round(f.margin ** 2 * SCALE))):
                fields[name] = fields.get(name, 0) + amount
        ttl = self.ttl_s
        self.state.apply_once(f"{self.key}:batch:{items[0][0].event_id}", TOKEN_TTL_S,
                              [Increment(self.key, k, v, ttl) for k, v in fields.items() if v], [])
        if not self._first_set:  # the first replica to count sets it; the others find it there
            first = min(e.time.timestamp() for e, _ in items)
            self.state.set_value(self.first_key, repr(first), ttl, if_absent=True)
            self._first_set = True

    def progress(self) -> Progress:
        [counts] = self.state.get_counts([self.key])
        raw = self.state.get_value(self.first_key)
        if raw is None:
            self._first_set = False  # expired or taken over by another replica: set again with the next count
        return Progress(counts, float(raw) if raw is not None else None)

    def due(self, progress: Progress, now_ts: float) -> bool:
        return (self.enabled and progress.total >= self.min_count and progress.first_ts is not None
                and progress.seconds(now_ts) >= self.seconds)

    def status(self, progress: Progress, now_ts: float) -> str:
        return (f"learning: {progress.total} of {self.min_count} predictions, {progress.seconds(now_ts):.0f} s of "
                f"{self.seconds:.0f} s")

    def files(self, progress: Progress, now_ts: float, model_version: str | None) -> tuple[dict, dict]:
        """``statistics.json`` and ``constraints.json`` of what was counted."""
        c = progress.counts
        classes = np.array([c.get(f"class:{i}", 0) for i in range(len(self.class_names))])
        conf = np.array([c.get(f"conf:{b}", 0) for b in range(N_BINS)])
        margin = np.array([c.get(f"margin:{b}", 0) for b in range(N_BINS)])
        source = (f"{LEARNED_SOURCE} the first {progress.total} predictions of endpoint {self.endpoint}, "
                  f"{_iso(progress.first_ts)} to {_iso(now_ts)}, model {model_version}")
        return bl.suggest_from_counts(
            classes, conf, margin, c.get("low_confidence", 0), source=source, model_version=model_version,
            min_items=min(100, self.min_count),
            confidence_sums=(c.get("conf_sum", 0) / SCALE, c.get("conf_sq", 0) / SCALE),
            margin_sums=(c.get("margin_sum", 0) / SCALE, c.get("margin_sq", 0) / SCALE))

    def claim(self, outbox: "LearnedOutbox", event: BaselineEvent, files: tuple[dict, dict],
              first_ts: float) -> bool:
        """Take this learning run over (True for exactly one replica): the event and the files
        go into the outbox, and the counts are deleted, in one atomic step."""
        taken = f"{self.key}:taken:{first_ts!r}"
        return self.state.claim(taken, event.baseline_id, 86_400, outbox.entry(event, files),
                                delete=(self.key, self.first_key))


@dataclass
class LearnedOutbox:
    """The takeover events claimed and not yet acknowledged by the bus, with their files."""

    state: StateStore
    endpoint: str
    grace_s: int = 15

    @property
    def key(self) -> str:
        return f"signwatch:baseline-outbox:{self.endpoint}"

    def lease_key(self, event_id: str) -> str:
        return f"{self.key}:lease:{event_id}"

    def entry(self, event: BaselineEvent, files: tuple[dict, dict]) -> OutboxEntry:
        value = json.dumps({"event": json.loads(event.to_bytes()), "statistics": files[0], "constraints": files[1]})
        return OutboxEntry(self.key, event.event_id, value, OUTBOX_TTL_S, self.lease_key(event.event_id), self.grace_s)

    def recover(self, store, prefix: str) -> list[BaselineEvent]:
        """The events whose claimer's lease ran out (it died, or its publish failed), each with
        its lease now taken by this replica and its files written when the store has no
        baseline (or only the shipped one): what a sweep publishes."""
        out = []
        for eid, raw in self.state.outbox(self.key).items():
            try:
                entry = json.loads(raw)
                event = BaselineEvent.model_validate(entry["event"])
                files = (entry["statistics"], entry["constraints"])
            except (ValueError, KeyError, TypeError, ValidationError) as exc:
                log.error("baseline outbox entry %s is not a baseline event (%s): dropped", eid, exc)
                self.state.outbox_done(self.key, eid)
                continue
            if not self.state.set_once(self.lease_key(eid), self.grace_s):
                continue  # its claimer may still finish, or another sweeper does
            write_if_free(store, prefix, files)
            out.append(event)
        return sorted(out, key=lambda e: e.time)

    def done(self, event: BaselineEvent) -> None:
        self.state.outbox_done(self.key, event.event_id)
        self.state.delete(self.lease_key(event.event_id))


def write_if_free(store, prefix: str, files: tuple[dict, dict]) -> bool:
    """Write a learned baseline unless someone uploaded one meanwhile (the shipped baseline,
    written to the store by earlier versions, does not count); True when written or there."""
    there = bl.read_store(store, prefix)
    if there is not None and bl.baseline_id(*there) == bl.baseline_id(*files):
        return True
    if there is not None and not is_shipped(there):
        log.warning("a baseline was uploaded to %s while one was learned: the uploaded one stays", prefix)
        return False
    bl.write_store(store, prefix, *files)
    return True


def is_shipped(files: tuple[dict, dict]) -> bool:
    """The shipped baseline's files (an earlier version wrote them to the store at first start)."""
    return bl.baseline_id(*files) == _shipped_id()


_SHIPPED_ID: list[str] = []


def _shipped_id() -> str:
    if not _SHIPPED_ID:
        _SHIPPED_ID.append(bl.baseline_id(*bl.shipped_files()))
    return _SHIPPED_ID[0]


def _iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts or 0.0, timezone.utc).isoformat()

"""The streaming join: ground-truth labels meet the predictions they name, in any order.

Every prediction the monitor counts is recorded as a *pending* entry (``record_predictions``);
every label that arrives (the topic, ``POST /ground-truth``, label files in the store: all three
go through the topic) either completes its prediction's entry or waits for it (``add_labels``).
Both sides live in the state store, shared by the replicas, in hashes per day
(``signwatch:gt:{endpoint}:day:{yyyymmdd}:{shard}``, the shard the first
``ground_truth_shard_chars`` hex digits of the id's digest) that expire ``retention`` after their
last write:
a prediction waits for its label, and a label for its prediction, for the retention window
(``SIGNWATCH_GROUND_TRUTH_RETENTION_SECONDS``, 7 days) and at most a day more.

**What an entry holds** (the memory bound): the field is a 64-bit digest of the id (16 hex
digits), the value ``P{class},{bin}`` (the predicted class and its top-1 confidence bin, for the
label-free estimate beside the realised accuracy) or ``L{class}``; once matched, ``M`` (a later
label for it is a duplicate). A prediction the client named (``inferenceId``) has a second field,
``A{event id digest}``, so that a label may name either id, as SageMaker's merge allows. The
shards keep each hash in Redis's compact encoding: measured on Redis 7 (``benchmarks/quality.py``,
docs/monitoring.md "Model quality from labels"), ~30 bytes a pending prediction against 83 in one
large hash a day, against ~4,800 for the event itself.

**Exactly once**: each item is one atomic step in the store (``StateStore.join``): the pair is
counted in the same step that marks its entry done, so a label replayed after a crash (its
offset not committed), or given twice, or through two ways, is a duplicate, never a second count.
The first label wins, as in the batch merge (``groundtruth``). Digests collide with probability
~n²/2⁶⁵: at 100 predictions a second kept for 8 days, about 1 in 5,000 a week.

**Model quality over time**: each pair is counted in the time bucket in which it was matched
(``signwatch:gt:{endpoint}:pairs:{bucket}``: ``"{true},{predicted}"``, and per confidence bin
``n{bin}`` matched, ``c{bin}`` right); the monitor reads the buckets of its quality window and the
capped list of the newest pairs (``signwatch:gt:{endpoint}:recent``: the last N labelled).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from signwatch.events import InferenceEvent
from signwatch.monitoring.features import N_BINS, bin_of
from signwatch.ports.state import JoinItem, JoinKeys, StateStore

DAY_S = 86_400


def id_digest(label_id: str) -> str:
    """The 64-bit digest an id is kept under (16 hex digits: a few bytes, whatever the id)."""
    return hashlib.blake2b(label_id.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class LabelledWindow:
    """The pairs matched in a window: the confusion counts (rows true, columns predicted) and, per
    confidence bin, how many were matched and how many of those were right."""

    confusion: np.ndarray
    matched_per_bin: np.ndarray
    right_per_bin: np.ndarray

    @property
    def total(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float | None:
        return float(np.trace(self.confusion) / self.total) if self.total else None

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(true, predicted) arrays with one entry per pair, for the metrics of ``quality``."""
        t, p = np.nonzero(self.confusion)
        counts = self.confusion[t, p]
        return np.repeat(t, counts), np.repeat(p, counts)


@dataclass(frozen=True)
class RecentPair:
    true: int
    predicted: int
    bin: int
    note: str  # the event id when the prediction completed the pair, else the label's id


class LabelJoin:
    def __init__(self, state: StateStore, endpoint: str, num_classes: int, retention_s: int,
                 window_s: int, bucket_s: int, recent_max: int, shard_chars: int = 3) -> None:
        self.state, self.endpoint, self.num_classes = state, endpoint, num_classes
        self.retention_s, self.window_s, self.bucket_s, self.recent_max = retention_s, window_s, bucket_s, recent_max
        self.shard_chars = shard_chars

    # -- keys ---------------------------------------------------------------------------------
    def _day(self, t: float) -> str:
        return datetime.fromtimestamp(t, timezone.utc).strftime("%Y%m%d")

    def keys(self, now: float) -> JoinKeys:
        days = [self._day(now - d * DAY_S) for d in range(self.retention_s // DAY_S + 2)]
        prefix = f"signwatch:gt:{self.endpoint}"
        return JoinKeys(days=tuple(f"{prefix}:day:{d}" for d in days),
                        day_stats=tuple(f"{prefix}:stats:{d}" for d in days),
                        day_ttl_s=self.retention_s + DAY_S,
                        pairs=self._pairs_key(int(now // self.bucket_s)),
                        pairs_ttl_s=self.window_s + 2 * self.bucket_s,
                        recent=f"{prefix}:recent", recent_max=self.recent_max, shard_chars=self.shard_chars)

    def _pairs_key(self, bucket: int) -> str:
        return f"signwatch:gt:{self.endpoint}:pairs:{bucket}"

    # -- the two sides ------------------------------------------------------------------------
    def record_predictions(self, events: Iterable[InferenceEvent], now: float) -> list[str]:
        items = []
        for e in events:
            if not e.output.predictions:
                continue
            top = e.output.predictions[0]
            items.append(JoinItem("prediction", id_digest(e.event_id), f"{top.class_id},{bin_of(top.probability)}",
                                  alias=id_digest(e.inference_id) if e.inference_id else None, note=e.event_id))
        return self.state.join(self.keys(now), items) if items else []

    def add_labels(self, labels: Sequence[tuple[str, int]], now: float) -> list[str]:
        """``(id, class)`` pairs, the id as the label names it (event id or inference id)."""
        items = [JoinItem("label", id_digest(i), str(c), note=i) for i, c in labels]
        return self.state.join(self.keys(now), items) if items else []

    # -- reading ------------------------------------------------------------------------------
    def window(self, now: float) -> LabelledWindow:
        last = int(now // self.bucket_s)
        first = int((now - self.window_s) // self.bucket_s) + 1
        n = self.num_classes
        confusion = np.zeros((n, n), dtype=np.int64)
        matched, right = np.zeros(N_BINS, dtype=np.int64), np.zeros(N_BINS, dtype=np.int64)
        for counts in self.state.get_counts([self._pairs_key(b) for b in range(first, last + 1)]):
            for field, v in counts.items():
                if field[0] == "n":
                    matched[int(field[1:])] += v
                elif field[0] == "c":
                    right[int(field[1:])] += v
                else:
                    t, p = (int(x) for x in field.split(","))
                    if t < n and p < n:  # a model with fewer classes took over: its pairs only
                        confusion[t, p] += v
        return LabelledWindow(confusion, matched, right)

    def recent(self) -> list[RecentPair]:
        out = []
        for entry in self.state.get_list(self.keys(0).recent):
            t, p, b, note = entry.split(",", 3)
            out.append(RecentPair(int(t), int(p), int(b), note))
        return out

    def stats(self, now: float) -> dict[str, int]:
        """Over the retention window: ``matched``, ``duplicates``, ``predictions_pending`` (no label
        yet) and ``labels_waiting`` (no prediction yet: early, or for an id never served)."""
        total = {"matched": 0, "duplicates": 0, "predictions_pending": 0, "labels_waiting": 0}
        for counts in self.state.get_counts(list(self.keys(now).day_stats)):
            for k, v in counts.items():
                total[k] = total.get(k, 0) + v
        return total

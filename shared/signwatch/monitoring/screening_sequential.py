"""The ``adversarial_share`` check's sequential view: evidence of an attack, one screened request
at a time, against the endpoint's own clean history.

The window view (``checks.adversarial_share``) tests the flagged share of a window against the
calibration's stated false positive rate (1%): at 10% attacked traffic it needs ~190 requests,
and no test of the flag alone can do much better, because snow, night and fog flag up to ~6% of
clean images (benchmarks/screening_share.py): a flag rate that weather may reach cannot be
evidence. What weather does not reach is the *height* of the score: measured on the shipped
model (400 renders a condition), the highest clean, snow, fog and night scores are 1.4x, 1.7x,
1.5x and 2.9x the threshold, while PGD's successful images score 4-7x. So each screened event is
judged by which upper tail of ``score / threshold`` it falls in (``TAILS``: flagged, 2x, 4x),
against an upper bound ``u_j`` of that tail's share learned from the endpoint's history:

    u_j = max(floor_j, upper bound of the tail's share over the last ``history_s``)

``floor_j`` (``TAIL_FLOORS``) is the share weather may give a tail without reading as an attack;
the history bound (3 standard errors, ``sequential.upper_bounds``) is what this endpoint's
traffic gave, so a tail clean traffic never reaches costs an attacker most. Each (tail, eps)
member is a set inflation ``e = 1 - eps + eps 1{r >= tau_j} / u_j`` in a Shiryaev-Roberts
recursion with at most one start a second, alarming at ``log(86,400 / (share * alpha_per_day))``
as the sequential checks do; the proof (docs/monitoring.md, "The share check's sequential view")
needs only that ``u_j`` is fixed before the event it judges arrives, which the history is.

The history counts only events older than ``history_lag_s``: an attack's first minutes never
raise the bound that judges them. Before ``min_history`` events the view judges nothing (the
window view alone). State is per process: a restarted monitor relearns its history.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from signwatch.monitoring.checks import ADVERSARIAL_FEATURE, CheckResult
from signwatch.monitoring.sequential import SECONDS_PER_DAY, START_EVERY_S, upper_bounds

TAILS = (1.0, 2.0, 3.0)             # score / threshold: flagged, twice, three times the threshold
# Weather's allowance per tail (measured, 400 renders a condition, shipped model): snow flags
# 6.3%, night 5.3%, fog 1.8%; night's 99th percentile is 2.0x the threshold, its highest 2.9x.
TAIL_FLOORS = (0.08, 0.02, 0.0)
EPSILONS = (0.03, 0.07, 0.15, 0.3)  # the attacked share a member is tuned for
TAIL_WEIGHTS = (0.1, 0.1, 0.8)       # the high tail is where attacks and weather part
HISTORY_S = 3 * 3600                 # the clean history the bounds are learned from
HISTORY_LAG_S = 600                  # ... leaving out the last ten minutes (an attack's start)
HISTORY_BUCKET_S = 60
MIN_HISTORY = 600                    # events the history needs before the view judges
TOLERANCE_Z = 3.0
SEQUENTIAL_PART = 0.8                # the check's budget: 0.8 this view, 0.2 the window view


def tail_hits(score: float, threshold: float) -> np.ndarray:
    """Which tails of ``TAILS`` the event's score reaches (booleans)."""
    r = score / threshold if threshold > 0 else math.inf
    return np.array([r >= t for t in TAILS])


def log_threshold(alpha_per_day: float, share: float, start_every_s: float = START_EVERY_S) -> float:
    return math.log((SECONDS_PER_DAY / start_every_s) / (share * alpha_per_day))


@dataclass(frozen=True)
class TailBounds:
    events: int
    hits: tuple[int, ...]
    bounds: tuple[float, ...]  # u_j


class ScreeningDetector:
    """The sequential view of one endpoint's screened events (thread-safe: the screening loop
    updates, the monitor's evaluation reads)."""

    def __init__(self, alpha_per_day: float, share: float, history_s: float = HISTORY_S,
                 history_lag_s: float = HISTORY_LAG_S, min_history: int = MIN_HISTORY,
                 floors: tuple[float, ...] = TAIL_FLOORS, start_every_s: float = START_EVERY_S) -> None:
        self.log_threshold = log_threshold(alpha_per_day, share, start_every_s)
        self.alpha_per_day, self.share = alpha_per_day, share
        self.history_s, self.history_lag_s, self.min_history = history_s, history_lag_s, min_history
        self.floors = np.asarray(floors, dtype=float)
        self.start_every_s = start_every_s
        eps = np.asarray(EPSILONS)
        self.eps = np.tile(eps, len(TAILS))                  # member m: tail m // len(EPS), eps
        self.tail_of = np.repeat(np.arange(len(TAILS)), len(eps))
        self.log_w = np.log(np.repeat(np.asarray(TAIL_WEIGHTS) / sum(TAIL_WEIGHTS), len(eps)) / len(eps))
        self.log_r = np.full(len(self.eps), -math.inf)
        self.pending: deque = deque()            # (bucket, hits) not yet old enough for the history
        self.buckets: dict[int, np.ndarray] = {}  # bucket -> [events, hits per tail]
        self.total = np.zeros(1 + len(TAILS))     # their sum
        self.last_start = -math.inf
        self.alarmed, self.peak, self.n = False, -math.inf, 0
        self.seen = 0                             # events counted, judged or not
        self.lock = threading.Lock()

    # -- the history ---------------------------------------------------------------------------
    def _history(self, ts: float) -> np.ndarray:
        """[events, hits per tail] older than the lag and within ``history_s`` of ``ts``."""
        while self.pending and self.pending[0][0] <= ts - self.history_lag_s:
            t, hits = self.pending.popleft()
            b = int(t // HISTORY_BUCKET_S)
            row = self.buckets.setdefault(b, np.zeros(1 + len(TAILS)))
            row[0] += 1
            row[1:] += hits
            self.total[0] += 1
            self.total[1:] += hits
        oldest = int((ts - self.history_lag_s - self.history_s) // HISTORY_BUCKET_S)
        if self.buckets and min(self.buckets) < oldest:
            for b in [b for b in self.buckets if b < oldest]:
                self.total -= self.buckets.pop(b)
        return self.total.copy()

    def bounds(self, ts: float) -> TailBounds | None:
        """``u_j`` for an event at ``ts`` (None: too little history to judge)."""
        total = self._history(ts)
        m = int(total[0])
        if m < self.min_history:
            return TailBounds(m, tuple(int(h) for h in total[1:]), ()) if m else None
        learned = upper_bounds(total[1:] / m, m, TOLERANCE_Z)
        u = np.maximum(self.floors, learned)
        return TailBounds(m, tuple(int(h) for h in total[1:]), tuple(float(x) for x in u))

    # -- the evidence --------------------------------------------------------------------------
    def update(self, score: float, threshold: float, ts: float) -> float | None:
        """Count one screened event (``ts``: its inference time); ``log S`` (None: not judged)."""
        with self.lock:
            hits = tail_hits(score, threshold)
            self.seen += 1
            b = self.bounds(ts)
            self.pending.append((ts, hits.astype(float)))
            if b is None or not b.bounds:
                return None
            u = np.asarray(b.bounds)[self.tail_of]
            log_e = np.log(1 - self.eps + self.eps * hits[self.tail_of] / u)
            start = ts >= self.last_start + self.start_every_s
            if start:
                self.last_start = ts
                self.log_r = log_e + np.logaddexp(self.log_r, 0.0)
            else:
                self.log_r = log_e + self.log_r
            self.n += 1
            s = self.statistic
            self.peak = max(self.peak, s)
            if s >= self.log_threshold:
                self.alarmed = True
                self.log_r[:] = -math.inf  # restart: a persisting attack alarms again within requests
                self.n = 0
            return s

    @property
    def statistic(self) -> float:
        a = self.log_r + self.log_w
        top = float(a.max())
        return -math.inf if top == -math.inf else top + math.log(float(np.exp(a - top).sum()))

    def result(self, now_ts: float) -> CheckResult:
        """The view's ``adversarial_share`` result (on the count window, as the sequential
        checks' are): failing when it alarmed since the last call."""
        with self.lock:
            alarmed, peak = self.alarmed, self.peak
            self.alarmed, self.peak = False, self.statistic
            b = self.bounds(now_ts)
        judged = b is not None and bool(b.bounds)
        peak_out = None if peak == -math.inf else round(peak, 4)
        tails = ", ".join(f">= {t:g}x: {u:.2%}" for t, u in zip(TAILS, b.bounds)) if judged else ""
        return CheckResult(
            "adversarial_share", ADVERSARIAL_FEATURE, "baseline_drift_check", "count", b.events if b else 0,
            alarmed, observed=peak_out, statistic=peak_out, threshold=round(self.log_threshold, 4),
            count=b.hits[0] if b else 0, judged=judged,
            description=(f"Screened requests score higher than this endpoint's history allows (tail shares "
                         f"{tails} of the threshold): sequential evidence log S = {peak_out} nats reached "
                         f"{self.log_threshold:.2f} (at most {self.alpha_per_day * self.share:.2g} false "
                         f"alarms a day)") if alarmed else "")

    def summary(self, now_ts: float) -> dict:
        """For the snapshot: the evidence, its threshold and the tail bounds it judges against."""
        with self.lock:
            b = self.bounds(now_ts)
            s = self.statistic
        return {"log_s": None if s == -math.inf else round(s, 4), "threshold": round(self.log_threshold, 4),
                "history_events": b.events if b else 0, "tails": list(TAILS),
                "tail_hits": list(b.hits) if b else [], "tail_bounds": [round(u, 6) for u in b.bounds] if b else []}

"""The screening windows: how many inference events were screened and flagged, in the state store.

The explainer publishes a ``ScreeningEvent`` per screened inference event (``signwatch.screening``);
the monitor's screening loop counts them here, beside the prediction windows and with the same
rules (``windows.py``): a time window of ``bucket_s`` hashes by the *inference* event's time
(``screened``, ``flagged``, and ``expected_ppm``: the sum of each event's ``fpr``, the flagged
count clean traffic would give, in millionths), and a count window of the last ``count_n``
screened (``flagged,fpr ppm`` entries, newest first). One event is one atomic ``apply_once``
keyed by its event id: a replay, or a second screening of the same event, counts nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from signwatch.events import ScreeningEvent
from signwatch.ports.state import Increment, Push, StateStore

PPM = 1_000_000


@dataclass(frozen=True)
class ScreeningCounts:
    screened: int = 0
    flagged: int = 0
    expected: float = 0.0  # flagged events expected of clean traffic: the sum of the screened events' fpr


@dataclass
class ScreeningWindows:
    state: StateStore
    endpoint: str
    window_s: int = 300
    bucket_s: int = 10
    count_n: int = 200

    @property
    def ttl_s(self) -> int:
        return self.window_s + 2 * self.bucket_s

    def bucket_key(self, bucket: int) -> str:
        return f"signwatch:screening:{self.endpoint}:{bucket}"

    @property
    def recent_key(self) -> str:
        return f"signwatch:screening-recent:{self.endpoint}"

    def record_many(self, events: list[ScreeningEvent]) -> list[bool]:
        """Count each event once (False: its event id was counted before), in one round trip."""
        return self.state.apply_many([self._changes(e) for e in events]) if events else []

    def _changes(self, event: ScreeningEvent):
        key, ttl = self.bucket_key(int(event.inference_time.timestamp()) // self.bucket_s), self.ttl_s
        ppm = int(round(event.fpr * PPM))
        incs = [Increment(key, "screened", 1, ttl), Increment(key, "expected_ppm", ppm, ttl)]
        if event.flagged:
            incs.append(Increment(key, "flagged", 1, ttl))
        pushes = [Push(self.recent_key, f"{int(event.flagged)},{ppm}", self.count_n, max(ttl, 86_400))]
        return f"signwatch:screening-seen:{self.endpoint}:{event.event_id}", ttl, incs, pushes

    def time_window(self, now_ts: float) -> ScreeningCounts:
        last = int(now_ts) // self.bucket_s
        first = (int(now_ts) - self.window_s) // self.bucket_s + 1
        totals: Counter = Counter()
        for h in self.state.get_counts([self.bucket_key(b) for b in range(first, last + 1)]):
            totals.update(h)
        return ScreeningCounts(int(totals["screened"]), int(totals["flagged"]), totals["expected_ppm"] / PPM)

    def count_window(self) -> ScreeningCounts:
        screened = flagged = ppm = 0
        for entry, n in Counter(self.state.get_list(self.recent_key)[: self.count_n]).items():
            f, p = (int(x) for x in entry.split(",")[:2])
            screened, flagged, ppm = screened + n, flagged + f * n, ppm + p * n
        return ScreeningCounts(screened, flagged, ppm / PPM)


__all__ = ["ScreeningCounts", "ScreeningWindows"]

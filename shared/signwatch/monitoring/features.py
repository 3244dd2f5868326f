"""What the monitor looks at in one prediction: the class, the top-1 confidence, the margin.

Confidences and margins are counted in fixed bins, the same for the baseline, the windows and
the batch job, so that a window is a handful of integer counters (running sums) rather than a
list of values. The bins are fine where a good classifier puts its mass (near 1.0, on a log
scale of 1 - p) and coarse below: a binned two-sample KS statistic is never larger than the
exact one, so p-values computed from it are conservative.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

LOW_CONFIDENCE = 0.5

EDGES: tuple[float, ...] = tuple(
    [i / 10 for i in range(10)] + [1 - 10 ** (-k / 4) for k in range(5, 25)] + [1.0]
)
N_BINS = len(EDGES) - 1
_EDGES = np.array(EDGES)


def bin_of(value: float) -> int:
    return min(max(bisect_right(EDGES, value) - 1, 0), N_BINS - 1)


@dataclass(frozen=True)
class Features:
    class_id: int
    confidence: float
    margin: float
    low_confidence: bool

    @property
    def confidence_bin(self) -> int:
        return bin_of(self.confidence)

    @property
    def margin_bin(self) -> int:
        return bin_of(self.margin)


def bins_of(values: np.ndarray) -> np.ndarray:
    """``bin_of`` of every value at once (bisect_right is searchsorted "right", NaN last in both)."""
    return np.clip(np.searchsorted(_EDGES, values, side="right") - 1, 0, N_BINS - 1).astype(np.uint8)


def top_numbers(predictions, low_confidence: float = LOW_CONFIDENCE) -> tuple[int, float, float, bool]:
    """``features_of``'s numbers (class id, confidence, margin, low) without building ``Features``:
    the scheduled job takes them of every captured record."""
    rows = [(int(p["class_id"]), float(p["probability"])) if isinstance(p, dict)
            else (int(p.class_id), float(p.probability)) for p in predictions]
    if len(rows) == 2:  # the sort below, unrolled for the commonest answer (top-2)
        (c1, p1), (c2, p2) = rows
        if -p2 < -p1:
            c1, p1, c2, p2 = c2, p2, c1, p1
        return c1, p1, p1 - p2, p1 < low_confidence and p2 < low_confidence
    if not rows:
        raise ValueError("no predictions")
    rows.sort(key=lambda r: -r[1])
    top1 = rows[0][1]
    top2 = rows[1][1] if len(rows) > 1 else 0.0
    low = all(p < low_confidence for _, p in rows[:3])
    return rows[0][0], top1, top1 - top2, low


def features_of(predictions, low_confidence: float = LOW_CONFIDENCE) -> Features:
    """From the top-k predictions (objects or dicts with ``class_id`` and ``probability``)."""
    return Features(*top_numbers(predictions, low_confidence))

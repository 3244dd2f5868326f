"""The label-free accuracy estimate, from a window's top-1 confidence bins and the baseline.

Which estimate, in order of what the baseline holds (measured side by side in
``benchmarks/estimators.py``; docs/monitoring.md, "Which accuracy estimate ships"):

1. **Binned calibration** (CBPE-style): the baseline's ``bin_accuracy``, the share of right
   predictions in each confidence bin of labelled calibration data, weighted by the window's bin
   counts. Learned by ``baseline suggest`` only when the calibration data holds shifted labelled
   sets beside the clean reference (rendered snow, night and fog): learned on clean data alone,
   the table says "a 0.6 is right 70% of the time", which is false under shift (measured: worse
   than ATC there), so such a baseline keeps ATC.
2. **ATC** (Garg et al., ICLR 2022): the share of the window at or above the baseline's
   ``atc_bin``, when the reference had labels.
3. Otherwise none here: the caller falls back to the average confidence.

Only confidence bins are used, never the margin bins or the class counts, so that the same
estimate is computed over a window of predictions (``checks.estimated_accuracy``) and over the
labelled pairs (``model_quality.estimate_from_bins``), which keep the confidence bin alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from signwatch.monitoring.features import EDGES, N_BINS

# each bin's accuracy is pulled towards the bin's middle confidence by this many pseudo-predictions
# (per 1,000 of each calibration set): bins the calibration data hardly reaches say "calibrated"
PRIOR_WEIGHT = 2.0
SET_WEIGHT = 1000.0  # every calibration set counts as this many predictions, whatever its size
MIDDLES = (np.asarray(EDGES[:-1]) + np.asarray(EDGES[1:])) / 2


def bin_accuracy(sets: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Per confidence bin, the share of right predictions over labelled calibration ``sets``, each
    ``(confidence bins, right)``. Every set weighs the same (4,300 clean references would
    otherwise drown 1,000 snowy ones, and the low bins are where the shifted sets matter)."""
    if not sets:
        raise ValueError("binned calibration needs at least one labelled set")
    counted, right = np.zeros(N_BINS), np.zeros(N_BINS)
    for bins, correct in sets:
        bins, correct = np.asarray(bins, dtype=np.int64), np.asarray(correct, dtype=float)
        if not len(bins) or len(bins) != len(correct):
            raise ValueError("a calibration set needs as many right/wrong flags as predictions, and some")
        scale = SET_WEIGHT / len(bins)
        counted += np.bincount(bins, minlength=N_BINS) * scale
        right += np.bincount(bins, weights=correct, minlength=N_BINS) * scale
    return (right + PRIOR_WEIGHT * MIDDLES) / (counted + PRIOR_WEIGHT)


def from_bins(confidence_counts: np.ndarray, bin_table: np.ndarray | None, atc_bin: int | None) -> float | None:
    """The estimate over a window's confidence bin counts: binned calibration when ``bin_table``
    is given, else ATC when ``atc_bin`` is, else None (the caller's fallback)."""
    counts = np.asarray(confidence_counts, dtype=float)
    n = counts.sum()
    if n <= 0:
        return None
    if bin_table is not None:
        return float((counts * np.asarray(bin_table)).sum() / n)
    if atc_bin is not None:
        return float(counts[atc_bin:].sum() / n)
    return None


def average_confidence(confidence_counts: np.ndarray, confidence_sum: float = 0.0) -> float | None:
    """The fallback without labelled calibration: the mean top-1 confidence, exact from the sum
    when the window keeps one (the time window), else from the bins' middles (the count window
    and the labelled pairs keep bins only)."""
    counts = np.asarray(confidence_counts, dtype=float)
    n = counts.sum()
    if n <= 0:
        return None
    return float(confidence_sum / n) if confidence_sum > 0 else float((counts * MIDDLES).sum() / n)

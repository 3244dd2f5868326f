"""The label-free accuracy estimate (signwatch.monitoring.estimate): the binned calibration table,
how a baseline learns and stores it, and the fallbacks (ATC, the average confidence) without it."""

from __future__ import annotations

import numpy as np
import pytest

from signwatch.monitoring import baseline as bl
from signwatch.monitoring import estimate
from signwatch.monitoring.checks import WindowCounts, estimated_accuracy
from signwatch.monitoring.features import N_BINS, Features, bin_of
from signwatch.monitoring.labels import RecentPair
from signwatch.monitoring.model_quality import estimate_from_bins, from_recent

N_CLASSES = 5


def _calibrated(rng: np.random.Generator, n: int, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 confidences from Beta(a, b) over [0.2, 1) and whether each is right, drawn so that a
    confidence of p is right with probability p (a calibrated model)."""
    conf = 0.2 + 0.7999 * rng.beta(a, b, n)
    return conf, rng.random(n) < conf


def _features(conf: np.ndarray, right: np.ndarray) -> tuple[list[Features], list[int]]:
    """Predictions of class 0 (right) or 1 (wrong) with the given confidences, and their labels."""
    feats = [Features(0, float(c), float(c) - (1 - float(c)) / 2, c < 0.5) for c in conf]
    return feats, [0 if r else 1 for r in right]


def _window(conf: np.ndarray, kind: str = "time") -> WindowCounts:
    counts = np.bincount([bin_of(c) for c in conf], minlength=N_BINS).astype(float)
    classes = np.zeros(N_CLASSES)
    classes[0] = len(conf)
    return WindowCounts(kind, len(conf), classes, counts, counts.copy(), int((conf < 0.5).sum()),
                        float(conf.sum()) if kind == "time" else 0.0)


def _baseline(rng, calibration: bool = True, labels: bool = True) -> bl.Baseline:
    conf, right = _calibrated(rng, 4000, 8, 1)  # a reference that is mostly confident and right
    feats, ys = _features(conf, right)
    sets = [_features(*_calibrated(rng, 2000, a, b)) for a, b in ((1, 1), (2, 3))] if calibration else None
    stats, cons = bl.suggest(feats, N_CLASSES, labels=ys if labels else None, calibration=sets)
    return bl.load(stats, cons, n_classes=N_CLASSES)


def test_bin_table_recovers_a_known_accuracy_under_shift_when_confidence_is_calibrated():
    rng = np.random.default_rng(0)
    b = _baseline(rng)
    assert b.bin_accuracy is not None and len(b.bin_accuracy) == N_BINS
    conf, right = _calibrated(rng, 5000, 2, 2)  # far less confident than the reference
    w = _window(conf)
    assert abs(estimated_accuracy(w, b) - right.mean()) < 0.02
    # ATC learned on the confident reference alone misses the same window by far more
    atc = estimate.from_bins(w.confidence_counts, None, b.atc_bin)
    assert abs(atc - right.mean()) > 2 * abs(estimated_accuracy(w, b) - right.mean())


def test_bin_accuracy_weighs_every_set_alike_and_pulls_empty_bins_to_their_middle():
    big = (np.full(9000, 3), np.ones(9000, bool))       # bin 3, always right
    small = (np.full(1000, 3), np.zeros(1000, bool))    # bin 3, always wrong
    table = estimate.bin_accuracy([big, small])
    assert table[3] == pytest.approx(0.5, abs=0.01)
    assert table[0] == pytest.approx(estimate.MIDDLES[0])  # no calibration data there: "calibrated"
    with pytest.raises(ValueError):
        estimate.bin_accuracy([])


def test_model_quality_estimate_over_pairs_is_the_window_estimate_over_the_same_predictions():
    rng = np.random.default_rng(1)
    b = _baseline(rng)
    conf, right = _calibrated(rng, 300, 2, 2)
    pairs = [RecentPair(0 if r else 1, 0, bin_of(c), "") for c, r in zip(conf, right)]
    labelled = from_recent(pairs, N_CLASSES)
    assert estimate_from_bins(labelled, b) == pytest.approx(estimated_accuracy(_window(conf), b))


def test_falls_back_to_atc_without_shifted_calibration_data():
    rng = np.random.default_rng(2)
    b = _baseline(rng, calibration=False)
    assert b.bin_accuracy is None and b.atc_bin is not None
    conf, _ = _calibrated(rng, 500, 2, 2)
    w = _window(conf)
    assert estimated_accuracy(w, b) == pytest.approx(w.confidence_counts[b.atc_bin:].sum() / w.total)


def test_falls_back_to_the_average_confidence_without_labels_or_baseline():
    rng = np.random.default_rng(3)
    b = _baseline(rng, calibration=True, labels=False)  # no labels: nothing learned, even with sets
    assert b.bin_accuracy is None and b.atc_bin is None and b.accuracy is None
    conf, _ = _calibrated(rng, 500, 2, 2)
    assert estimated_accuracy(_window(conf), b) == pytest.approx(conf.mean())
    assert estimated_accuracy(_window(conf), None) == pytest.approx(conf.mean())
    # the count window keeps bins, no sum: the mean comes from the bins' middles, never 0
    assert estimated_accuracy(_window(conf, "count"), None) == pytest.approx(conf.mean(), abs=0.03)
    assert estimated_accuracy(WindowCounts.empty("time", N_CLASSES), b) is None


def test_a_table_of_another_bin_layout_is_ignored():
    rng = np.random.default_rng(4)
    conf, right = _calibrated(rng, 500, 8, 1)
    stats, cons = bl.suggest(*_features(conf, right)[:1], N_CLASSES, labels=_features(conf, right)[1],
                             calibration=[_features(*_calibrated(rng, 200, 1, 1))])
    stats["signwatch"]["bin_accuracy"] = stats["signwatch"]["bin_accuracy"][:-1]
    b = bl.load(stats, cons, n_classes=N_CLASSES)
    assert b.bin_accuracy is None and b.atc_bin is not None  # ATC, not a misread table


def test_shipped_baseline_holds_the_table():
    from signwatch.model.core import load_spec

    b = bl.load(*bl.shipped_files(), n_classes=load_spec().num_classes)
    assert b.bin_accuracy is not None and b.bin_accuracy[-1] > 0.99 and b.bin_accuracy[1] < 0.3

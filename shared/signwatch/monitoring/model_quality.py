"""The streaming model-quality check: the metrics of the labelled predictions against the
model-quality constraints, as one check of the registry (``model_quality``).

It judges two windows of *matched pairs* (``labels.LabelJoin``): those matched in the last
``monitor_quality_window_seconds`` and the last ``monitor_quality_last_labels`` matched, each
only once it holds ``monitor_quality_min_labels`` pairs (fewer: not judged, which counts as
clear). A window violates when any metric of SageMaker's six lies on the wrong side of its
constraint (``quality.check_quality``: the rule of SageMaker's model-quality job, which compares
the value with the threshold; the margin against noise is the constraint's, set when the
baseline is suggested: ``signwatch baseline suggest --quality --deviations``). The constraints
are the model-quality baseline's, ``{baseline prefix}/model-quality/constraints.json``, re-read
as the drift baseline is; without them the metrics are still reported, and nothing is judged.

The label-free estimate is reported beside the realised accuracy over the same pairs (the
confidence bin of each is kept with its prediction), so that its error is measured wherever
labels exist.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence

import numpy as np

from signwatch.monitoring import estimate, quality
from signwatch.monitoring.baseline import Baseline
from signwatch.monitoring.checks import CheckResult
from signwatch.monitoring.features import EDGES
from signwatch.monitoring.labels import LabelledWindow, RecentPair
from signwatch.ports.store import ObjectStore

CHECK = "model_quality"
MAX_CONFUSION_CLASSES = 50  # classes of the confusion matrix in the snapshot: those with most pairs
log = logging.getLogger(__name__)


def from_recent(pairs: Sequence[RecentPair], n_classes: int) -> LabelledWindow:
    """The last-N window, from the join's list of the newest pairs."""
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    matched, right = np.zeros(len(EDGES) - 1, dtype=np.int64), np.zeros(len(EDGES) - 1, dtype=np.int64)
    for p in pairs:
        if p.true < n_classes and p.predicted < n_classes:
            confusion[p.true, p.predicted] += 1
            matched[p.bin] += 1
            right[p.bin] += p.true == p.predicted
    return LabelledWindow(confusion, matched, right)


def estimate_from_bins(window: LabelledWindow, baseline: Baseline | None) -> float | None:
    """The label-free estimate over the pairs' predictions, as ``checks.estimated_accuracy``
    computes it over a window (``estimate``: binned calibration, else ATC, else the mean
    confidence, here from each bin's middle): from the confidence bins alone, which is all a pair keeps."""
    if not int(window.matched_per_bin.sum()):
        return None
    if baseline is not None:
        found = estimate.from_bins(window.matched_per_bin, baseline.bin_accuracy, baseline.atc_bin)
        if found is not None:
            return found
    return estimate.average_confidence(window.matched_per_bin)


def most_mistaken_class(window: LabelledWindow) -> int | None:
    """The class the model answers most often wrongly (the column with most off-diagonal pairs):
    under snow, the class snowy signs are taken for; under attack, the attacker's target."""
    wrong = window.confusion.sum(axis=0) - np.diag(window.confusion)
    return int(np.argmax(wrong)) if wrong.any() else None


def summary(window: LabelledWindow, baseline: Baseline | None, class_names: Sequence[str]) -> dict:
    """What the snapshot, the dashboard and the gauges show of one window of pairs."""
    out: dict = {"labels": window.total, "accuracy": window.accuracy,
                 "estimated_accuracy": estimate_from_bins(window, baseline)}
    if out["accuracy"] is not None and out["estimated_accuracy"] is not None:
        out["estimate_error"] = out["estimated_accuracy"] - out["accuracy"]
    if window.total:
        t, p = window.pairs()
        metrics = quality.multiclass_metrics(t, p, len(class_names))
        out |= {name: metrics[name]["value"] for name in quality.METRICS}
        weight = window.confusion.sum(axis=0) + window.confusion.sum(axis=1)
        seen = np.flatnonzero(weight)
        if len(seen) > MAX_CONFUSION_CLASSES:  # the snapshot stays small for a model of 1,000 classes
            seen = np.sort(seen[np.argsort(-weight[seen], kind="stable")[:MAX_CONFUSION_CLASSES]])
        out["confusion"] = {"classes": [int(c) for c in seen], "classes_seen": int((weight > 0).sum()),
                            "counts": window.confusion[np.ix_(seen, seen)].tolist()}
    return out


def judge(window: LabelledWindow, kind: str, constraints: dict, n_classes: int, min_labels: int,
          seconds: int | None = None) -> CheckResult:
    """The ``model_quality`` result of one window (``kind``: "time", the pairs matched in the last
    ``seconds``, or "count", the last pairs matched)."""
    n = window.total
    if n < min_labels:
        return CheckResult(CHECK, "accuracy", "LessThanThreshold", kind, n, False, judged=False)
    t, p = window.pairs()
    metrics = quality.multiclass_metrics(t, p, n_classes)
    breaches = quality.check_quality(metrics, constraints)
    inner = constraints.get(quality.CONSTRAINTS_KEY, constraints)
    first = breaches[0]["metric_name"] if breaches else next(iter(inner), "accuracy")
    value = metrics[first]["value"]
    wrong = n - int(np.trace(window.confusion))
    over = (f"the {n} predictions labelled in the last {seconds} s" if kind == "time" and seconds
            else f"the last {n} labelled predictions")
    description = "; ".join(b["description"] for b in breaches) + f" (over {over})"
    return CheckResult(CHECK, first, inner.get(first, {}).get("comparison_operator", "LessThanThreshold"), kind, n,
                       bool(breaches), observed=value, statistic=value, threshold=inner.get(first, {}).get("threshold"),
                       class_id=most_mistaken_class(window), count=wrong, description=description)


class QualityConstraints:
    """The model-quality constraints in the store, re-read every ``reload_s`` (a new upload is
    taken without a restart; one that cannot be read is logged and the last good one kept)."""

    def __init__(self, store: ObjectStore, key: str, reload_s: float, clock: Callable[[], float]) -> None:
        self.store, self.key, self.reload_s, self.clock = store, key, reload_s, clock
        self.constraints: dict | None = None
        self._read_at = float("-inf")

    def get(self) -> dict | None:
        if self.clock() - self._read_at >= self.reload_s:
            self._read_at = self.clock()
            try:
                raw = self.store.get(self.key) if self.store.exists(self.key) else None
                document = json.loads(raw) if raw is not None else None
                if document is not None:
                    quality.check_quality(_perfect(document), document)  # it must be judgeable
                self.constraints = document
            except Exception as exc:  # noqa: BLE001 - a bad upload must not stop the monitor
                log.warning("model-quality constraints at %s not taken: %s", self.key, exc)
        return self.constraints


def _perfect(constraints: dict) -> dict:
    """Metrics that meet every constraint's name (to validate a constraints file)."""
    inner = constraints.get(quality.CONSTRAINTS_KEY, constraints)
    return {name: {"value": 1.0, "standard_deviation": quality.NOT_A_NUMBER} for name in inner}

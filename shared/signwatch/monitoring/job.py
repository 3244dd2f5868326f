"""The scheduled job over captured files, as SageMaker's monitoring schedule runs it.

One run reads the capture records of ``[start, end)``, counts them as one window, runs the same
checks as the streaming monitor against the baseline, and writes ``statistics.json`` and
``constraint_violations.json`` into a folder of its own, ``{output}/yyyy/mm/dd/hh`` (the hour the
run covers ends in), as SageMaker lays a schedule's reports out. The false-alarm budget of a day
is split over the runs of a day (24 for an hourly schedule) and the tests of a run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np

from signwatch.monitoring.baseline import Baseline, suggest
from signwatch.monitoring.checks import STAT_CHECKS, WindowCounts, estimated_accuracy, run_checks
from signwatch.monitoring.features import N_BINS, Features
from signwatch.monitoring.reference import features_from_capture

_HOUR = re.compile(r"/(\d{4})/(\d{2})/(\d{2})/(\d{2})/")


def batch_counts(features: list[Features], n_classes: int, unreadable: int = 0) -> WindowCounts:
    classes = np.bincount([f.class_id for f in features], minlength=n_classes)[:n_classes].astype(float)
    conf = np.bincount([f.confidence_bin for f in features], minlength=N_BINS).astype(float)
    margin = np.bincount([f.margin_bin for f in features], minlength=N_BINS).astype(float)
    return WindowCounts("batch", len(features), classes, conf, margin, sum(f.low_confidence for f in features),
                        float(sum(f.confidence for f in features)), unreadable=unreadable)


def keys_in_range(keys: list[str], start: datetime | None, end: datetime | None) -> list[str]:
    """Capture files whose hour folder overlaps [start, end); files without one are kept."""
    out = []
    for k in keys:
        if not k.endswith(".jsonl"):
            continue
        m = _HOUR.search(k)
        if m and (start or end):
            hour = datetime(*map(int, m.groups()), tzinfo=timezone.utc)
            if (end and hour >= end) or (start and hour + timedelta(hours=1) <= start):
                continue
        out.append(k)
    return out


@dataclass
class JobResult:
    total: int
    unreadable: int
    predicted_classes: dict[int, int]
    violations: list[dict]
    statistics: dict | None
    estimated_accuracy: float | None
    files: int


def run_job(files: list[bytes], baseline: Baseline, class_names: tuple[str, ...], start: datetime | None = None,
            end: datetime | None = None, runs_per_day: int = 24) -> JobResult:
    features, unreadable = features_from_capture(files, start, end)
    w = batch_counts(features, len(class_names), unreadable)
    alpha = baseline.thresholds.alpha_per_day / (len(STAT_CHECKS) * max(1, runs_per_day))
    results = run_checks(w, baseline, alpha, class_names)
    violations = [{"feature_name": r.feature, "constraint_check_type": r.check_type, "description": r.description}
                  for r in results if r.failing]
    statistics = suggest(features, len(class_names), min_items=1)[0] if features else None
    predicted = {int(c): int(n) for c, n in enumerate(w.class_counts) if n}
    return JobResult(w.total, unreadable, predicted, violations, statistics, estimated_accuracy(w, baseline),
                     len(files))


def run_folder(output_prefix: str, end: datetime) -> str:
    return f"{output_prefix.rstrip('/')}/{end - timedelta(seconds=1):%Y/%m/%d/%H}"


def write_run(store, folder: str, result: JobResult) -> dict[str, str]:
    written = {"constraint_violations": store.put(
        f"{folder}/constraint_violations.json",
        json.dumps({"violations": result.violations}, indent=2).encode(), "application/json")}
    if result.statistics is not None:
        written["statistics"] = store.put(f"{folder}/statistics.json",
                                          json.dumps(result.statistics, indent=1).encode(), "application/json")
    return written

"""The scheduled job over captured files, as SageMaker's monitoring schedule runs it.

One run reads the capture records of ``[start, end)``, counts them as one window, runs the same
checks as the streaming monitor against the baseline, and writes ``statistics.json`` and
``constraint_violations.json`` into a folder of its own, ``{output}/yyyy/mm/dd/hh`` (the hour the
run covers ends in), as SageMaker lays a schedule's reports out. The false-alarm budget of a day
is split over the runs of a day (24 for an hourly schedule) and the tests of a run.

The classes are the served model's (its manifest): a record whose top-1 class id is not one of
them counts as unreadable (the completeness check), as a record that is not JSON does. Without a
baseline for the model only over-prediction and completeness run (``JobResult.baseline_id`` None).

Counting streams and scales out (``capture_counts``: a map per file, a reduce; ``job_workers``:
in this process, on local processes or on Dask): ``run_counted`` judges what they counted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np

from signwatch.monitoring import registry
from signwatch.monitoring.baseline import Baseline, Thresholds
from signwatch.monitoring.baseline import suggest_from_values
from signwatch.monitoring.capture_counts import Counted, count_chunks, finish, merge
from signwatch.monitoring.checks import WindowCounts, estimated_accuracy
from signwatch.monitoring.features import N_BINS, Features
from signwatch.monitoring.tracks import Tracks

_HOUR = re.compile(r"/(\d{4})/(\d{2})/(\d{2})/(\d{2})/")


def split_by_class(features: list[Features], n_classes: int) -> tuple[list[Features], int]:
    """(the features of the model's classes, how many name a class id outside ``[0, n_classes)``)."""
    inside = [f for f in features if 0 <= f.class_id < n_classes]
    return inside, len(features) - len(inside)


def batch_counts(features: list[Features], n_classes: int, unreadable: int = 0) -> WindowCounts:
    """One window of the features; a class id outside the model's classes is counted unreadable."""
    features, outside = split_by_class(features, n_classes)
    unreadable += outside
    classes = np.bincount([f.class_id for f in features], minlength=n_classes).astype(float)
    conf = np.bincount([f.confidence_bin for f in features], minlength=N_BINS).astype(float)
    margin = np.bincount([f.margin_bin for f in features], minlength=N_BINS).astype(float)
    return WindowCounts("batch", len(features), classes, conf, margin, sum(f.low_confidence for f in features),
                        float(sum(f.confidence for f in features)), unreadable=unreadable)


def counted_window(counted: Counted, n_classes: int) -> WindowCounts:
    """``batch_counts`` of the counted frames (the same numbers, to the last bit of the sum: the
    confidences are added one by one in time order, as the features' list was)."""
    return WindowCounts("batch", len(counted), np.bincount(counted.class_id, minlength=n_classes).astype(float),
                        np.bincount(counted.confidence_bin, minlength=N_BINS).astype(float),
                        np.bincount(counted.margin_bin, minlength=N_BINS).astype(float), int(counted.low.sum()),
                        float(sum(counted.confidence.tolist())), unreadable=counted.unreadable)


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
    baseline_id: str | None = None   # None: no baseline for this model, the drift checks did not run
    folded: int = 0                  # records not counted on their own: frames of an object counted seconds before


def run_job(files: list[bytes], baseline: Baseline | None, class_names: tuple[str, ...],
            start: datetime | None = None, end: datetime | None = None, runs_per_day: int = 24,
            model_version: str | None = None, thresholds: Thresholds | None = None,
            judge_classes: bool = True, tracks: Tracks | None = None) -> JobResult:
    """The job over files already read (a few, in tests): ``tracks`` folds the frames of one
    object (``signwatch.monitoring.tracks``), as the streaming monitor does; None counts every record."""
    folding = tracks is not None and tracks.enabled
    partial = merge(count_chunks([data], start, end, hashes=folding) for data in files)
    return run_counted(finish(partial, len(class_names), tracks), baseline, class_names, runs_per_day,
                       model_version, thresholds, judge_classes)


def run_counted(counted: Counted, baseline: Baseline | None, class_names: tuple[str, ...], runs_per_day: int = 24,
                model_version: str | None = None, thresholds: Thresholds | None = None,
                judge_classes: bool = True) -> JobResult:
    """The checks over what the map and reduce counted (``capture_counts.finish``)."""
    w = counted_window(counted, len(class_names))
    t = baseline.thresholds if baseline is not None else (thresholds or Thresholds())

    def alpha(check: str) -> float:  # the window checks' shares of the day's budget, over the day's runs
        return registry.alpha_for(check, t.alpha_per_day, runs_per_day, ("window",))

    results = registry.run_checks(w, baseline, alpha, class_names, t, judge_classes=judge_classes)
    violations = [{"feature_name": r.feature, "constraint_check_type": r.check_type, "description": r.description}
                  for r in results if r.failing]
    statistics = (suggest_from_values(counted.class_id, counted.confidence, counted.margin, int(counted.low.sum()),
                                      len(class_names), min_items=1, model_version=model_version)[0]
                  if len(counted) else None)
    predicted = {int(c): int(n) for c, n in enumerate(w.class_counts) if n}
    return JobResult(w.total, w.unreadable, predicted, violations, statistics, estimated_accuracy(w, baseline),
                     counted.files, baseline.baseline_id if baseline is not None else None, counted.folded)


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

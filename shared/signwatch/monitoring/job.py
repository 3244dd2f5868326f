"""The scheduled job over captured files, as SageMaker's monitoring schedule runs it.

One run reads the capture records of ``[start, end)``, counts them as one window, runs the same
checks as the streaming monitor against the baseline, and writes ``statistics.json`` and
``constraint_violations.json`` into a folder of its own, ``{output}/yyyy/mm/dd/hh`` (the hour the
run covers ends in), as SageMaker lays a schedule's reports out. The false-alarm budget of a day
is split over the runs of a day (24 for an hourly schedule) and the tests of a run.

The classes are the served model's (its manifest): a record whose top-1 class id is not one of
them counts as unreadable (the completeness check), as a record that is not JSON does. Without a
baseline for the model only over-prediction and completeness run (``JobResult.baseline_id`` None).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np

from signwatch.monitoring import registry
from signwatch.monitoring.baseline import Baseline, Thresholds, suggest
from signwatch.monitoring.checks import WindowCounts, estimated_accuracy
from signwatch.monitoring.features import N_BINS, Features
from signwatch.monitoring.reference import CapturedFrame, captured_frames, features_from_capture
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
    """``tracks``: fold the frames of one object (``signwatch.monitoring.tracks``), as the streaming
    monitor does; None counts every record."""
    if tracks is not None and tracks.enabled:
        features, unreadable, folded = fold(*captured_frames(files, start, end), tracks)
    else:
        (features, unreadable), folded = features_from_capture(files, start, end), 0
    features, outside = split_by_class(features, len(class_names))
    w = batch_counts(features, len(class_names), unreadable + outside)
    t = baseline.thresholds if baseline is not None else (thresholds or Thresholds())

    def alpha(check: str) -> float:  # the window checks' shares of the day's budget, over the day's runs
        return registry.alpha_for(check, t.alpha_per_day, runs_per_day, ("window",))

    results = registry.run_checks(w, baseline, alpha, class_names, t, judge_classes=judge_classes)
    violations = [{"feature_name": r.feature, "constraint_check_type": r.check_type, "description": r.description}
                  for r in results if r.failing]
    statistics = (suggest(features, len(class_names), min_items=1, model_version=model_version)[0]
                  if features else None)
    predicted = {int(c): int(n) for c, n in enumerate(w.class_counts) if n}
    return JobResult(w.total, w.unreadable, predicted, violations, statistics, estimated_accuracy(w, baseline),
                     len(files), baseline.baseline_id if baseline is not None else None, folded)


FOLD_BATCH = 256  # frames decided together (against the tracks of every frame before them)


def fold(frames: list[CapturedFrame], unreadable: int, tracks: Tracks) -> tuple[list[Features], int, int]:
    """(the features of the frames that count, unreadable, how many were folded into a track)."""
    out, folded = [], 0
    for i in range(0, len(frames), FOLD_BATCH):
        part = frames[i:i + FOLD_BATCH]
        decisions = tracks.decide([(f, f.features.class_id) for f in part], read_state=False)
        tracks.remember(write_state=False)
        out += [f.features for f, d in zip(part, decisions) if not d.folded]
        folded += sum(bool(d.folded) for d in decisions)
    return out, unreadable, folded


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

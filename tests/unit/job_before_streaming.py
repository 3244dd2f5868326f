"""The scheduled job's counting as it was before it streamed (issue 19), kept as the tests' oracle:
every file read whole, every record parsed into one list, sorted, folded and counted in one
process. ``tests/unit/test_job_streaming.py`` checks that the map and reduce give the same
results, to the last bit of every float."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from signwatch.capture import read_capture_lines
from signwatch.monitoring import registry
from signwatch.monitoring.baseline import Baseline, Thresholds, suggest
from signwatch.monitoring.checks import WindowCounts, estimated_accuracy
from signwatch.monitoring.features import N_BINS, Features, features_of
from signwatch.monitoring.reference import image_hash_of, record_time
from signwatch.monitoring.tracks import Tracks


@dataclass(frozen=True)
class CapturedFrame:
    time: datetime
    features: Features
    custom_attributes: str | None
    image_hash: str | None


def captured_frames(files: list[bytes], start=None, end=None, hashes: bool = True):
    out, unreadable = [], 0
    for data in files:
        records, bad = read_capture_lines(data)
        unreadable += bad
        for record in records:
            t = record_time(record)
            if t is not None and ((start and t < start) or (end and t >= end)):
                continue
            try:
                f = features_of(json.loads(record["captureData"]["endpointOutput"]["data"])["predictions"])
            except (ValueError, KeyError, TypeError, IndexError):
                unreadable += 1
                continue
            meta = record.get("eventMetadata") or {}
            out.append(CapturedFrame(t or datetime.min.replace(tzinfo=timezone.utc), f, meta.get("customAttributes"),
                                     image_hash_of(record) if hashes else None))
    out.sort(key=lambda frame: frame.time)
    return out, unreadable


def features_from_capture(files, start=None, end=None):
    frames, unreadable = captured_frames(files, start, end, hashes=False)
    return [f.features for f in frames], unreadable


def split_by_class(features, n_classes):
    inside = [f for f in features if 0 <= f.class_id < n_classes]
    return inside, len(features) - len(inside)


def batch_counts(features, n_classes, unreadable=0) -> WindowCounts:
    features, outside = split_by_class(features, n_classes)
    unreadable += outside
    classes = np.bincount([f.class_id for f in features], minlength=n_classes).astype(float)
    conf = np.bincount([f.confidence_bin for f in features], minlength=N_BINS).astype(float)
    margin = np.bincount([f.margin_bin for f in features], minlength=N_BINS).astype(float)
    return WindowCounts("batch", len(features), classes, conf, margin, sum(f.low_confidence for f in features),
                        float(sum(f.confidence for f in features)), unreadable=unreadable)


FOLD_BATCH = 256


def fold(frames, unreadable, tracks: Tracks):
    out, folded = [], 0
    for i in range(0, len(frames), FOLD_BATCH):
        part = frames[i:i + FOLD_BATCH]
        decisions = tracks.decide([(f, f.features.class_id) for f in part], read_state=False)
        tracks.remember(write_state=False)
        out += [f.features for f, d in zip(part, decisions) if not d.folded]
        folded += sum(bool(d.folded) for d in decisions)
    return out, unreadable, folded


def run_job(files: list[bytes], baseline: Baseline | None, class_names, start=None, end=None, runs_per_day=24,
            model_version=None, thresholds: Thresholds | None = None, judge_classes=True, tracks: Tracks | None = None):
    """(the window counts, the violations, statistics.json, estimated accuracy, folded)."""
    if tracks is not None and tracks.enabled:
        features, unreadable, folded = fold(*captured_frames(files, start, end), tracks)
    else:
        (features, unreadable), folded = features_from_capture(files, start, end), 0
    features, outside = split_by_class(features, len(class_names))
    w = batch_counts(features, len(class_names), unreadable + outside)
    t = baseline.thresholds if baseline is not None else (thresholds or Thresholds())

    def alpha(check):
        return registry.alpha_for(check, t.alpha_per_day, runs_per_day, ("window",))

    results = registry.run_checks(w, baseline, alpha, class_names, t, judge_classes=judge_classes)
    violations = [{"feature_name": r.feature, "constraint_check_type": r.check_type, "description": r.description}
                  for r in results if r.failing]
    statistics = (suggest(features, len(class_names), min_items=1, model_version=model_version)[0]
                  if features else None)
    return w, violations, statistics, estimated_accuracy(w, baseline), folded

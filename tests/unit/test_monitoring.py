from __future__ import annotations

import json
from datetime import timedelta

from signwatch.capture import capture_record
from signwatch.monitoring import ClassCounter, Rules, check_counts, run_batch
from signwatch.ports.state_memory import MemoryState
from tests.unit.helpers import inference_event

NAMES = tuple(f"name{i}" for i in range(43))


def test_share_above_threshold_is_a_baseline_drift_violation():
    counts = {"total": 400, "class:14": 322, "class:9": 78}
    [finding] = check_counts(counts, Rules(), NAMES)
    assert finding.class_id == 14 and finding.count == 322
    assert finding.check.constraint_check_type == "baseline_drift_check"
    assert finding.check.feature_name == "PredictedClass"
    assert finding.check.description == (
        "Class 14 (name14) predicted 80.50% of the time: exceeded 50.00% threshold")


def test_no_violation_below_threshold_or_below_min_predictions():
    assert check_counts({"total": 100, "class:1": 50, "class:2": 50}, Rules(), NAMES) == []
    assert check_counts({"total": 19, "class:1": 19}, Rules(), NAMES) == []


def test_low_confidence_share_is_checked():
    [finding] = check_counts({"total": 40, "class:1": 10, "class:2": 10, "class:3": 10, "class:4": 10,
                              "low_confidence": 30}, Rules(), NAMES)
    assert finding.check.feature_name == "Confidence" and finding.class_id is None


def test_counter_counts_each_event_once_within_the_window():
    counter = ClassCounter(MemoryState(), "ep", window_s=600, bucket_s=60)
    events = [inference_event(class_id=14 if i % 4 else 2, probability=0.3 if i < 5 else 0.9) for i in range(20)]
    for e in events:
        assert counter.record(e)
    assert not counter.record(events[0]), "a replay is not counted twice"
    now = events[-1].time.timestamp()
    counts = counter.window_counts(now)
    assert counts == {"total": 20, "class:14": 15, "class:2": 5, "low_confidence": 5}
    assert counter.window_counts(now + 3600) == {}, "old buckets leave the window"
    samples = counter.samples(14)
    assert len(samples) == 8 and samples[0].event_id == [e for e in events if e.output.predictions[0].class_id == 14][-1].event_id


def test_events_are_bucketed_by_their_own_time():
    counter = ClassCounter(MemoryState(), "ep", window_s=120, bucket_s=60)
    old = inference_event(class_id=1)
    new = inference_event(class_id=2, time=old.time + timedelta(minutes=10))
    counter.record(old)
    counter.record(new)
    assert counter.window_counts(new.time.timestamp()) == {"total": 1, "class:2": 1}


def test_batch_job_writes_the_sagemaker_report():
    lines = [json.dumps(capture_record(inference_event(class_id=14 if i < 30 else 1), b"x")) for i in range(40)]
    report = run_batch([("\n".join(lines) + "\nbroken\n").encode()], Rules(), NAMES)
    assert report["total"] == 40 and report["predicted_classes"] == {1: 10, 14: 30}
    types = [v["constraint_check_type"] for v in report["violations"]]
    assert types == ["baseline_drift_check", "completeness_check"]
    assert report["violations"][0]["description"].startswith("Class 14 (name14) predicted 75.00%")

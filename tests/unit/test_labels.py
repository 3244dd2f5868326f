"""The streaming label join and the model-quality check, embedded (memory state, folder store).
The same join on Redis: tests/contract/test_state_contract.py and the stack tests."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from signwatch.events import ViolationEvent
from signwatch.model import ModelSpec
from signwatch.monitoring import Monitor, MonitorConfig, quality
from signwatch.monitoring.labels import LabelJoin, id_digest
from signwatch.monitoring.model_quality import from_recent
from signwatch.ports.state_memory import MemoryState
from signwatch.ports.store_file import FileStore
from tests.unit.helpers import Clock, inference_event

NAMES = ModelSpec().class_names


def _events(clock, rng, n, right_share, inference_ids=False):
    """``n`` predictions with their true classes: a share ``right_share`` predicted right."""
    out = []
    for i in range(n):
        true = int(rng.integers(0, 43))
        pred = true if rng.random() < right_share else (true + 1 + int(rng.integers(0, 42))) % 43
        clock.t += 1
        e = inference_event(class_id=pred, probability=float(rng.uniform(0.3, 1.0)),
                            time=datetime.fromtimestamp(clock.t, timezone.utc),
                            **({"inference_id": f"req-{clock.t:.0f}"} if inference_ids else {}))
        out.append((e, true))
    return out


def _monitor(tmp_path, clock, **kw):
    state = MemoryState(clock=clock)
    config = MonitorConfig(endpoint="ep", **{"learn_baseline_s": 0, "quality_min_labels": 100,
                                             "resolve_after_s": 60, "resolve_after_predictions": 10} | kw)
    store = FileStore(tmp_path)
    return Monitor(state, store, config, NAMES, clock=clock, wall_clock=clock), store


def test_pairs_are_counted_once_whatever_the_order_and_the_metrics_are_sklearns(tmp_path):
    clock, rng = Clock(), np.random.default_rng(1)
    monitor, _ = _monitor(tmp_path, clock)
    labelled = _events(clock, rng, 300, 0.8, inference_ids=True)
    early = [(e.inference_id, t) for e, t in labelled[:100]]      # labels before their predictions
    assert set(monitor.add_labels(early)) == {"waiting"}
    monitor.observe_many([e for e, _ in labelled])
    late = [(e.event_id, t) for e, t in labelled[100:]]
    assert set(monitor.add_labels(late)) == {"matched"}
    again = [(e.event_id, t) for e, t in labelled[:50]] + [(e.inference_id, t) for e, t in labelled[200:]]
    assert set(monitor.add_labels(again)) == {"duplicate"}
    assert monitor.add_labels([("never-served", 3)]) == ["waiting"]
    stats = monitor.labels.stats(clock.t)
    assert stats == {"matched": 300, "duplicates": 150, "predictions_pending": 0, "labels_waiting": 1}

    window = monitor.labels.window(clock.t)
    y_true = [t for _, t in labelled]
    y_pred = [e.output.predictions[0].class_id for e, _ in labelled]
    assert window.total == 300 and window.accuracy == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    t, p = window.pairs()
    metrics = quality.multiclass_metrics(t, p, 43)
    assert metrics["weighted_f1"]["value"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"), abs=1e-9)
    recent = from_recent(monitor.labels.recent(), 43)
    assert recent.total == 300 and np.array_equal(recent.confusion, window.confusion)


def test_only_captured_predictions_wait_for_labels(tmp_path):
    clock, rng = Clock(), np.random.default_rng(2)
    monitor, _ = _monitor(tmp_path, clock, capture_sampling_percentage=25.0)
    events = _events(clock, rng, 400, 0.9)
    monitor.observe_many([e for e, _ in events])
    pending = monitor.labels.stats(clock.t)["predictions_pending"]
    assert 60 < pending < 140, pending  # a quarter, by the capture's own rule (deterministic by event id)


def test_entries_are_a_few_bytes_whatever_the_event():
    assert len(id_digest("x" * 128)) == 16 and len(id_digest("a")) == 16


def test_retention_drops_what_waited_too_long(tmp_path):
    clock = Clock()
    state = MemoryState(clock=clock)
    join = LabelJoin(state, "ep", 43, retention_s=86_400, window_s=3600, bucket_s=300, recent_max=100)
    assert join.add_labels([("old", 4)], clock.t) == ["waiting"]
    clock.t += 3 * 86_400  # past retention plus a day: the day's hash expired
    assert join.add_labels([("old", 4)], clock.t) == ["waiting"], "forgotten, so waiting afresh"


def test_accuracy_falling_under_labels_is_one_quality_violation_naming_the_metric(tmp_path):
    clock, rng = Clock(), np.random.default_rng(3)
    monitor, store = _monitor(tmp_path, clock)
    good = _events(clock, rng, 400, 0.95)
    monitor.observe_many([e for e, _ in good])
    monitor.add_labels([(e.event_id, t) for e, t in good])
    y_true, y_pred = [t for _, t in good], [e.output.predictions[0].class_id for e, _ in good]
    constraints = quality.quality_constraints(quality.multiclass_metrics(y_true, y_pred, 43), tolerance=0.1)
    store.put(quality.constraints_key(monitor.baseline_prefix), json.dumps(constraints).encode(), "application/json")
    monitor.quality_constraints._read_at = float("-inf")
    assert [v for v in monitor.evaluate() if v.check_name == "model_quality"] == []
    assert monitor.snapshot(clock.t)["quality"]["time"]["labels"] == 400

    raised: list[ViolationEvent] = []
    for _ in range(6):  # snow: labels show 60% right
        bad = _events(clock, rng, 100, 0.6)
        monitor.observe_many([e for e, _ in bad])
        monitor.add_labels([(e.event_id, t) for e, t in bad])
        raised += [v for v in monitor.evaluate() if v.check_name == "model_quality"]
    [violation] = raised
    assert violation.check.constraint_check_type == "LessThanThreshold"
    assert violation.check.feature_name in quality.METRICS and "Metric" in violation.check.description
    assert violation.window.kind in ("time", "count") and violation.class_id is not None
    snap = monitor.snapshot(clock.t)["quality"]
    assert snap["count"]["accuracy"] < 0.85 and snap["constraints"] is True
    assert abs(snap["count"]["estimate_error"]) < 1
    report = json.loads(store.get(violation.report))
    assert report["violations"][0]["constraint_check_type"] == "LessThanThreshold"


def test_the_snapshot_confusion_keeps_the_busiest_classes_of_a_large_model():
    from signwatch.monitoring.labels import LabelledWindow
    from signwatch.monitoring.model_quality import MAX_CONFUSION_CLASSES, summary

    n = 1000
    confusion = np.zeros((n, n), dtype=np.int64)
    confusion[np.arange(n), np.arange(n)] = np.arange(1, n + 1)  # class c labelled c + 1 times
    out = summary(LabelledWindow(confusion, np.zeros(10, dtype=np.int64), np.zeros(10, dtype=np.int64)), None,
                  tuple(str(i) for i in range(n)))
    assert out["confusion"]["classes_seen"] == n and len(out["confusion"]["classes"]) == MAX_CONFUSION_CLASSES
    assert out["confusion"]["classes"] == list(range(n - MAX_CONFUSION_CLASSES, n))
    assert out["accuracy"] == 1.0


def test_labels_that_came_first_are_judged_when_their_predictions_arrive(tmp_path):
    clock, rng = Clock(), np.random.default_rng(4)
    monitor, _ = _monitor(tmp_path, clock)
    events = _events(clock, rng, 50, 0.8, inference_ids=True)
    monitor.observe_many([e for e, _ in events[:10]])
    monitor.evaluate()  # judged: 0 labels; the figures are now cached for 10 s
    assert set(monitor.add_labels([(e.inference_id, t) for e, t in events[10:]])) == {"waiting"}
    monitor.observe_many([e for e, _ in events[10:]])  # the pairs are made here, on the prediction side
    monitor.evaluate()
    assert monitor.quality["time"]["labels"] == 40, "judged afresh, not the cached figures"

"""The monitor's library: features, baseline files, checks, windows, episodes, the job.

Streams here are synthetic (drawn from the shipped baseline's own distributions) and driven on a
simulated clock with the in-memory state store; tests/integration/test_monitor_stack.py runs
the model's real outputs through the real servers.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from signwatch.capture import capture_record
from signwatch.events import MAX_VIOLATION_BYTES, InferenceOutput, Prediction, ViolationEvent
from signwatch.model import ModelSpec
from signwatch.monitoring import Monitor, MonitorConfig, read_snapshot
from signwatch.monitoring import baseline as bl
from signwatch.monitoring import registry
from signwatch.monitoring.checks import ks_p_value
from signwatch.monitoring.registry import run_checks
from signwatch.monitoring.features import EDGES, N_BINS, bin_of, features_of
from signwatch.monitoring.job import batch_counts, keys_in_range, run_job
from signwatch.ports.state_memory import MemoryState
from signwatch.ports.store_file import FileStore
from tests.unit.helpers import T0, Clock, inference_event

NAMES = ModelSpec().class_names


def _event(clock: Clock, class_id: int, p: float, p2: float | None = None, endpoint: str = "ep", **kw):
    preds = [Prediction(class_id=class_id, label="x", probability=p)]
    if p2 is not None:
        preds.append(Prediction(class_id=(class_id + 1) % 43, label="y", probability=p2))
    e = inference_event(class_id=class_id, probability=p, endpoint=endpoint,
                        time=datetime.fromtimestamp(clock.t, timezone.utc), **kw)
    return e.model_copy(update={"output": InferenceOutput(predictions=preds, model_version="test")})


def _monitor(tmp_path, clock, **kw):
    """A monitor judging with the shipped baseline, class shares included: these streams are drawn
    from it (on real traffic it would learn its own: tests/unit/test_learning.py)."""
    state = MemoryState(clock=clock)
    config = MonitorConfig(endpoint="ep", **{"shipped_class_checks": True, "learn_baseline_s": 0} | kw)
    return Monitor(state, FileStore(tmp_path), config, NAMES, clock=clock), state


def _clean_draw(rng, baseline):
    """One prediction drawn from the baseline's own class shares and confidence bins."""
    c = int(rng.choice(43, p=baseline.class_shares))
    b = int(rng.choice(N_BINS, p=baseline.confidence_counts / baseline.confidence_counts.sum()))
    p = float(rng.uniform(EDGES[b], EDGES[b + 1]))
    return c, p


def test_features_take_the_top_three_and_the_margin():
    f = features_of([{"class_id": 3, "probability": 0.4}, {"class_id": 5, "probability": 0.35},
                     {"class_id": 7, "probability": 0.2}])
    assert (f.class_id, f.low_confidence) == (3, True) and f.margin == pytest.approx(0.05)
    assert not features_of([{"class_id": 1, "probability": 0.6}]).low_confidence
    assert bin_of(0.0) == 0 and bin_of(1.0) == N_BINS - 1 and bin_of(0.95) < bin_of(0.999)


def test_the_shipped_baseline_loads_and_round_trips_through_suggest():
    b = bl.load(*bl.shipped_files(), n_classes=len(NAMES))
    assert b.item_count >= 4000 and b.class_counts.sum() == b.item_count
    assert 0 < b.low_confidence_share < 0.02 and b.accuracy > 0.95 and b.atc_bin is not None
    assert b.thresholds.over_prediction_share == 0.5
    rng = np.random.default_rng(1)
    feats = [features_of([{"class_id": int(c), "probability": 0.99}]) for c in rng.integers(0, 43, 300)]
    stats, cons = bl.suggest(feats, 43)
    again = bl.load(stats, cons, 43)
    assert again.item_count == 300 and again.confidence_counts.sum() == 300
    assert bl.load(stats, cons, 43, overrides={"over_prediction_share": 0.3}).thresholds.over_prediction_share == 0.3
    with pytest.raises(ValueError, match="not a usable baseline"):
        bl.load({"dataset": {}}, cons, 43)


def test_alpha_spends_the_daily_budget_over_every_test_of_a_day():
    """Each check's share of the budget, renormalised over the checks that run, spread over a
    day's tests: the window checks alone (five tests on two windows each second), or beside the
    sequential checks (which take the larger part)."""
    day = 2 * 86_400
    assert registry.alpha_for("ks_margin", 0.01, day, ("window",)) == pytest.approx(0.01 / (10 * 86_400))
    both = ("window", "sequential")
    assert registry.alpha_for("ks_margin", 0.01, day, both) == pytest.approx(0.01 * 0.04 / day)
    budgeted = [k for k in registry.CHECKS if k.budget_share]
    assert sum(registry.alpha_for(k.name, 0.01, 1, both) for k in budgeted) == pytest.approx(0.01)
    assert ks_p_value(0.0, 300, 4000) == pytest.approx(1.0)
    assert ks_p_value(0.3, 300, 4000) < 1e-18


def test_over_prediction_names_the_class_as_the_reference_job_did():
    b = bl.load(*bl.shipped_files(), n_classes=len(NAMES))
    feats = [features_of([{"class_id": 14, "probability": 0.99}])] * 322 + \
            [features_of([{"class_id": 9, "probability": 0.99}])] * 78
    results = {r.name: r for r in run_checks(batch_counts(feats, 43), b, 1e-8, NAMES)}
    r = results["over_prediction"]
    assert r.failing and r.class_id == 14
    assert r.description == "Class 14 (Stop) predicted 80.50% of the time: exceeded 50.00% threshold"
    assert results["class_drift_chi2"].failing and results["class_drift_linf"].failing


def test_a_clean_stream_raises_nothing_and_an_attack_is_flagged_in_seconds(tmp_path):
    clock = Clock()
    monitor, state = _monitor(tmp_path, clock)
    rng = np.random.default_rng(7)
    raised = []
    for _ in range(1200):  # 20 minutes at 1 request per second
        clock.t += 1
        raised += monitor.observe(_event(clock, *_clean_draw(rng, monitor.baseline)))
    assert raised == [], [v.check.description for v in raised]
    shift = clock.t
    first = None
    for _ in range(240):  # 96% of requests attacked into Stop
        clock.t += 1
        c, p = (14, 0.999) if rng.random() < 0.96 else _clean_draw(rng, monitor.baseline)
        out = monitor.observe(_event(clock, c, p))
        raised += out
        if out and first is None:
            first = clock.t - shift
    assert first is not None and first <= 30, first
    [incident] = raised
    assert incident.class_id == 14 and incident.check_name in incident.checks, "one violation per incident"
    assert incident.schema_ == "signwatch.violation/v3" and incident.baseline_id == monitor.baseline.baseline_id
    snap = read_snapshot(state, "ep")
    assert snap["window"]["class_counts"]["14"] > 100 and snap["baseline_id"] == monitor.baseline.baseline_id
    [open_] = [e for e in snap["incidents"] if e["state"] == "open"]
    assert "over_prediction" in open_["checks"] and open_["violation_id"] == incident.violation_id
    assert set(snap["drift"]) <= {k.name for k in registry.CHECKS if k.kind == "window"} and snap["drift"]


def test_a_window_too_small_for_the_drift_tests_says_so_in_the_snapshot(tmp_path):
    clock = Clock()
    monitor, _ = _monitor(tmp_path, clock)
    rng = np.random.default_rng(5)
    for _ in range(30):  # fewer than the 100 the drift tests need
        clock.t += 1
        monitor.observe(_event(clock, *_clean_draw(rng, monitor.baseline)))
    drift = monitor.snapshot(clock.t)["drift"]
    assert drift and all(d == {"statistic": None, "p_value": None, "n": 30, "judged": False}
                         for d in drift.values()), drift
    for _ in range(100):
        clock.t += 1
        monitor.observe(_event(clock, *_clean_draw(rng, monitor.baseline)))
    drift = monitor.snapshot(clock.t)["drift"]
    assert all(d["n"] == 130 and d["judged"] == (d["statistic"] is not None) for d in drift.values()), drift
    assert drift["ks_confidence"]["judged"], "130 predictions are enough for the KS test"


def test_lower_confidence_is_a_drift_violation_and_the_episode_resolves_then_raises_again(tmp_path):
    clock = Clock()
    monitor, _ = _monitor(tmp_path, clock, resolve_after_s=60)
    rng = np.random.default_rng(3)
    for _ in range(400):
        clock.t += 1
        assert monitor.observe(_event(clock, *_clean_draw(rng, monitor.baseline))) == []
    raised = []
    for _ in range(120):  # "snow": confidences drop, a seventh below 0.5
        clock.t += 1
        c, p = _clean_draw(rng, monitor.baseline)
        raised += monitor.observe(_event(clock, c, float(rng.uniform(0.3, 0.9)) if rng.random() < 0.5 else p))
    [incident] = raised  # one incident, however many checks the snow trips
    confidence_checks = {k.name for k in registry.CHECKS if k.feature in ("Confidence", "Margin")}
    assert set(incident.checks) <= confidence_checks, incident.checks
    for _ in range(900):  # clean again: windows clear, then 60 s of passing resolves
        clock.t += 1
        raised += monitor.observe(_event(clock, *_clean_draw(rng, monitor.baseline)))
    resolved = [v for v in raised if v.state == "resolved"]
    assert {v.violation_id for v in resolved} == {v.violation_id for v in raised if v.state == "open"}
    again = []
    for _ in range(120):
        clock.t += 1
        again += monitor.observe(_event(clock, 14, 0.999))
    assert [v for v in again if v.state == "open" and v.class_id == 14], "a later incident raises again"


def test_two_replicas_on_one_state_raise_one_violation_per_incident(tmp_path):
    clock = Clock()
    state = MemoryState(clock=clock)
    config = MonitorConfig(endpoint="ep")
    a = Monitor(state, FileStore(tmp_path), config, NAMES, clock=clock)
    b = Monitor(state, FileStore(tmp_path), config, NAMES, clock=clock)
    raised = []
    for i in range(300):
        clock.t += 0.5
        raised += (a if i % 2 else b).observe(_event(clock, 14, 0.999))
    [incident] = [v for v in raised if v.state == "open"]
    assert incident.class_id == 14
    reports = [k for k in FileStore(tmp_path).list("monitoring/ep/violations/") if k.endswith(".json")]
    assert reports == [incident.report], "one report, the claimer's"


def test_a_replica_that_loses_the_claim_writes_no_report(tmp_path):
    clock = Clock()
    monitor, _ = _monitor(tmp_path, clock)
    monitor.incidents.claim = lambda *args, **kw: False  # another replica claimed the incident first
    raised = []
    for _ in range(300):
        clock.t += 0.5
        raised += monitor.observe(_event(clock, 14, 0.999))
    assert raised == [] and FileStore(tmp_path).list("monitoring/") == [], "no orphan report"


def test_violations_carry_references_never_payloads_and_stay_small(tmp_path):
    clock = Clock()
    store = FileStore(tmp_path)
    monitor = Monitor(MemoryState(clock=clock), store, MonitorConfig(endpoint="ep", samples_per_class=64), NAMES,
                      clock=clock)
    big = bytes(np.random.default_rng(0).integers(0, 255, 60_000, dtype=np.uint8))
    from signwatch.publishing import make_input_payload

    raised = []
    for _ in range(200):
        clock.t += 1
        e = _event(clock, 14, 0.999).model_copy(update={"input": make_input_payload(big, "image/png")})
        raised += monitor.observe(e)
    [v] = raised  # one incident
    assert v.samples and len(v.to_bytes()) <= MAX_VIOLATION_BYTES
    assert all(store.get(s.ref) == big and s.size == len(big) for s in v.samples)
    assert "data" not in json.loads(v.to_bytes())["samples"][0]
    report = json.loads(store.get(v.report))  # SageMaker's shape: every check failing in the incident
    assert v.check.description.startswith(report["violations"][0]["description"])
    assert len(report["violations"]) == len(v.checks)
    assert ViolationEvent.model_validate_json(v.to_bytes()) == v


def test_unreadable_events_are_a_completeness_violation(tmp_path):
    clock = Clock()
    monitor, _ = _monitor(tmp_path, clock)
    raised = []
    for i in range(60):
        clock.t += 1
        raised += monitor.observe(_event(clock, i % 43, 0.999))
        if i % 3 == 0:
            raised += monitor.observe_unreadable(f"bad-{i}", clock.t)
    assert [v.check.constraint_check_type for v in raised if v.check_name == "completeness"] == ["completeness_check"]


def test_the_baseline_is_reloaded_from_the_store_when_it_changes(tmp_path):
    clock = Clock()
    monitor, _ = _monitor(tmp_path, clock, baseline_reload_s=5)
    first = monitor.baseline.baseline_id
    stats, cons = bl.shipped_files()
    cons["signwatch"]["over_prediction_share"] = 0.3
    bl.write_store(monitor.store, "baselines/ep", stats, cons)
    clock.t += 10
    monitor.observe(_event(clock, 1, 0.99))
    assert monitor.baseline.baseline_id != first and monitor.baseline.thresholds.over_prediction_share == 0.3


def test_the_batch_job_checks_captured_records_in_its_time_range():
    clock = Clock()
    lines = [json.dumps(capture_record(_event(clock, 14 if i < 300 else 1, 0.99), b"x")) for i in range(400)]
    files = [("\n".join(lines) + "\nbroken\n").encode()]
    result = run_job(files, bl.load(*bl.shipped_files(), n_classes=len(NAMES)), NAMES)
    assert result.total == 400 and result.unreadable == 1 and result.predicted_classes == {1: 100, 14: 300}
    assert "Class 14 (Stop) predicted 75.00%" in result.violations[0]["description"]
    assert result.statistics["dataset"]["item_count"] == 400
    later = datetime.fromtimestamp(T0, timezone.utc) + timedelta(hours=1)
    assert run_job(files, bl.load(*bl.shipped_files(), n_classes=len(NAMES)), NAMES, start=later).total == 0
    keys = ["d/ep/AllTraffic/2026/12/01/10/a.jsonl", "d/ep/AllTraffic/2026/12/01/12/b.jsonl", "d/x.txt"]
    t = datetime(2026, 12, 1, 10, 30, tzinfo=timezone.utc)
    assert keys_in_range(keys, t, t + timedelta(hours=1)) == keys[:1]

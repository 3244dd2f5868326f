"""Screening wired into the services (issue 20): the ``ScreeningEvent``, the calibration stored
with the baseline, the explainer's screening loop, and the monitor's ``adversarial_share`` check
(its counts, false-alarm control and episode)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from signwatch.config import Settings
from signwatch.contracts import asyncapi_document
from signwatch.events import InferenceEvent, PoisonMessage, ScreeningEvent, parse_event
from signwatch.model import ModelSpec
from signwatch.monitoring import Monitor, MonitorConfig, read_snapshot, registry
from signwatch.monitoring.checks import MIN_SCREENED, WindowCounts, adversarial_share
from signwatch.monitoring.screening_counts import ScreeningWindows
from signwatch.ports.bus_memory import MemoryBus
from signwatch.ports.state_memory import MemoryState
from signwatch.ports.store_file import FileStore
from signwatch.provision import topics
from signwatch.screening import ScreeningCalibration, stored
from tests.unit.helpers import Clock, inference_event

NAMES = ModelSpec().class_names
SHIPPED_VERSION = "resnet18-64px-seed0"


def _screening(event_id: str, flagged: bool, t: float, endpoint: str = "ep", fpr: float = 0.01) -> ScreeningEvent:
    when = datetime.fromtimestamp(t, timezone.utc)
    return ScreeningEvent(event_id=event_id, inference_time=when, time=when, endpoint=endpoint, variant="AllTraffic",
                          model_version="test", score=2.0 if flagged else 0.1, flagged=flagged, threshold=1.2,
                          fpr=fpr, squeezer="shift:1", signal="margin_drop", predicted_class=14, probability=0.9)


# -- the event and its topic ---------------------------------------------------------------------
def test_the_screening_event_round_trips_and_is_on_the_contract_and_provisioned():
    e = _screening("abc", True, 1_800_000_000.0)
    back = parse_event(e.to_bytes(), ScreeningEvent)
    assert back == e and json.loads(e.to_bytes())["schema"] == "signwatch.screening/v1"
    with pytest.raises(PoisonMessage):
        parse_event(e.to_bytes().replace(b'"fpr":0.01', b'"fpr":7.0'), ScreeningEvent)
    doc = asyncapi_document()
    assert doc["channels"]["screening"]["address"] == "signwatch.screening"
    assert "ScreeningEvent" in doc["components"]["messages"]
    s = Settings.model_construct()
    assert {"signwatch.screening", "signwatch.screening.dlq"} <= set(topics(Settings()))
    assert s.screening_topic == "signwatch.screening"


# -- the stored calibration ----------------------------------------------------------------------
def _calibration(version: str, threshold: float = 1.0) -> ScreeningCalibration:
    return ScreeningCalibration("margin_drop", ("shift:1", "down:2"), (0.0, 0.0), (1.0, 1.0), threshold, 0.01, 200,
                                model_version=version)


def test_the_calibration_is_read_from_the_baseline_prefix_for_its_model_else_the_shipped_one(tmp_path):
    store = FileStore(tmp_path)
    found, why = stored.load(store, "baselines/ep", "my-model")
    assert found is None and "no screening calibration at baselines/ep/screening.json" in why
    found, why = stored.load(store, "baselines/ep", SHIPPED_VERSION)  # the shipped model: the shipped file
    assert found.source == "shipped" and found.calibration.model_version == SHIPPED_VERSION
    stored.write_store(store, "baselines/ep", _calibration("my-model", 3.0))
    found, _ = stored.load(store, "baselines/ep", "my-model")
    assert (found.source, found.calibration.threshold, found.where) == ("store", 3.0, "baselines/ep/screening.json")
    found, why = stored.load(store, "baselines/ep", "another-model")
    assert found is None and "made for model my-model, not another-model" in why


def test_the_shipped_calibration_fits_the_shipped_model():
    cal = ScreeningCalibration.from_json(json.loads(stored.SHIPPED.read_text()))
    assert cal.model_version == SHIPPED_VERSION and cal.fpr == 0.01 and cal.reference_count >= 1000


# -- the explainer's screening loop --------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped():
    from signwatch.model import load_model

    return load_model()


def _loop(tmp_path, shipped, **settings):
    from signwatch_services.explainer.screening import build_screening_loop

    s = Settings(bus_url="memory://", store_url=tmp_path.as_uri(), state_url="memory://", endpoint="ep", **settings)
    bus, store = MemoryBus(f"screening-{tmp_path.name}"), FileStore(tmp_path)
    model, spec = shipped
    registry_ = CollectorRegistry()
    return build_screening_loop(s, bus, store, model, spec, registry_), bus, store, registry_, spec


def _rendered_events(spec, n: int, endpoint: str = "ep") -> list[InferenceEvent]:
    from signwatch.data.render import render_array
    from signwatch.imaging import encode_png
    from signwatch.publishing import make_input_payload

    images, _ = render_array(n, seed=5, split="test", size=spec.input_size, progress=False)
    return [inference_event(endpoint=endpoint).model_copy(update={
        "input": make_input_payload(encode_png(img), "image/png"), "model_version": spec.version})
        for img in images]


def _drain(bus, topic: str) -> list[bytes]:
    consumer = bus.consumer([topic], "reader")
    out, batch = [], consumer.poll(timeout_ms=50)
    while batch:
        out += [m.value for m in batch]
        batch = consumer.poll(timeout_ms=50)
    return out


def _events_counted(registry_, outcome: str) -> float:
    return registry_.get_sample_value("signwatch_screening_events_total", {"endpoint": "ep", "outcome": outcome}) or 0


def test_the_explainer_screens_inference_events_and_publishes_a_score_each_before_committing(tmp_path, shipped):
    loop, bus, store, registry_, spec = _loop(tmp_path, shipped)
    events = _rendered_events(spec, 6)
    for e in events:
        bus.publish("signwatch.inference", e.event_id, e.to_bytes())
    other = inference_event(endpoint="other")
    bus.publish("signwatch.inference", other.event_id, other.to_bytes())
    bus.publish("signwatch.inference", "x", b"not an event")
    loop.handler.batch_size = 4
    while loop.run_once():
        pass
    loop._commit()
    scores = [ScreeningEvent.model_validate_json(v) for v in _drain(bus, "signwatch.screening")]
    assert sorted(s.event_id for s in scores) == sorted(e.event_id for e in events)
    assert all(s.model_version == spec.version and s.fpr == 0.01 and s.squeezer in ("shift:1", "down:2")
               for s in scores)
    assert sum(s.flagged for s in scores) <= 1, "clean renders are (almost) never flagged"
    assert _events_counted(registry_, "screened") == 6 and _events_counted(registry_, "other_endpoint") == 1
    assert len(_drain(bus, "signwatch.inference.dlq")) == 1
    assert loop._uncommitted == []  # committed, after the scores were acknowledged


def test_a_sampled_share_is_screened_and_the_rest_counted(tmp_path, shipped):
    loop, bus, _, registry_, spec = _loop(tmp_path, shipped, screening_sample_rate=0.5)
    events = _rendered_events(spec, 20)
    for e in events:
        bus.publish("signwatch.inference", e.event_id, e.to_bytes())
    while loop.run_once():
        pass
    loop._commit()
    screened, out = _events_counted(registry_, "screened"), _events_counted(registry_, "sampled_out")
    assert screened + out == 20 and 3 <= screened <= 17
    assert len(_drain(bus, "signwatch.screening")) == screened


def test_without_a_calibration_for_the_served_model_nothing_is_screened_and_that_is_counted(tmp_path, shipped):
    model, spec = shipped
    loop, bus, _, registry_, _ = _loop(tmp_path, (model, replace(spec, version="someone-elses")))
    for e in _rendered_events(spec, 3):
        bus.publish("signwatch.inference", e.event_id, e.to_bytes())
    while loop.run_once():
        pass
    assert _events_counted(registry_, "no_calibration") == 3 and _drain(bus, "signwatch.screening") == []


def test_screening_off_builds_no_loop(tmp_path, shipped):
    loop, *_ = _loop(tmp_path, shipped, screening_enabled=False)
    assert loop is None


# -- the monitor's check -------------------------------------------------------------------------
def _window(screened: int, flagged: int, fpr: float = 0.01, kind: str = "time") -> WindowCounts:
    w = WindowCounts.empty(kind, 43, seconds=300)
    return WindowCounts(**{**w.__dict__, "screened": screened, "flagged": flagged, "flagged_expected": fpr * screened})


def test_the_share_check_is_a_binomial_test_against_the_calibrations_false_positive_rate():
    alpha = 1e-9
    assert not adversarial_share(_window(MIN_SCREENED - 1, MIN_SCREENED - 1), alpha).judged
    assert not adversarial_share(_window(200, 4), alpha).failing  # 2% at a 1% threshold: noise
    r = adversarial_share(_window(200, 25), alpha)  # 12.5%
    assert r.failing and r.p_value < alpha and r.threshold == pytest.approx(0.01) and r.count == 25
    # significant but a small effect (weather raises the rate a little): not an attack
    assert not adversarial_share(_window(100_000, 2_500), alpha).failing
    check = registry.get("adversarial_share")
    assert (check.kind, check.incident, check.needs) == ("screening", "attack", "nothing")
    assert check.budget_share > 0


def test_screening_counts_count_each_event_once_in_both_windows():
    clock = Clock()
    w = ScreeningWindows(MemoryState(clock=clock), "ep", window_s=300, bucket_s=10, count_n=50)
    events = [_screening(f"e{i}", i % 4 == 0, clock.t + i) for i in range(60)]
    assert sum(w.record_many(events)) == 60
    assert sum(w.record_many(events[:10])) == 0  # a replay counts nothing
    t = w.time_window(clock.t + 60)
    assert (t.screened, t.flagged, t.expected) == (60, 15, pytest.approx(0.6))
    c = w.count_window()
    assert (c.screened, c.flagged) == (50, sum(e.flagged for e in events[10:]))


def _monitor(tmp_path, clock):
    config = MonitorConfig(endpoint="ep", learn_baseline_s=0)
    return Monitor(MemoryState(clock=clock), FileStore(tmp_path), config, NAMES, clock=clock, wall_clock=clock)


def _step(monitor, clock, rng, attacked_share: float, i: int, detect: float = 0.95, clean_fpr: float = 0.005):
    """One request: its prediction (a clean-looking one), then its screening event."""
    clock.t += 1
    e = inference_event(class_id=int(rng.integers(0, 43)), probability=0.99,
                        time=datetime.fromtimestamp(clock.t, timezone.utc))
    out = monitor.observe(e)
    attacked = rng.random() < attacked_share
    flagged = rng.random() < (detect if attacked else clean_fpr)
    monitor.add_screening([_screening(e.event_id, flagged, clock.t)])
    return out + monitor.tick()


def test_a_tenth_attacked_after_an_hour_of_clean_traffic_is_one_attack_incident_within_requests(tmp_path):
    clock = Clock()
    monitor, rng = _monitor(tmp_path, clock), np.random.default_rng(7)
    for i in range(3600):  # an hour of clean traffic, one request a second
        assert not [v for v in _step(monitor, clock, rng, 0.0, i) if v.check_name == "adversarial_share"]
    raised, fired_after = [], None
    for i in range(600):
        out = [v for v in _step(monitor, clock, rng, 0.10, i) if v.check_name == "adversarial_share"]
        if out and fired_after is None:
            fired_after = i + 1
        raised += out
    [violation] = raised  # one incident, whatever the evaluations after
    assert violation.state == "open" and violation.checks == ["adversarial_share"]
    assert registry.get(violation.check_name).incident == "attack"
    # measured: 189 requests (seed 7): ~11 flagged of the window are needed at alpha ~2e-9 against 1%
    assert fired_after <= 250, fired_after
    snap = read_snapshot(monitor.state, "ep")
    assert snap["window"]["screened"] > 0 and any(i["group"] == "attack" for i in snap["incidents"])
    # clean again: the episode resolves
    resolved = []
    for i in range(1200):
        resolved += [v for v in _step(monitor, clock, rng, 0.0, i) if v.state == "resolved"]
    assert [v.violation_id for v in resolved] == [violation.violation_id]


def test_screening_alone_with_no_predictions_is_judged(tmp_path):
    clock = Clock()
    monitor = _monitor(tmp_path, clock)
    events = [_screening(f"e{i}", True, clock.t) for i in range(40)]
    assert monitor.add_screening(events) == 40 and monitor.add_screening(events) == 0
    clock.t += 2
    [v] = monitor.tick()
    assert v.check_name == "adversarial_share" and v.count == 40


def test_events_screened_in_inference_are_published_as_scored_with_no_forward(tmp_path, shipped, monkeypatch):
    from signwatch.events import INFERENCE_SCHEMA_SCREENED, InferenceScreening

    loop, bus, _, registry_, spec = _loop(tmp_path, shipped, screening_sample_rate=0.0)  # sampling skips none of these
    forwards = []
    original = loop.handler.screener.screen
    monkeypatch.setattr(loop.handler.screener, "screen", lambda *a, **k: forwards.append(1) or original(*a, **k))
    events = [e.model_copy(update={"schema_": INFERENCE_SCHEMA_SCREENED, "screening": InferenceScreening(
        score=0.3 + i, flagged=False, threshold=1.2, fpr=0.01, squeezer="shift:1", signal="margin_drop")})
        for i, e in enumerate(_rendered_events(spec, 3))]
    for e in events:
        bus.publish("signwatch.inference", e.event_id, e.to_bytes())
    while loop.run_once():
        pass
    loop._commit()
    scores = {s.event_id: s for s in (ScreeningEvent.model_validate_json(v) for v in _drain(bus, "signwatch.screening"))}
    assert set(scores) == {e.event_id for e in events} and not forwards
    for e in events:
        assert (scores[e.event_id].score, scores[e.event_id].predicted_class) == (
            e.screening.score, e.output.predictions[0].class_id)
    assert _events_counted(registry_, "screened_in_inference") == 3 and _events_counted(registry_, "screened") == 0

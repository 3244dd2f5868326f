"""Baselines at the right time (issue 17): with none uploaded, the monitor learns one from the
endpoint's first traffic and takes it over once; the shipped baseline never judges class shares
unless asked. In-memory state, a local folder as the store, a simulated clock."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import numpy as np
import pytest

from signwatch.events import InferenceOutput, Prediction
from signwatch.model.core import load_spec
from signwatch.monitoring import Monitor, MonitorConfig, read_snapshot
from signwatch.monitoring import baseline as bl
from signwatch.monitoring.features import EDGES, N_BINS, features_of
from signwatch.monitoring.learning import learned
from signwatch.ports.state_memory import MemoryState
from signwatch.ports.store_file import FileStore
from tests.unit.helpers import inference_event

T0 = 1_800_000_000.0
SEVEN = tuple(f"sign-{i}" for i in range(7))
UNEVEN = np.array([0.34, 0.24, 0.16, 0.11, 0.08, 0.05, 0.02])  # most common under the over-prediction share
CLASS_CHECKS = {"class_drift_chi2", "class_drift_linf", "sequential_class"}
SHIPPED = bl.load(*bl.shipped_files(), n_classes=43)


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def _event(clock: Clock, class_id: int, p: float, n_classes: int):
    preds = [Prediction(class_id=class_id, label="x", probability=p),
             Prediction(class_id=(class_id + 1) % n_classes, label="y", probability=(1 - p) / 2)]
    e = inference_event(class_id=class_id, probability=p, endpoint="ep",
                        time=datetime.fromtimestamp(clock.t, timezone.utc))
    return e.model_copy(update={"output": InferenceOutput(predictions=preds, model_version="v1"),
                                "model_version": "v1"})


def _draw(rng, shares: np.ndarray) -> tuple[int, float]:
    """A class from ``shares`` and a top-1 confidence from the shipped baseline's own bins."""
    b = int(rng.choice(N_BINS, p=SHIPPED.confidence_counts / SHIPPED.confidence_counts.sum()))
    return int(rng.choice(len(shares), p=shares)), float(rng.uniform(EDGES[b], EDGES[b + 1]))


def _monitor(state, store, clock, names=SEVEN, **kw) -> Monitor:
    config = MonitorConfig(endpoint="ep", **{"learn_baseline_s": 300, "learn_baseline_min_count": 400} | kw)
    return Monitor(state, store, config, names, clock=clock, model_version="v1")


def _feed(monitors, clock, rng, shares, n, rate) -> list:
    """``n`` predictions at ``rate`` a second, dealt round-robin to the monitors (as partitions are)."""
    raised = []
    for i in range(n):
        clock.t += 1 / rate
        c, p = _draw(rng, shares)
        raised += monitors[i % len(monitors)].observe(_event(clock, c, p, len(shares)))
    for m in monitors:
        raised += m.tick(force=True)
    return raised


@pytest.mark.parametrize("rate,bound", [(1.0, "count"), (2.0, "time")])
def test_a_model_without_a_baseline_learns_one_raises_no_class_alarm_and_takes_it_over_once(tmp_path, rate, bound):
    clock, rng = Clock(), np.random.default_rng(7)
    state, store = MemoryState(clock=clock), FileStore(tmp_path)
    monitor = _monitor(state, store, clock)
    assert monitor.baseline_source == "none" and not monitor.judge_classes
    raised = _feed([monitor], clock, rng, UNEVEN, int(rate * 150), rate)  # 150 s: neither condition holds
    assert monitor.baseline_source == "none" and not store.exists("baselines/ep/statistics.json")
    status = read_snapshot(state, "ep")["baseline_status"]
    match = re.match(r"learning: (\d+) of 400 predictions, (\d+) s of 300 s \(no baseline at baselines/ep", status)
    assert match and int(rate * 148) <= int(match[1]) <= int(rate * 150) and 148 <= int(match[2]) <= 150, status
    # Learning ends when the second condition holds: 400 predictions at 1/s (count), 300 s at 2/s (time).
    due_at = T0 + (400 if bound == "count" else 300)
    while monitor.baseline_source != "learned" and clock.t < T0 + 1000:
        raised += _feed([monitor], clock, rng, UNEVEN, 1, rate)
    assert monitor.baseline_source == "learned" and monitor.judge_classes
    assert due_at <= clock.t <= due_at + 2, (bound, clock.t - T0)
    assert raised == [], [v.check.description for v in raised]  # no alarm of any kind while learning

    files = bl.read_store(store, "baselines/ep")
    assert files is not None and learned(files[0])
    baseline = bl.load(*files, n_classes=7)
    assert baseline.baseline_id == monitor.baseline.baseline_id and baseline.item_count == monitor.baseline.item_count
    assert baseline.item_count == 400 if bound == "count" else 600 <= baseline.item_count <= 602  # 300 s at 2/s
    assert np.abs(baseline.class_shares - UNEVEN).max() < 0.06 and baseline.model == {"version": "v1", "num_classes": 7}
    [event] = monitor.take_baseline_events()
    assert (event.baseline_id, event.item_count, event.previous) == (baseline.baseline_id, baseline.item_count, "none")
    assert event.statistics == "baselines/ep/statistics.json" and event.learned_from.timestamp() == T0 + 1 / rate
    assert monitor.take_baseline_events() == [], "one event"
    assert state.outbox(monitor.baseline_outbox.key), "in the outbox until the bus acknowledged it"
    monitor.baseline_published(event)
    assert not state.outbox(monitor.baseline_outbox.key)
    assert read_snapshot(state, "ep")["baseline_status"] == "loaded"

    # The learned baseline judges the same mix without an alarm, class checks included.
    raised = _feed([monitor], clock, rng, UNEVEN, 400, rate)
    assert raised == [], [v.check.description for v in raised]
    assert "class_drift_chi2" in {r.name for r in monitor.last.results}
    assert monitor.take_baseline_events() == []


def test_two_replicas_take_the_learned_baseline_over_once(tmp_path):
    clock, rng = Clock(), np.random.default_rng(8)
    state, store = MemoryState(clock=clock), FileStore(tmp_path)
    a, b = _monitor(state, store, clock), _monitor(state, store, clock)
    raised = _feed([a, b], clock, rng, UNEVEN, 600, 1.0)
    events = a.take_baseline_events() + b.take_baseline_events()
    assert len(events) == 1 and events[0].item_count >= 400, "one replica claims, from the counts of both"
    raised += _feed([a, b], clock, rng, UNEVEN, 60, 1.0)  # past the loser's baseline reload
    assert a.baseline_source == b.baseline_source == "learned"
    assert a.baseline.baseline_id == b.baseline.baseline_id == events[0].baseline_id
    assert a.take_baseline_events() + b.take_baseline_events() == []
    assert raised == [], [v.check.description for v in raised]


def test_a_learning_run_is_claimed_once_and_a_dead_claimers_event_and_files_are_recovered(tmp_path):
    clock, rng = Clock(), np.random.default_rng(9)
    state, store = MemoryState(clock=clock), FileStore(tmp_path)
    a, b = _monitor(state, store, clock, learn_baseline_s=10, learn_baseline_min_count=100), None
    for _ in range(120):
        clock.t += 1
        c, p = _draw(rng, UNEVEN)
        a.windows.record_many([(e := _event(clock, c, p, 7), features_of(e.output.predictions))])
        a._learn([(e, features_of(e.output.predictions))])
    progress = a.learning.progress()
    assert progress.total == 120 and a.learning.due(progress, clock.t)
    files = a.learning.files(progress, clock.t, "v1")
    from signwatch.events import BaselineEvent

    event = BaselineEvent(endpoint="ep", variant="AllTraffic", num_classes=7, baseline_id=bl.baseline_id(*files),
                          item_count=120, learned_from=datetime.fromtimestamp(T0, timezone.utc),
                          learned_to=datetime.fromtimestamp(clock.t, timezone.utc),
                          statistics="baselines/ep/statistics.json", constraints="baselines/ep/constraints.json",
                          previous="none")
    assert a.learning.claim(a.baseline_outbox, event, files, progress.first_ts)
    assert not a.learning.claim(a.baseline_outbox, event, files, progress.first_ts), "claimed once"
    assert a.learning.progress().total == 0, "the counts went with the claim"
    # The claimer dies here, before writing the files or publishing. Another replica's sweep:
    b = _monitor(state, store, clock, learn_baseline_s=10, learn_baseline_min_count=100)
    assert b.unpublished_baseline_events() == [], "the claimer's lease still runs"
    clock.t += 16
    [again] = b.unpublished_baseline_events()
    assert again == event and bl.baseline_id(*bl.read_store(store, "baselines/ep")) == event.baseline_id
    assert b.unpublished_baseline_events() == [], "this sweeper holds the lease now"
    b.baseline_published(again)
    clock.t += 16
    assert b.unpublished_baseline_events() == []


@pytest.mark.parametrize("class_checks", [False, True])
def test_the_shipped_baseline_never_judges_class_shares_unless_asked(tmp_path, class_checks):
    clock, rng = Clock(), np.random.default_rng(10)
    state, store = MemoryState(clock=clock), FileStore(tmp_path)
    shares = np.linspace(1, 12, 43)[np.random.default_rng(1).permutation(43)]  # uneven, like GTSRB's
    shares /= shares.sum()
    monitor = _monitor(state, store, clock, names=load_spec().class_names, learn_baseline_s=0,
                       shipped_class_checks=class_checks)
    assert monitor.baseline_source == "shipped" and monitor.judge_classes is class_checks
    assert not store.exists("baselines/ep/statistics.json"), "the shipped baseline is not written to the store"
    raised = _feed([monitor], clock, rng, shares, 600, 1.0)
    class_alarms = [v for v in raised if v.check_name in CLASS_CHECKS]
    assert bool(class_alarms) is class_checks, [v.check.description for v in raised]
    assert [v for v in raised if v not in class_alarms] == [], "confidence and margin match the shipped baseline"
    assert read_snapshot(state, "ep")["baseline_status"].startswith("shipped: no baseline at baselines/ep")


def test_the_shipped_baseline_judges_while_learning_and_the_learned_one_replaces_it(tmp_path):
    clock, rng = Clock(), np.random.default_rng(11)
    state, store = MemoryState(clock=clock), FileStore(tmp_path)
    bl.write_store(store, "baselines/ep", *bl.shipped_files())  # as earlier versions did at first start
    shares = np.linspace(1, 12, 43)
    shares /= shares.sum()
    monitor = _monitor(state, store, clock, names=load_spec().class_names)
    assert monitor.baseline_source == "shipped" and not monitor.judge_classes
    raised = _feed([monitor], clock, rng, shares, 450, 1.0)
    assert monitor.baseline_source == "learned" and monitor.judge_classes and raised == []
    [event] = monitor.take_baseline_events()
    assert event.previous == "shipped" and event.previous_baseline_id == SHIPPED.baseline_id
    assert bl.baseline_id(*bl.read_store(store, "baselines/ep")) == event.baseline_id, "replaced the shipped one"
    # another model than the shipped one ("v1"): the shipped calibration is not carried over
    assert monitor.baseline.bin_accuracy is None and monitor.baseline.atc_bin is None


def test_a_learned_baseline_of_the_shipped_model_keeps_its_estimate_calibrated(tmp_path):
    clock, rng = Clock(), np.random.default_rng(12)
    state, store = MemoryState(clock=clock), FileStore(tmp_path)
    spec = load_spec()
    config = MonitorConfig(endpoint="ep", learn_baseline_s=300, learn_baseline_min_count=400)
    monitor = Monitor(state, store, config, spec.class_names, clock=clock, model_version=spec.version)
    assert monitor.baseline_source == "shipped" and SHIPPED.bin_accuracy is not None
    shares = np.full(len(spec.class_names), 1 / len(spec.class_names))
    for _ in range(450):  # the shipped model's predictions, a second apart
        clock.t += 1
        e = _event(clock, *_draw(rng, shares), len(shares))
        monitor.observe(e.model_copy(update={"model_version": spec.version}))
    monitor.tick(force=True)
    assert monitor.baseline_source == "learned"
    assert np.allclose(monitor.baseline.bin_accuracy, SHIPPED.bin_accuracy, atol=1e-6)
    assert monitor.baseline.atc_bin == SHIPPED.atc_bin


def test_an_uploaded_baseline_is_used_and_nothing_is_learned(tmp_path):
    clock, rng = Clock(), np.random.default_rng(12)
    state, store = MemoryState(clock=clock), FileStore(tmp_path)
    feats = [features_of([{"class_id": int(c), "probability": 0.95}]) for c in rng.choice(7, 500, p=UNEVEN)]
    bl.write_store(store, "baselines/ep", *bl.suggest(feats, 7, model_version="v1"))
    monitor = _monitor(state, store, clock, learn_baseline_s=10, learn_baseline_min_count=100)
    assert monitor.baseline_source == "store" and monitor.judge_classes and monitor.baseline_status == "loaded"
    _feed([monitor], clock, rng, UNEVEN, 200, 1.0)
    assert state.get_counts([monitor.learning.key]) == [{}] and monitor.take_baseline_events() == []
    assert monitor.baseline_source == "store" and read_snapshot(state, "ep")["baseline_status"] == "loaded"


def test_counts_make_the_same_baseline_as_the_predictions_they_count():
    rng = np.random.default_rng(13)
    feats = [features_of([{"class_id": int(c), "probability": float(p)}, {"class_id": (int(c) + 1) % 7,
                          "probability": float((1 - p) / 2)}])
             for c, p in zip(rng.choice(7, 800, p=UNEVEN), rng.uniform(0.2, 1.0, 800))]
    stats, cons = bl.suggest(feats, 7, model_version="v1")
    counted = bl.suggest_from_counts(
        np.bincount([f.class_id for f in feats], minlength=7), np.bincount([f.confidence_bin for f in feats],
                                                                           minlength=N_BINS),
        np.bincount([f.margin_bin for f in feats], minlength=N_BINS), sum(f.low_confidence for f in feats),
        model_version="v1", confidence_sums=(sum(f.confidence for f in feats), sum(f.confidence ** 2 for f in feats)))
    a, b = bl.load(stats, cons, 7), bl.load(*counted, 7)
    assert counted[1] == cons and counted[0]["dataset"] == stats["dataset"]
    for name in ("class_counts", "confidence_counts", "margin_counts"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.low_confidence_count == b.low_confidence_count and b.mean_confidence == pytest.approx(a.mean_confidence)
    conf = counted[0]["features"][1]["numerical_statistics"]
    assert conf["std_dev"] == pytest.approx(stats["features"][1]["numerical_statistics"]["std_dev"], rel=1e-6)
    sketch = conf["distribution"]["kll"]["sketch"]["data"][0]
    assert sketch == sorted(sketch) and conf["min"] <= sketch[0] and sketch[-1] <= conf["max"]

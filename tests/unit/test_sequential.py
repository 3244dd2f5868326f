"""The sequential checks (signwatch.monitoring.sequential): valid e-values, the false-alarm bound
on clean streams, detection near the information limit, at 0.05 requests a second too, and
agreement with closed forms computed by scipy."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
from scipy import special, stats

from signwatch.data.classes import GTSRB_TRAIN_COUNTS, STOP
from signwatch.monitoring import baseline as bl
from signwatch.monitoring.registry import alpha_per_test
from signwatch.monitoring.features import Features
from signwatch.monitoring.sequential import (
    SEQUENTIAL_CHECKS, SequentialChecks, SequentialTest, log_threshold, lower_tails, singletons, smoothed_shares,
    upper_bounds,
)

MIX = np.array(GTSRB_TRAIN_COUNTS, dtype=float)
P0 = smoothed_shares(MIX)


def _draw(rng, class_id: int | None = None) -> Features:
    """One clean prediction: GTSRB's class mix, confidences mostly near 1 (a good classifier's)."""
    c = int(rng.choice(43, p=MIX / MIX.sum())) if class_id is None else class_id
    conf = float(rng.uniform(0.2, 0.5)) if rng.random() < 0.02 else 1 - 10 ** float(rng.uniform(-5, -0.3))
    second = (1 - conf) * float(rng.uniform(0.3, 1.0))
    return Features(c, conf, conf - second, conf < 0.5 and second < 0.5)


def _baseline(seed: int = 99, n: int = 4300) -> bl.Baseline:
    """A baseline suggested from clean traffic (the streams below are drawn like it)."""
    rng = np.random.default_rng(seed)
    return bl.load(*bl.suggest([_draw(rng) for _ in range(n)], n_classes=43), n_classes=43)


def test_every_alternative_is_an_e_value_under_the_baseline():
    """E[e | past] = 1 under p0 for every member, whatever the plug-ins learned: the whole proof."""
    rng = np.random.default_rng(0)
    tails = (smoothed_shares(rng.integers(0, 50, 30)), lower_tails(30), True)  # with the pooled tails
    for p0, sets, pool in ((P0, singletons(43), False), tails):
        exact = SequentialTest("t", "f", p0, log_threshold=1e9, sets=sets, pool_sets=pool)
        tolerant = SequentialTest("t", "f", p0, log_threshold=1e9, sets=sets, baseline_items=3600, pool_sets=pool)
        for x in rng.integers(0, len(p0), 40):
            exact.update(int(x), start=True)
            tolerant.update(int(x), start=True)
            np.testing.assert_allclose(p0 @ exact.e_values(), 1.0, rtol=1e-12)
            # judged against the baseline's upper bounds: at most 1 (the baseline's sampling error)
            assert (p0 @ tolerant.e_values() <= 1 + 1e-12).all()
            # ... also for traffic a little off the baseline, within every bound
            off = 0.999 * p0 + 0.001 * np.eye(len(p0))[int(x)]
            assert (off <= tolerant.p_hi).all() and (off @ tolerant.e_values() <= 1 + 1e-12).all()


def test_the_false_alarm_bound_holds_on_clean_streams():
    """One start (a test martingale): P(sup S >= 1/alpha) <= alpha by Ville's inequality; a start
    every event (Shiryaev-Roberts): E[alarms] <= starts / A."""
    rng = np.random.default_rng(1)
    alpha, streams, n = 0.05, 300, 300
    crossed = 0
    for _ in range(streams):
        t = SequentialTest("t", "f", P0, log_threshold=math.log(1 / alpha))
        for i, x in enumerate(rng.choice(43, size=n, p=P0)):
            t.update(int(x), start=i == 0)
            if t.alarmed:
                crossed += 1
                break
    assert crossed / streams <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / streams)

    a, n, runs = 100.0, 2000, 10
    alarms = 0
    for _ in range(runs):
        t = SequentialTest("t", "f", P0, log_threshold=math.log(a))
        for x in rng.choice(43, size=n, p=P0):
            t.update(int(x), start=True)
            alarms += t.take()[0]
    assert alarms / runs <= n / a  # the bound, in expectation; clean streams stay far below it


def test_the_set_members_are_binomial_likelihood_ratios():
    rng = np.random.default_rng(2)
    p0 = smoothed_shares(rng.integers(1, 40, 30))
    t = SequentialTest("t", "f", p0, log_threshold=1e9, sets=lower_tails(30))
    xs = rng.choice(30, size=200, p=p0)
    for i, x in enumerate(xs):
        t.update(int(x), start=i == 0)
    for j in (0, 5, 28):
        p_b = p0[: j + 1].sum()
        k = int((xs <= j).sum())
        for e, eps in enumerate((0.03, 0.1, 0.3, 0.9)):
            q = (1 - eps) * p_b + eps
            expected = stats.binom.logpmf(k, len(xs), q) - stats.binom.logpmf(k, len(xs), p_b)
            assert t.log_r_fixed[j * 4 + e] == pytest.approx(expected, rel=1e-9)


def test_a_plug_in_that_never_forgets_is_the_dirichlet_mixture_likelihood_ratio():
    rng = np.random.default_rng(3)
    w = 2.0
    t = SequentialTest("t", "f", P0, log_threshold=1e9, half_lives=(1e18,), prior_weight=w)
    xs = rng.choice(43, size=300, p=np.roll(P0, 5))  # not the baseline: the ratio grows
    for i, x in enumerate(xs):
        t.update(int(x), start=i == 0)
    n_x = np.bincount(xs, minlength=43)
    a = w * P0
    dirichlet_multinomial = special.gammaln(w) - special.gammaln(w + len(xs)) + (
        special.gammaln(a + n_x) - special.gammaln(a)).sum()
    assert t.log_r[0] == pytest.approx(dirichlet_multinomial - (n_x * np.log(P0)).sum(), rel=1e-9)


def _events_to_detect(seed: int, step_s: float) -> int:
    rng = np.random.default_rng(seed)
    b = _baseline()
    checks = SequentialChecks(b)
    ts = 1_800_000_000.0
    for _ in range(600):  # clean traffic first
        ts += step_s
        checks.update(_draw(rng), ts)
    assert not any(r.failing for r in checks.results())
    for n in range(1, 200):
        ts += step_s
        checks.update(_draw(rng, STOP if rng.random() < 0.96 else None), ts)
        if checks.alarms:
            assert "sequential_class" in checks.alarms
            return n
    return 10**9


def _attack_limit() -> float:
    q = 0.96 * np.eye(43)[STOP] + 0.04 * P0
    return math.log(1 / alpha_per_test(0.01)) / float((q * np.log(q / P0)).sum())


def test_a_full_attack_is_found_within_twice_the_information_limit():
    limit = _attack_limit()
    assert 4 < limit < 6  # ~5 requests, as the issue computed
    assert log_threshold(0.01) <= math.log(1 / alpha_per_test(0.01))
    found = [_events_to_detect(seed, 1.0) for seed in range(5)]
    assert max(found) <= 2 * limit, found


def test_at_one_request_every_20_seconds_no_window_needs_to_fill():
    limit = _attack_limit()
    found = [_events_to_detect(seed, 20.0) for seed in range(3)]
    assert max(found) <= 2 * limit, found  # ~3 minutes: the 5-minute window would hold 15 predictions


def test_the_state_round_trips_through_json_and_belongs_to_its_baseline():
    rng = np.random.default_rng(5)
    b = _baseline()
    a = SequentialChecks(b)
    for i in range(50):
        a.update(_draw(rng, STOP if i > 40 else None), 1_800_000_000.0 + i)
    saved = json.loads(json.dumps(a.to_state()))
    c, d = SequentialChecks(b), SequentialChecks(b)
    assert c.load_state(saved, evidence=True) and d.load_state(saved)
    # the monitor takes a saved state without its evidence (another replica's R never counts twice)
    assert np.allclose(d.tests["sequential_class"].counts, c.tests["sequential_class"].counts)
    assert d.tests["sequential_class"].statistic == -math.inf < c.tests["sequential_class"].statistic
    f = _draw(rng, STOP)
    assert a.update(f, 1_800_000_100.0) == pytest.approx(c.update(f, 1_800_000_100.0))
    other = SequentialChecks(_baseline(seed=100))
    assert not other.load_state(saved)  # a new baseline starts afresh
    assert {r.name for r in a.results()} == {c.name for c in SEQUENTIAL_CHECKS}


def test_the_monitor_raises_a_sequential_violation_at_one_request_every_20_seconds(tmp_path):
    """Behind ``sequential=True`` (``SIGNWATCH_MONITOR_SEQUENTIAL``): an attack at 0.05 requests a
    second is flagged within a few predictions, long before a window could hold 100."""
    from datetime import datetime, timezone

    from signwatch.events import InferenceOutput, Prediction
    from signwatch.model import ModelSpec
    from signwatch.monitoring import Monitor, MonitorConfig, read_snapshot
    from signwatch.ports.state_memory import MemoryState
    from signwatch.ports.store_file import FileStore
    from tests.unit.helpers import inference_event

    class Clock:
        t = 1_800_000_000.0

        def __call__(self) -> float:
            return self.t

    clock, rng = Clock(), np.random.default_rng(6)
    b = _baseline()
    state = MemoryState(clock=clock)
    m = Monitor(state, FileStore(tmp_path), MonitorConfig(endpoint="ep", sequential=True), ModelSpec().class_names,
                baseline=b, clock=clock)

    def send(f: Features) -> list:
        clock.t += 20
        preds = [Prediction(class_id=f.class_id, label="x", probability=f.confidence),
                 Prediction(class_id=(f.class_id + 1) % 43, label="y", probability=f.confidence - f.margin)]
        e = inference_event(class_id=f.class_id, probability=f.confidence, endpoint="ep",
                            time=datetime.fromtimestamp(clock.t, timezone.utc))
        return m.observe(e.model_copy(update={"output": InferenceOutput(predictions=preds, model_version="t")}))

    assert not [v for _ in range(60) for v in send(_draw(rng))]  # 20 minutes of clean traffic
    for n in range(1, 30):
        raised = send(Features(STOP, 0.99, 0.98, False))
        if raised:
            break
    assert [v.check_name for v in raised] == ["sequential_class"] and n <= 9, (n, raised)  # limit: 4.9
    assert raised[0].check.feature_name == "PredictedClass"
    snap = read_snapshot(state, "ep")
    assert any(e["check"] == "sequential_class" and e["state"] == "open" for e in snap["incidents"])
    assert snap["sequential"]["sequential_class"] is not None


def test_the_budget_is_split_by_declared_shares_that_sum_to_one():
    assert sum(c.budget_share for c in SEQUENTIAL_CHECKS) == pytest.approx(1.0)
    checks = SequentialChecks(_baseline(), alpha_per_day=0.01)
    for c in SEQUENTIAL_CHECKS:  # A = starts a day / (share * alpha_per_day)
        assert checks.tests[c.name].log_threshold == pytest.approx(math.log(86_400 / (c.budget_share * 0.01)))
    assert log_threshold(0.01) == pytest.approx(math.log(4 * 86_400 / 0.01))  # an even split of four
    with pytest.raises(ValueError):
        SequentialChecks(_baseline(), shares={c.name: 0.5 for c in SEQUENTIAL_CHECKS})  # sums to 2


def test_the_pooled_tails_are_a_mean_of_the_set_members_e_values():
    """One pooled member multiplies R by the mean of the set members' e over the tails it pools."""
    rng = np.random.default_rng(7)
    p0 = smoothed_shares(rng.integers(1, 400, 30))
    t = SequentialTest("t", "f", p0, log_threshold=1e9, sets=lower_tails(30), baseline_items=3600, pool_sets=True)
    tails = lower_tails(30)
    share = tails.astype(float) @ p0
    pick = (share >= 0.005) & (share <= 0.5)
    bound = upper_bounds(share, 3600)
    e = t.e_values()[:, -4:]  # the pooled members, one per eps
    for j, eps in enumerate((0.05, 0.15, 0.4, 0.8)):
        np.testing.assert_allclose(e[:, j], 1 - eps + eps * (tails[pick].T / bound[pick]).mean(1), rtol=1e-12)
    # weights: a mixture (sum 1), the pooled family 0.8 of it
    w = np.exp(np.concatenate([np.full(len(t.half_lives), t.log_w_plugins), t.log_w_fixed]))
    assert w.sum() == pytest.approx(1.0) and np.exp(t.log_w_fixed[-4:]).sum() == pytest.approx(0.8)


def _weather(rng) -> Features:
    """Snow, roughly: the top-1 confidence spread over 0.2 .. 0.99, the class mix unchanged."""
    c = int(rng.choice(43, p=MIX / MIX.sum()))
    conf = float(rng.uniform(0.2, 0.99))
    second = (1 - conf) * float(rng.uniform(0.3, 1.0))
    return Features(c, conf, conf - second, conf < 0.5 and second < 0.5)


def test_weather_is_found_near_the_information_limit_by_the_pooled_confidence_tails():
    from signwatch.monitoring.features import N_BINS

    rng = np.random.default_rng(8)
    clean = np.bincount([_draw(rng).confidence_bin for _ in range(20_000)], minlength=N_BINS) + 0.5
    snow = np.bincount([_weather(rng).confidence_bin for _ in range(20_000)], minlength=N_BINS) + 0.5
    clean, snow = clean / clean.sum(), snow / snow.sum()
    limit = math.log(1 / alpha_per_test(0.01)) / float((snow * np.log(snow / clean)).sum())
    b = _baseline()
    found = []
    for seed in range(5):
        rng = np.random.default_rng(100 + seed)
        checks, ts = SequentialChecks(b), 1_800_000_000.0
        for _ in range(600):
            ts += 1
            checks.update(_draw(rng), ts)
        assert not checks.alarms
        for n in range(1, 200):
            ts += 1
            checks.update(_weather(rng), ts)
            if checks.alarms:
                assert "sequential_confidence" in checks.alarms
                found.append(n)
                break
    # pooled tails: median 13 for a limit of 10.4 (single tails only: 16, beyond 1.5x)
    assert len(found) == 5 and statistics.median(found) <= 1.5 * limit, (found, limit)

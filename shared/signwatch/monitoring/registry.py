"""Every check the monitor runs, declared once: what it reads, how it tests, what it may cost.

The streaming monitor, the scheduled job, the metrics and the dashboard look checks up here and
never spell a check's name out. One entry says:

- ``name``, ``feature`` (the baseline feature it reads, SageMaker's ``feature_name``) and
  ``check_type`` (SageMaker's ``constraint_check_type``);
- ``test``: how it decides, in words; ``kind``: ``"window"`` (a function of a window's counts,
  run on the time and the count window at each evaluation, and by the job on its batch) or
  ``"sequential"`` (evidence accumulated per prediction, ``signwatch.monitoring.sequential``) or
  ``"quality"`` (metrics of the labelled predictions, ``signwatch.monitoring.model_quality``) or
  ``"screening"`` (a function of the screening windows' counts, the explainer's adversarial scores,
  ``signwatch.monitoring.screening_counts``: run by the streaming monitor on both windows, never by
  the job, which reads captured records without scores);
- ``needs``: ``"nothing"``, ``"baseline"``, ``"class_baseline"`` (it judges class shares: it
  runs only against a baseline made from the endpoint's own traffic, see ``Monitor.judge_classes``),
  or ``"quality_constraints"`` (labels and a model-quality baseline: ``model_quality.py``);
- ``budget_share``: its share of the false-alarm budget ``alpha_per_day`` (0 for a fixed rule);
  the shares of the checks that run are renormalised to sum to 1, so the whole monitor, window
  and sequential checks together, expects at most ``alpha_per_day`` false alarms a day;
- ``samples``: which predictions a violation carries (``"class"``: of the class it names,
  ``"mover"``: of the class whose share rose most against the baseline (an attack's target, the
  class snowy signs are taken for), ``"unsure"``: the low-confidence ones, ``"mistaken"``: of the
  class the labels show the model answers most often wrongly, the misclassified ones first, ``"none"``);
- ``incident``: checks of one group that fail together are one incident (``incidents.py``);
- ``clear``: when its evidence is gone, well below the line it crossed (the incident's hysteresis).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from signwatch.monitoring import checks as c
from signwatch.monitoring.baseline import CONFIDENCE_FEATURE, MARGIN_FEATURE, Baseline, Thresholds
from signwatch.monitoring.checks import CheckResult, WindowCounts
from signwatch.monitoring.screening_sequential import SEQUENTIAL_PART as SCREENING_SEQUENTIAL_PART
from signwatch.monitoring.sequential import SEQUENTIAL_CHECKS

# "Well below the line": a test's p-value this far above its alpha (about 1e-9), or an effect at
# most half its threshold, counts as clear; a share rule clears under 80% of its threshold.
CLEAR_P_VALUE = 1e-3
CLEAR_EFFECT = 0.5
CLEAR_SHARE = 0.8
WINDOWS_PER_EVALUATION = 2  # the time and the count window
# The sequential checks take most of the budget: their threshold grows with log(1 / share), the
# window tests' alpha only with 1 / share inside a tail that falls as exp(-n), so 0.2 costs the
# windows about one prediction and the sequential checks' 0.8 saves them 1.4 nats against 0.5.
SEQUENTIAL_PART = 0.8


@dataclass(frozen=True)
class Context:
    """What a window check is judged against at one evaluation."""

    baseline: Baseline | None
    thresholds: Thresholds
    names: tuple[str, ...]
    alpha: Callable[[str], float]  # the check's alpha per test


@dataclass(frozen=True)
class Check:
    name: str
    feature: str
    check_type: str
    test: str
    kind: str          # "window" | "sequential" | "quality" | "screening"
    needs: str         # "nothing" | "baseline" | "class_baseline" | "quality_constraints"
    budget_share: float
    samples: str       # "class" | "mover" | "unsure" | "mistaken" | "none"
    incident: str      # "model" | "data" | "quality" | "attack"
    description: str
    clear: Callable[[CheckResult], bool]
    run: Callable[[WindowCounts, Context], CheckResult] | None = None  # window checks
    only_windows: tuple[str, ...] = ("time", "count", "batch")

    def is_clear(self, r: CheckResult) -> bool:
        """Its evidence is gone: not failing, and too few items to judge or well below its line."""
        return not r.failing and (not r.judged or self.clear(r))

    def runs(self, has_baseline: bool, judge_classes: bool) -> bool:
        return (self.needs == "nothing" or (has_baseline and (self.needs == "baseline" or judge_classes)))


def _p_clear(r: CheckResult) -> bool:
    """Clear when not significant any more (p well above alpha) or the effect halved."""
    if r.failing:
        return False
    if r.p_value is None or r.p_value >= CLEAR_P_VALUE:
        return True
    return r.threshold is not None and r.observed is not None and r.observed <= CLEAR_EFFECT * r.threshold


def _low_confidence_clear(r: CheckResult) -> bool:
    return not r.failing and (r.p_value is None or r.p_value >= CLEAR_P_VALUE)


def _share_clear(r: CheckResult) -> bool:
    return not r.failing and (r.observed is None or r.threshold is None or r.observed < CLEAR_SHARE * r.threshold)


def _completeness_clear(r: CheckResult) -> bool:
    # readable share at least halfway from the limit to 100%
    return not r.failing and (r.observed is None or r.threshold is None
                              or 1 - r.observed <= CLEAR_EFFECT * (1 - r.threshold))


def _adversarial_clear(r: CheckResult) -> bool:
    # the window view: p well above alpha; the sequential view (no p-value, log S against its
    # threshold): as a sequential check
    if r.failing:
        return False
    if r.p_value is None:
        return r.statistic is None or r.threshold is None or r.statistic < CLEAR_EFFECT * r.threshold
    return r.p_value >= CLEAR_P_VALUE


def _sequential_clear(r: CheckResult) -> bool:
    # no alarm since the evaluation before and the evidence under half the threshold (in logs)
    return not r.failing and (r.statistic is None or r.threshold is None or r.statistic < CLEAR_EFFECT * r.threshold)


WINDOW_CHECKS = (
    Check("over_prediction", c.CLASS_FEATURE, "baseline_drift_check",
          "one class's share of the window above a fixed share (the reference's rule)", "window", "nothing",
          0.0, "class", "model", "one class predicted far more often than any class should be",
          _share_clear, lambda w, x: c.over_prediction(w, x.thresholds, x.names)),
    Check("class_drift_chi2", c.CLASS_FEATURE, "baseline_drift_check",
          "chi-squared test of homogeneity, window against baseline class counts", "window", "class_baseline",
          0.04, "mover", "model", "the predicted-class distribution differs from the baseline's",
          _p_clear, lambda w, x: c.class_drift_chi2(w, x.baseline, x.alpha("class_drift_chi2"))),
    Check("class_drift_linf", c.CLASS_FEATURE, "baseline_drift_check",
          "L-infinity distance of the class shares above a threshold, and a binomial test of the class "
          "that moved most", "window", "class_baseline", 0.04, "class", "model",
          "one class's share moved far from its baseline share",
          _p_clear, lambda w, x: c.class_drift_linf(w, x.baseline, x.alpha("class_drift_linf"), x.names)),
    Check("low_confidence", CONFIDENCE_FEATURE, "baseline_drift_check",
          "one-sided binomial test of the share whose top three are all below the low-confidence line",
          "window", "baseline", 0.04, "unsure", "model", "more predictions than in the baseline are unsure",
          _low_confidence_clear, lambda w, x: c.low_confidence(w, x.baseline, x.alpha("low_confidence"))),
    Check("ks_confidence", CONFIDENCE_FEATURE, "baseline_drift_check",
          "two-sample Kolmogorov-Smirnov test of the binned top-1 confidence", "window", "baseline", 0.04, "mover",
          "model", "the top-1 confidence distribution differs from the baseline's",
          _p_clear, lambda w, x: c.ks_check(w, x.baseline, x.alpha("ks_confidence"), CONFIDENCE_FEATURE)),
    Check("ks_margin", MARGIN_FEATURE, "baseline_drift_check",
          "two-sample Kolmogorov-Smirnov test of the binned top-1 minus top-2 margin", "window", "baseline", 0.04,
          "mover", "model", "the margin distribution differs from the baseline's",
          _p_clear, lambda w, x: c.ks_check(w, x.baseline, x.alpha("ks_margin"), MARGIN_FEATURE)),
    # the count window holds only what was readable: completeness is judged on time windows and batches
    Check("completeness", "InferenceEvent", "completeness_check",
          "share of inference events that could be read, against a fixed share", "window", "nothing", 0.0, "none",
          "data", "events could not be read (not events, or classes the model lacks)",
          _completeness_clear, lambda w, x: c.completeness(w, x.thresholds), only_windows=("time", "batch")),
)

SEQUENTIAL = tuple(
    Check(s.name, s.feature, "baseline_drift_check",
          f"Shiryaev-Roberts e-detector on the {s.what}, one prediction at a time", "sequential",
          "class_baseline" if s.feature == c.CLASS_FEATURE else "baseline", SEQUENTIAL_PART * s.budget_share,
          "unsure" if s.name == "sequential_low_confidence" else "mover", "model",
          f"the {s.what} departs from the baseline (sequential evidence)", _sequential_clear)
    for s in SEQUENTIAL_CHECKS)

# Labels tell more than any drift: a quality incident is its own, beside the model's drift one.
QUALITY = (
    Check("model_quality", "ModelQuality", "LessThanThreshold",
          "SageMaker's multiclass metrics of the labelled predictions (accuracy, weighted precision, recall, "
          "F0.5, F1, F2) against the model-quality constraints, on the pairs matched in the quality window and "
          "the last N", "quality", "quality_constraints", 0.0, "mistaken", "quality",
          "a model-quality metric crossed its constraint", lambda r: not r.failing),
)

# Adversarial images are an attack on the endpoint, not the model's drift: their own incident.
SCREENING = (
    # Two views, one check and one budget share: a Shiryaev-Roberts e-detector on each screened
    # request's score tails against the endpoint's own history (screening_sequential.py, 0.8 of the
    # share, run by the monitor on the stream), and the windows' binomial test (0.2), which judges
    # before that history exists.
    Check("adversarial_share", c.ADVERSARIAL_FEATURE, "baseline_drift_check",
          "Shiryaev-Roberts e-detector on each screened request's score (above the threshold, twice, three "
          "times) against the tail shares of the endpoint's own history and weather's allowance; and a one-sided "
          "binomial test of the windows' flagged share against the screening threshold's false positive rate",
          "screening", "nothing", 0.04, "none", "attack",
          "more requests than clean traffic gives read as adversarial (the explainer's screening)",
          _adversarial_clear,
          lambda w, x: c.adversarial_share(w, x.alpha("adversarial_share") * (1 - SCREENING_SEQUENTIAL_PART)),
          only_windows=("time", "count")),
)

CHECKS: tuple[Check, ...] = WINDOW_CHECKS + SEQUENTIAL + QUALITY + SCREENING
BY_NAME = {check.name: check for check in CHECKS}
INCIDENTS = tuple(dict.fromkeys(check.incident for check in CHECKS))


def get(name: str) -> Check:
    return BY_NAME[name]


def running(kinds: tuple[str, ...], has_baseline: bool, judge_classes: bool = True) -> tuple[Check, ...]:
    """The checks of ``kinds`` that run with or without a baseline (and class judgement)."""
    return tuple(k for k in CHECKS if k.kind in kinds and k.runs(has_baseline, judge_classes))


def shares(kinds: tuple[str, ...]) -> dict[str, float]:
    """Each budgeted check's share of the day's budget among the checks of ``kinds`` (sum 1)."""
    total = sum(k.budget_share for k in CHECKS if k.kind in kinds)
    return {k.name: k.budget_share / total for k in CHECKS if k.kind in kinds and k.budget_share}


def alpha_for(name: str, alpha_per_day: float, tests_per_day: float, kinds: tuple[str, ...]) -> float:
    """The check's alpha per test: its share of ``alpha_per_day`` among the checks of ``kinds``,
    spread over ``tests_per_day`` tests (Bonferroni). Whatever the dependence between overlapping
    windows, the day's false alarms are then at most ``alpha_per_day`` (each sequential check
    keeps its share at any stopping time, docs/monitoring.md)."""
    return alpha_per_day * shares(kinds).get(name, 0.0) / max(tests_per_day, 1.0)


def run_checks(w: WindowCounts, baseline: Baseline | None, alpha: float | Callable[[str], float],
               names: tuple[str, ...], thresholds: Thresholds | None = None,
               judge_classes: bool = True) -> list[CheckResult]:
    """Every window check that runs on ``w``: without ``baseline`` only those that need none, with
    ``thresholds`` (default ``Thresholds()``). ``alpha``: one alpha per test for all, or a function
    of the check's name."""
    t = baseline.thresholds if baseline is not None else (thresholds or Thresholds())
    context = Context(baseline, t, names, alpha if callable(alpha) else (lambda name: alpha))
    return [k.run(w, context) for k in running(("window",), baseline is not None, judge_classes)
            if w.kind in k.only_windows]


def run_screening_checks(w: WindowCounts, alpha: Callable[[str], float]) -> list[CheckResult]:
    """The screening checks on ``w`` (its ``screened`` and ``flagged`` counts)."""
    context = Context(None, Thresholds(), (), alpha)
    return [k.run(w, context) for k in CHECKS if k.kind == "screening" and w.kind in k.only_windows]


def alpha_per_test(alpha_per_day: float, check_interval_s: float = 1.0) -> float:
    """A window test's alpha when the window checks run alone, evaluated every ``check_interval_s``
    (1.2e-8 by default: the benchmark's information limit is defined at this level)."""
    tests = WINDOWS_PER_EVALUATION * 86_400 / max(check_interval_s, 1e-3)
    budgeted = [k for k in CHECKS if k.kind == "window" and k.budget_share]
    return alpha_for(budgeted[0].name, alpha_per_day, tests, ("window",))

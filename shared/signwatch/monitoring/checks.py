"""The window checks, each a pure function of a window's counts and the baseline.

Which checks run, their share of the false-alarm budget and their alpha per test are declared in
``signwatch.monitoring.registry`` (with the proof of the daily bound). Every test also needs a
minimum sample size and, where SageMaker defines one, an effect size above its threshold
(distance > ``comparison_threshold``): a huge window never flags a difference too small to matter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from signwatch.monitoring import estimate
from signwatch.monitoring.baseline import CLASS_FEATURE, CONFIDENCE_FEATURE, MARGIN_FEATURE, Baseline, Thresholds
from signwatch.monitoring.features import N_BINS


@dataclass(frozen=True)
class WindowCounts:
    kind: str                        # "time" | "count" | "batch"
    total: int
    class_counts: np.ndarray         # (n_classes,)
    confidence_counts: np.ndarray    # (N_BINS,)
    margin_counts: np.ndarray        # (N_BINS,)
    low_confidence: int
    confidence_sum: float
    unreadable: int = 0
    seconds: int | None = None
    size: int | None = None
    # predictions of class ids the current model does not have, counted under a previous model
    # with more classes: left out of ``total`` and the class counts until they leave the window
    other_classes: int = 0
    # screened inference events of the window (the explainer's ScreeningEvents, screening_counts.py),
    # how many were flagged, and how many clean traffic would flag (the sum of their fpr)
    screened: int = 0
    flagged: int = 0
    flagged_expected: float = 0.0

    @classmethod
    def empty(cls, kind: str, n_classes: int, **kw) -> "WindowCounts":
        return cls(kind, 0, np.zeros(n_classes), np.zeros(N_BINS), np.zeros(N_BINS), 0, 0.0, **kw)

    @property
    def low_confidence_share(self) -> float:
        return self.low_confidence / self.total if self.total else 0.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    feature: str
    check_type: str           # SageMaker's constraint_check_type
    window: str
    n: int
    failing: bool
    observed: float | None = None
    statistic: float | None = None
    p_value: float | None = None
    threshold: float | None = None
    class_id: int | None = None
    count: int = 0
    description: str = ""
    # False when the window held fewer items than the check needs to judge: no evidence either way
    # (an incident's hysteresis counts such a result as clear, whatever its share of 2 predictions)
    judged: bool = True


# scipy.special's tails directly: the scipy.stats wrappers cost ~100 us a call (measured), which
# was most of an evaluation.
def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if p >= 1.0:
        return 1.0
    return float(special.bdtrc(k - 1, n, p))


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k)."""
    return 1.0 if k >= n or p <= 0.0 else float(special.bdtr(k, n, p))


def _upper(p: float, m: int, z: float = 3.0) -> float:
    """A one-sided upper bound of a baseline share estimated from m items (its own noise)."""
    return min(1.0, p + z * math.sqrt(max(p * (1 - p), 0.25 / m) / m) + 0.5 / m)


def _lower(p: float, m: int, z: float = 3.0) -> float:
    return max(0.0, p - z * math.sqrt(max(p * (1 - p), 0.25 / m) / m) - 0.5 / m)


def over_prediction(w: WindowCounts, t: Thresholds, names: tuple[str, ...]) -> CheckResult:
    c = int(np.argmax(w.class_counts)) if w.total else 0
    count = int(w.class_counts[c]) if w.total else 0
    share = count / w.total if w.total else 0.0
    failing = w.total >= t.min_over_prediction and share > t.over_prediction_share
    label = names[c] if 0 <= c < len(names) else "unknown"
    return CheckResult("over_prediction", CLASS_FEATURE, "baseline_drift_check", w.kind, w.total, failing,
                       observed=share, statistic=share, threshold=t.over_prediction_share, class_id=c,
                       count=count, judged=w.total >= t.min_over_prediction, description=(f"Class {c} ({label}) predicted {share:.2%} of the time: "
                                                 f"exceeded {t.over_prediction_share:.2%} threshold"))


def class_drift_chi2(w: WindowCounts, b: Baseline, alpha: float) -> CheckResult:
    """Two-sample chi-squared test of homogeneity (window vs baseline class counts), cells
    with fewer than 5 expected window counts pooled so that the chi-squared tail holds. The
    pooling looks at the baseline only: pooling by the window's own counts would keep a class
    apart exactly when it happens to be high, and the test would cry wolf (measured: one false
    alarm in 24 simulated hours)."""
    n, m = w.total, b.item_count
    if n < b.thresholds.min_drift:
        return CheckResult("class_drift_chi2", CLASS_FEATURE, "baseline_drift_check", w.kind, n, False, judged=False)
    wc, bc = w.class_counts.astype(float), b.class_counts.astype(float)
    expected = bc * n / m
    small = expected < 5
    if small.any():
        wc = np.append(wc[~small], wc[small].sum())
        bc = np.append(bc[~small], bc[small].sum())
    keep = (wc + bc) > 0
    wc, bc = wc[keep], bc[keep]
    if len(wc) < 2:  # every cell pooled into one: too few predictions for the chi-squared tail
        return CheckResult("class_drift_chi2", CLASS_FEATURE, "baseline_drift_check", w.kind, n, False, judged=False)
    table = np.vstack([wc, bc])
    exp = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = float(((table - exp) ** 2 / exp).sum())
    p = float(special.chdtrc(len(wc) - 1, chi2))
    return CheckResult("class_drift_chi2", CLASS_FEATURE, "baseline_drift_check", w.kind, n, p < alpha,
                       observed=chi2, statistic=chi2, p_value=p, threshold=alpha,
                       description=(f"Predicted-class distribution differs from the baseline: chi-squared "
                                    f"{chi2:.1f} on {len(wc) - 1} df, p={p:.2e} below {alpha:.1e}"))


def class_drift_linf(w: WindowCounts, b: Baseline, alpha: float, names: tuple[str, ...]) -> CheckResult:
    """SageMaker's categorical drift: L-infinity distance of the class shares above
    ``categorical_comparison_threshold``, and significant (binomial test of the class that
    moved most, Bonferroni over the classes)."""
    n, m, t = w.total, b.item_count, b.thresholds
    if n < t.min_drift:
        return CheckResult("class_drift_linf", CLASS_FEATURE, "baseline_drift_check", w.kind, n, False, judged=False)
    diff = w.class_counts / n - b.class_shares
    c = int(np.argmax(np.abs(diff)))
    d, k, p0 = float(abs(diff[c])), int(w.class_counts[c]), float(b.class_shares[c])
    p = binom_sf(k, n, _upper(p0, m)) if diff[c] > 0 else binom_cdf(k, n, _lower(p0, m))
    p = min(1.0, p * len(diff))
    limit = t.categorical_comparison_threshold
    label = names[c] if 0 <= c < len(names) else "unknown"
    return CheckResult("class_drift_linf", CLASS_FEATURE, "baseline_drift_check", w.kind, n,
                       d > limit and p < alpha, observed=d, statistic=d, p_value=p, threshold=limit,
                       class_id=c, count=k,
                       description=(f"Class shares moved by {d:.2%} (L-infinity, class {c} ({label}): "
                                    f"{k / n:.2%} against {p0:.2%} in the baseline): exceeded {limit:.2%} "
                                    f"threshold, p={p:.2e}"))


def low_confidence(w: WindowCounts, b: Baseline, alpha: float) -> CheckResult:
    """One-sided binomial test of the share whose top three are all below ``low_confidence``."""
    n, t = w.total, b.thresholds
    if n < t.min_drift:
        return CheckResult("low_confidence", CONFIDENCE_FEATURE, "baseline_drift_check", w.kind, n, False, judged=False)
    base = b.low_confidence_share
    share = w.low_confidence / n
    p = binom_sf(w.low_confidence, n, _upper(base, b.item_count))
    failing = p < alpha and share > base + t.low_confidence_min_increase
    return CheckResult("low_confidence", CONFIDENCE_FEATURE, "baseline_drift_check", w.kind, n, failing,
                       observed=share, statistic=share, p_value=p, threshold=base + t.low_confidence_min_increase,
                       count=w.low_confidence,
                       description=(f"Top-3 confidences all below {t.low_confidence:.2f} for {share:.2%} of "
                                    f"predictions against {base:.2%} in the baseline, p={p:.2e}"))


def ks_distance(window: np.ndarray, baseline: np.ndarray) -> float:
    n, m = window.sum(), baseline.sum()
    return float(np.max(np.abs(np.cumsum(window) / n - np.cumsum(baseline) / m)))


def ks_p_value(d: float, n: int, m: int) -> float:
    """Asymptotic two-sample Kolmogorov-Smirnov p-value (Stephens' small-sample correction)."""
    ne = n * m / (n + m)
    return float(special.kolmogorov((math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d))


def ks_check(w: WindowCounts, b: Baseline, alpha: float, feature: str) -> CheckResult:
    """Two-sample KS test of the binned confidence (or margin) against the baseline's: the
    black-box shift detector on softmax outputs that Rabanser et al. (2019) found best."""
    name = "ks_confidence" if feature == CONFIDENCE_FEATURE else "ks_margin"
    n, t = w.total, b.thresholds
    if n < t.min_drift:
        return CheckResult(name, feature, "baseline_drift_check", w.kind, n, False, judged=False)
    window = w.confidence_counts if feature == CONFIDENCE_FEATURE else w.margin_counts
    base = b.confidence_counts if feature == CONFIDENCE_FEATURE else b.margin_counts
    d = ks_distance(window, base)
    p = ks_p_value(d, n, b.item_count)
    limit = t.comparison_threshold
    return CheckResult(name, feature, "baseline_drift_check", w.kind, n, d > limit and p < alpha,
                       observed=d, statistic=d, p_value=p, threshold=limit,
                       description=(f"{feature} distribution differs from the baseline: KS distance {d:.3f} "
                                    f"exceeded {limit:.3f} threshold, p={p:.2e}"))


def completeness(w: WindowCounts, t: Thresholds) -> CheckResult:
    seen = w.total + w.unreadable
    share = w.total / seen if seen else 1.0
    limit = t.completeness
    failing = w.unreadable > 0 and seen >= t.min_over_prediction and share < limit
    return CheckResult("completeness", "InferenceEvent", "completeness_check", w.kind, seen, failing,
                       observed=share, statistic=share, threshold=limit, count=w.unreadable,
                       judged=seen >= t.min_over_prediction,
                       description=(f"{w.unreadable} of {seen} inference events could not be read "
                                    f"({share:.2%} complete, below {limit:.2%})"))


def estimated_accuracy(w: WindowCounts, b: Baseline | None) -> float | None:
    """Label-free accuracy (``estimate``): binned calibration when the baseline holds its table,
    else ATC (share above the baseline's threshold) when the baseline had labels, else the average
    confidence. See docs/monitoring.md, "Which accuracy estimate ships", for how far off each is."""
    if not w.total:
        return None
    if b is not None:
        found = estimate.from_bins(w.confidence_counts, b.bin_accuracy, b.atc_bin)
        if found is not None:
            return found
    return estimate.average_confidence(w.confidence_counts, w.confidence_sum)


ADVERSARIAL_FEATURE = "AdversarialScore"
MIN_SCREENED = 20               # screened events a window needs before the flagged share is judged
MIN_FLAGGED_INCREASE = 0.02     # effect size on top of significance, as low_confidence's


def adversarial_share(w: WindowCounts, alpha: float) -> CheckResult:
    """One-sided binomial test of the flagged share of the screened events against the share clean
    traffic gives (the screening threshold's false positive rate, chosen on clean reference
    images: the events' mean ``fpr``), and the share at least ``MIN_FLAGGED_INCREASE`` above it
    (weather raises it a little, docs/attacks.md: that alone is no attack)."""
    n, k = w.screened, w.flagged
    if n < MIN_SCREENED:
        return CheckResult("adversarial_share", ADVERSARIAL_FEATURE, "baseline_drift_check", w.kind, n, False,
                           count=k, judged=False)
    expected = min(max(w.flagged_expected / n, 1e-6), 1 - 1e-6)
    share = k / n
    p = binom_sf(k, n, expected)
    failing = p < alpha and share - expected > MIN_FLAGGED_INCREASE
    return CheckResult("adversarial_share", ADVERSARIAL_FEATURE, "baseline_drift_check", w.kind, n, failing,
                       observed=share, statistic=share, p_value=p, threshold=expected, count=k,
                       description=(f"{k} of {n} screened requests flagged as adversarial ({share:.2%}); clean "
                                    f"traffic flags {expected:.2%} (the screening threshold's false positive rate), "
                                    f"binomial p={p:.2e} < alpha={alpha:.2e}"))

"""Sequential checks: evidence against the baseline, accumulated one prediction at a time.

The window checks (``checks``) need a full window (100 predictions) and spend their false-alarm
budget on ~86,400 evaluations a day. A sequential check needs no window: each prediction adds
its evidence the moment it arrives, so it works at 0.05 requests a second as at 100, and its
false-alarm bound holds at any time the monitor looks (proof in docs/monitoring.md,
"Sequential checks").

For each feature (the predicted class, the top-1 confidence bin, the margin bin, low confidence
yes/no) a prediction is one categorical observation ``x_t``, compared with the baseline's shares
``p0`` by a Shiryaev-Roberts e-detector (Shin, Ramdas and Rinaldo, "E-detectors: a nonparametric
framework for sequential change detection", 2023):

    e_t = q_t(x_t) / p0+(x_t)    q_t: a guess of the current shares made from the predictions
                                 before t only (predictable); p0+: the baseline's shares' upper
                                 bounds (its own sampling error), so E[e_t | past] <= 1 under
                                 any traffic within them
    R_t = e_t * (R_{t-1} + s_t)  s_t = 1 when a new start is due (at most one per second of
                                 event time), else 0; R_0 = 0

Under the baseline ``R_t - (s_1 + ... + s_t)`` is a supermartingale, so an alarm at ``R_t >= A``
with ``A = starts_per_day / (share * alpha_per_day)`` costs at most ``share * alpha_per_day``
expected false alarms a day, at any stopping time; each check declares its ``budget_share`` and
the shares sum to 1. ``q_t`` is not one guess but many, each with its own ``R``, averaged with
fixed weights (``S_t``, which keeps the martingale property at the cost of the weights' log):
plug-ins on forgetting counts (a short memory catches a sudden shift, a long one a mild drift),
fixed "set inflation" alternatives that need no learning (one class predicted more often: an
attack; mass moving below one confidence or margin bin), and for confidence and margin a
"pooled" alternative averaging the evidence of every lower tail at each prediction (weather
spreads mass over many low bins at once, not below one cut). After an alarm the check's ``R`` restarts from 0 (the
plug-ins keep what they learned, so a shift that persists alarms again within a few
predictions, which keeps its incident open).

The state is a few small vectors per check (``to_state``/``load_state``, JSON), tied to the
baseline it was built for. One detector sees the events of one consumer; see the docs for
several replicas.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from signwatch.monitoring.baseline import CLASS_FEATURE, CONFIDENCE_FEATURE, MARGIN_FEATURE, Baseline
from signwatch.monitoring.checks import CheckResult
from signwatch.monitoring.features import Features

HALF_LIVES = (2.0, 16.0, 128.0)  # predictions: an attack's handful, a shift's minute, a mild drift's minutes
PRIOR_WEIGHT = 1.0               # the baseline's weight (in predictions) in each plug-in guess
EPSILONS = (0.03, 0.1, 0.3, 0.9)  # how much of the traffic a set-inflation alternative moves
POOLED_EPSILONS = (0.05, 0.15, 0.4, 0.8)  # the same for the pooled lower tails
POOL_RANGE = (0.005, 0.5)         # pooled: the tails holding this much of the baseline (weather's reach)
POOL_WEIGHTS = (0.1, 0.1, 0.8)    # pooled checks: plug-ins, single sets, pooled (measured: weather pays)
START_EVERY_S = 1.0              # at most one new start per second of event time
TOLERANCE_Z = 3.0                # the baseline's shares are estimates: judged against this upper bound
SECONDS_PER_DAY = 86_400


def log_threshold(alpha_per_day: float, n_checks: int | None = None,
                  start_every_s: float = START_EVERY_S, share: float | None = None) -> float:
    """``log A``: the check may expect ``share * alpha_per_day`` false alarms a day (default
    ``1 / n_checks``, and ``n_checks`` defaults to as many checks as ``SEQUENTIAL_CHECKS``), and a
    day holds at most ``SECONDS_PER_DAY / start_every_s`` starts (docs/monitoring.md)."""
    if share is None:
        share = 1.0 / (n_checks if n_checks is not None else len(SEQUENTIAL_CHECKS))
    return math.log((SECONDS_PER_DAY / start_every_s) / (share * alpha_per_day))


def smoothed_shares(counts: np.ndarray) -> np.ndarray:
    """The baseline's shares with half a count added to every cell (Jeffreys): a bin the
    baseline never saw is rare, not impossible."""
    counts = np.asarray(counts, dtype=float)
    return (counts + 0.5) / (counts.sum() + 0.5 * len(counts))


def upper_bounds(shares: np.ndarray, items: float | None, z: float = TOLERANCE_Z) -> np.ndarray:
    """A one-sided upper bound of each share estimated from ``items`` predictions (the window
    tests' ``checks._upper``); the shares themselves when ``items`` is None (an exact null)."""
    shares = np.asarray(shares, dtype=float)
    if items is None:
        return shares
    return np.minimum(1.0, shares + z * np.sqrt(np.maximum(shares * (1 - shares), 0.25 / items) / items)
                      + 0.5 / items)


def singletons(k: int) -> np.ndarray:
    """Sets of one category each: "this class is predicted more often" (an attack into it)."""
    return np.eye(k, dtype=bool)


def lower_tails(k: int) -> np.ndarray:
    """Sets of the bins below each cut: "confidences (or margins) fall" (snow, night, fog)."""
    return np.tri(k, k, dtype=bool)[: k - 1]  # row j: bins 0..j; the whole range tests nothing


@dataclass(frozen=True)
class SequentialCheck:
    """A sequential check, declared once: its name, the baseline feature it reads, what it looks
    at (for the description), the category one prediction falls in, the baseline's counts of those
    categories, the alternatives' sets of categories (``singletons`` or ``lower_tails``), whether
    the sets are also pooled into one alternative (``SequentialTest``), and its share of the
    false-alarm budget (the shares of ``SEQUENTIAL_CHECKS`` sum to 1)."""

    name: str
    feature: str
    what: str
    observe: Callable[[Features], int]
    baseline_counts: Callable[[Baseline], np.ndarray]
    sets: Callable[[int], np.ndarray]
    pool_sets: bool = False
    budget_share: float = 0.25


def _low_confidence_counts(b: Baseline) -> np.ndarray:
    return np.array([b.item_count - b.low_confidence_count, b.low_confidence_count], dtype=float)


# budget shares (sum 1): weather trips confidence first; margin and low confidence mostly repeat
# it (low confidence is confidence below 0.5, one of its tails), so they get less (measured)
SEQUENTIAL_CHECKS = (
    SequentialCheck("sequential_class", CLASS_FEATURE, "predicted class",
                    lambda f: f.class_id, lambda b: b.class_counts, singletons, budget_share=0.3),
    # bins in order: weather moves mass down
    SequentialCheck("sequential_confidence", CONFIDENCE_FEATURE, "top-1 confidence",
                    lambda f: f.confidence_bin, lambda b: b.confidence_counts, lower_tails, True, 0.5),
    SequentialCheck("sequential_margin", MARGIN_FEATURE, "top-1 minus top-2 margin",
                    lambda f: f.margin_bin, lambda b: b.margin_counts, lower_tails, True, 0.15),
    SequentialCheck("sequential_low_confidence", CONFIDENCE_FEATURE, "low-confidence share",
                    lambda f: int(f.low_confidence), _low_confidence_counts,
                    lambda k: singletons(k)[1:], budget_share=0.05),  # {low}
)


class SequentialTest:
    """One feature's Shiryaev-Roberts e-detector against the categorical shares ``p0``.

    Families of alternatives, every member its own ``R``:
    - ``len(half_lives)`` plug-ins ``q(x) = (w p0(x) + n(x)) / (w + N)`` on forgetting counts
      (any shift, at the price of learning all K shares);
    - set inflations ``q = (1 - eps) p0 + eps p0(. | B)`` for each set ``B`` (rows of ``sets``)
      and each ``eps`` in ``EPSILONS``: ``e = 1 - eps + eps 1{x in B} / p0(B)`` needs no
      learning, so a shift onto one class (an attack) or below one bin is found at the cost of
      the log of its weight;
    - with ``pool_sets``, the pooled inflation ``e = 1 - eps + eps mean_B 1{x in B} / p0(B)``
      over the sets holding ``POOL_RANGE`` of the baseline, for each ``eps`` in
      ``POOLED_EPSILONS``: an average of the set members' e-values at every prediction (not of
      their products), so a shift that spreads mass over many low bins (weather) gathers the
      evidence of all the tails it fills, and a low bin (in many tails) counts more than one near
      the top.
    Without pooling the plug-ins and the sets get half the weight each, with it ``POOL_WEIGHTS``;
    each family's weight is split evenly among its members.

    With ``baseline_items`` (the baseline's size) every ``p0(x)`` and ``p0(B)`` in a
    denominator is replaced by its upper bound (``upper_bounds``): ``e`` then averages at most 1
    under any traffic whose shares are within those bounds, so the baseline's own sampling
    error is never taken for a shift.
    """

    def __init__(self, name: str, feature: str, p0: np.ndarray, log_threshold: float,
                 sets: np.ndarray | None = None, half_lives: tuple[float, ...] = HALF_LIVES,
                 prior_weight: float = PRIOR_WEIGHT, baseline_items: float | None = None,
                 pool_sets: bool = False) -> None:
        self.name, self.feature, self.log_threshold = name, feature, log_threshold
        self.p0 = np.asarray(p0, dtype=float)
        self.p_hi = upper_bounds(self.p0, baseline_items)
        k = len(self.p0)
        self.sets = singletons(k) if sets is None else np.asarray(sets, dtype=bool)
        self.half_lives, self.prior_weight = tuple(half_lives), prior_weight
        self.decay = np.array([0.5 ** (1.0 / h) for h in self.half_lives])
        eps = np.asarray(EPSILONS)
        share = self.sets.astype(float) @ self.p0
        p_set = upper_bounds(share, baseline_items)
        score = self.sets.T / p_set[None, :]  # (K, sets): 1{x in B} / p0+(B), averages <= 1
        # log e of every set inflation (no learning) for every category x: (K, members), looked
        # up per observation; set j with eps e is member j * len(EPSILONS) + e, then the pooled
        self.log_e_fixed = np.log((1 - eps)[None, None, :] + eps[None, None, :] * score[:, :, None]).reshape(k, -1)
        w_plugins, w_sets, w_pooled = POOL_WEIGHTS if pool_sets else (0.5, 0.5, 0.0)
        log_w = [np.full(self.log_e_fixed.shape[1], math.log(w_sets / self.log_e_fixed.shape[1]))]
        if pool_sets:
            lo, hi = POOL_RANGE
            pick = (share >= lo) & (share <= hi)
            pooled = score[:, pick if pick.any() else slice(None)].mean(1)  # a mean of e-values: one
            peps = np.asarray(POOLED_EPSILONS)
            log_e_pooled = np.log(1 - peps[None, :] + peps[None, :] * pooled[:, None])
            self.log_e_fixed = np.hstack([self.log_e_fixed, log_e_pooled])
            log_w.append(np.full(len(peps), math.log(w_pooled / len(peps))))
        self.log_w_plugins = math.log(w_plugins / len(self.half_lives))
        self.log_w_fixed = np.concatenate(log_w)
        n_plugins = len(self.half_lives)
        self.log_r = np.full(n_plugins, -math.inf)                   # the plug-ins' log R
        self.log_r_fixed = np.full(self.log_e_fixed.shape[1], -math.inf)
        self.counts = np.zeros((n_plugins, k))                        # forgetting counts
        self.weight = np.zeros(n_plugins)                             # their sums
        self.n = 0                 # observations since the last alarm (or start)
        self.peak = -math.inf      # highest log S since the last take()
        self.alarmed = False       # crossed since the last take()

    @property
    def statistic(self) -> float:
        """``log S_t`` in nats (``S_t``: the weighted average of every member's ``R``); -inf
        before any start."""
        a = self.log_r + self.log_w_plugins
        b = self.log_r_fixed + self.log_w_fixed
        top = max(float(a.max()), float(b.max()))
        if top == -math.inf:
            return -math.inf
        return top + math.log(float(np.exp(a - top).sum() + np.exp(b - top).sum()))

    def e_values(self) -> np.ndarray:
        """``e`` of every member for every category, (K, members): what the next observation
        would multiply each ``R`` by (each column averages to 1 under ``p0``)."""
        guess = (self.prior_weight * self.p0[:, None] + self.counts.T) / (self.prior_weight + self.weight)
        return np.hstack([guess / self.p_hi[:, None], np.exp(self.log_e_fixed)])

    def update(self, x: int, start: bool) -> float:
        """Add one observation (category ``x``); ``start``: a new start is due. Returns ``log S``."""
        guess = (self.prior_weight * self.p0[x] + self.counts[:, x]) / (self.prior_weight + self.weight)
        log_e = np.log(guess / self.p_hi[x])
        # R = e * (R + s): in logs, log e + logaddexp(log R, log s)
        if start:
            self.log_r = log_e + np.logaddexp(self.log_r, 0.0)
            self.log_r_fixed = self.log_e_fixed[x] + np.logaddexp(self.log_r_fixed, 0.0)
        else:
            self.log_r = log_e + self.log_r
            self.log_r_fixed = self.log_e_fixed[x] + self.log_r_fixed
        self.counts *= self.decay[:, None]
        self.counts[:, x] += 1.0
        self.weight = self.weight * self.decay + 1.0
        self.n += 1
        s = self.statistic
        self.peak = max(self.peak, s)
        if s >= self.log_threshold:
            self.alarmed = True
            self.restart()
        return s

    def restart(self) -> None:
        """R = 0 for every member; the plug-ins keep their counts."""
        self.log_r[:] = -math.inf
        self.log_r_fixed[:] = -math.inf
        self.n = 0

    def take(self) -> tuple[bool, float]:
        """(alarmed, peak log S) since the last take; both reset."""
        out = (self.alarmed, self.peak)
        self.alarmed, self.peak = False, self.statistic
        return out

    def to_state(self) -> dict:
        def logs(a: np.ndarray) -> list:
            return [None if v == -math.inf else round(float(v), 6) for v in a.ravel()]

        return {"log_r": logs(self.log_r), "log_r_fixed": logs(self.log_r_fixed),
                "counts": self.counts.round(6).tolist(), "weight": self.weight.tolist(), "n": self.n}

    def load_state(self, state: dict) -> None:
        def logs(values: list, like: np.ndarray) -> np.ndarray:
            a = np.array([-math.inf if v is None else float(v) for v in values])
            if a.size != like.size:
                raise ValueError(f"{self.name}: state of another shape")
            return a.reshape(like.shape)

        log_r, log_r_fixed = logs(state["log_r"], self.log_r), logs(state["log_r_fixed"], self.log_r_fixed)
        counts, weight = np.asarray(state["counts"], dtype=float), np.asarray(state["weight"], dtype=float)
        if counts.shape != self.counts.shape or weight.shape != self.weight.shape:
            raise ValueError(f"{self.name}: state of another shape")
        self.log_r, self.log_r_fixed, self.counts, self.weight = log_r, log_r_fixed, counts, weight
        self.n = int(state.get("n", 0))


class SequentialChecks:
    """The four sequential checks of one endpoint against one baseline.

    ``update(features, ts)`` after each prediction (``ts``: its event time); ``results()`` when
    the monitor evaluates: one ``CheckResult`` per check, failing when it alarmed since the last
    call. ``alpha_per_day`` is the whole budget of the four, split by their ``budget_share``
    (``shares``: other shares by name, summing to at most 1)."""

    def __init__(self, baseline: Baseline, alpha_per_day: float | None = None,
                 start_every_s: float = START_EVERY_S, half_lives: tuple[float, ...] = HALF_LIVES,
                 shares: dict[str, float] | None = None) -> None:
        self.baseline_id = baseline.baseline_id
        self.alpha_per_day = alpha_per_day if alpha_per_day is not None else baseline.thresholds.alpha_per_day
        self.start_every_s = start_every_s
        self.shares = {c.name: c.budget_share for c in SEQUENTIAL_CHECKS} if shares is None else dict(shares)
        if set(self.shares) != {c.name for c in SEQUENTIAL_CHECKS} or sum(self.shares.values()) > 1 + 1e-9 \
                or min(self.shares.values()) <= 0:
            raise ValueError("a positive budget share for every sequential check, summing to at most 1")
        self.thresholds = {name: log_threshold(self.alpha_per_day, start_every_s=start_every_s, share=share)
                           for name, share in self.shares.items()}
        self.log_threshold = max(self.thresholds.values())  # the strictest (kept for callers of one number)
        self.tests = {}
        self.checks = {c.name: c for c in SEQUENTIAL_CHECKS}
        for c in SEQUENTIAL_CHECKS:
            p0 = smoothed_shares(c.baseline_counts(baseline))
            self.tests[c.name] = SequentialTest(c.name, c.feature, p0, self.thresholds[c.name], c.sets(len(p0)),
                                                half_lives, baseline_items=baseline.item_count,
                                                pool_sets=c.pool_sets)
        self.last_start = -math.inf
        self.seen = 0

    def update(self, f: Features, ts: float) -> dict[str, float]:
        """Count one prediction; ``log S`` of each check."""
        start = ts >= self.last_start + self.start_every_s
        if start:
            self.last_start = ts
        self.seen += 1
        return {name: t.update(self.checks[name].observe(f), start) for name, t in self.tests.items()}

    def mover(self) -> int | None:
        """The class whose share rose most over the last few dozen predictions (the class check's
        middle memory against the baseline): what a sequential alarm is about."""
        c = next((c for c in SEQUENTIAL_CHECKS if c.feature == CLASS_FEATURE), None)
        if c is None or not self.seen:
            return None
        t = self.tests[c.name]
        m = len(t.half_lives) // 2
        recent = t.counts[m] / max(t.weight[m], 1e-12)
        return int(np.argmax(recent - t.p0))

    @property
    def alarms(self) -> list[str]:
        """The checks that alarmed since the last ``results()``."""
        return [name for name, t in self.tests.items() if t.alarmed]

    def results(self) -> list[CheckResult]:
        out = []
        for c, t in zip(SEQUENTIAL_CHECKS, self.tests.values()):
            name, feature, what = c.name, c.feature, c.what
            alarmed, peak = t.take()
            peak = None if peak == -math.inf else round(peak, 4)
            out.append(CheckResult(
                name, feature, "baseline_drift_check", "count", t.n, alarmed, observed=peak, statistic=peak,
                threshold=t.log_threshold,
                description=(f"The {what} departs from the baseline: sequential evidence log S = {peak} nats "
                             f"reached the threshold {t.log_threshold:.2f} (at most "
                             f"{self.alpha_per_day * self.shares[name]:.2g} false alarms a day)")
                if alarmed else ""))
        return out

    # -- the state store -----------------------------------------------------------------------
    def to_state(self) -> dict:
        return {"baseline_id": self.baseline_id, "last_start": None if self.last_start == -math.inf
                else self.last_start, "seen": self.seen,
                "tests": {name: t.to_state() for name, t in self.tests.items()}}

    def load_state(self, state: dict, evidence: bool = False) -> bool:
        """Take a saved state; False (nothing taken) when it belongs to another baseline or shape.
        Without ``evidence`` the ``R`` restart from 0 (only what the plug-ins learned is kept):
        a state saved by another replica then never counts twice towards an alarm. Losing a
        state is safe: a restart from R = 0 only lowers the evidence."""
        if state.get("baseline_id") != self.baseline_id:
            return False
        saved = {name: t.to_state() for name, t in self.tests.items()}
        try:
            for name, t in self.tests.items():
                t.load_state(state["tests"][name])
        except (KeyError, TypeError, ValueError):
            for name, t in self.tests.items():  # all or nothing
                t.load_state(saved[name])
            return False
        self.last_start = state["last_start"] if state.get("last_start") is not None else -math.inf
        self.seen = int(state.get("seen", 0))
        if not evidence:
            for t in self.tests.values():
                t.restart()
        return True


def state_key(endpoint: str) -> str:
    return f"signwatch:sequential:{endpoint}"

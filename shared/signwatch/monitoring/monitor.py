"""The streaming monitor behind one call: ``Monitor.observe(event) -> list[ViolationEvent]``.

Each event is counted into both windows (one atomic state-store call), unless it is one more frame
of an object counted seconds ago (``tracks``: near-duplicate image hashes or one named track). The checks run every
``check_every_events`` events or every ``check_interval_s`` of the monitor's clock, whichever
comes first (``tick()`` runs a pending evaluation when no event arrives), so the per-event cost
stays bounded. The checks that run are looked up in ``registry``; checks failing together open
one incident (``incidents``: one violation naming them all, across replicas), which resolves once
every check stayed clear for a while; each claim puts its violation in the outbox in the same atomic
step, and ``published`` marks it done once the bus acknowledged it (``monitoring.outbox``).
The violation events are built in ``violations`` (``ViolationWriter``): sample inputs as store
references with their sha256, and the SageMaker ``constraint_violations.json`` report in the
store. The snapshot that dashboards read (``read_snapshot``) is refreshed at most once a second.

The monitor counts the served model's classes (``class_names``, from its manifest; ``set_model``
when a new one is served). An event whose top-1 class id is not one of them is counted as
unreadable (the completeness check), logged and reported to ``on_unreadable``, never dropped.
``admit`` refuses, as poison, what the schema cannot know is wrong for this model: more
predictions than it has classes.
The baseline judged against is kept by ``baseline_keeper`` (``BaselineKeeper``; the monitor's
``baseline``, ``baseline_status``, ``baseline_source``, ``judge_classes`` read it). Without a
baseline made for this model (none in the store, or one for other classes) only the checks that
need none run, and the snapshot says what the drift checks wait for. With none uploaded, the
monitor learns one from the endpoint's first hours of traffic and takes it over (``learning``; a
``BaselineEvent`` says so); meanwhile the shipped baseline, for a model with the GTSRB classes,
judges confidence, margin and low confidence, never class shares unless asked (``judge_classes``).

What lives here: the monitor's flow (``admit``, counting, ``evaluate``: the checks and the
incidents, the sequential checks' state) and the snapshot.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from signwatch.capture import should_sample
from signwatch.events import BaselineEvent, InferenceEvent, PoisonMessage, ScreeningEvent, ViolationEvent
from signwatch.monitoring import baseline as bl
from signwatch.monitoring import model_quality, quality, registry
from signwatch.monitoring.baseline_keeper import BaselineKeeper, Served
from signwatch.monitoring.checks import CheckResult, WindowCounts, estimated_accuracy
from signwatch.monitoring.features import Features, features_of
from signwatch.monitoring.incidents import Incidents
from signwatch.monitoring.labels import LabelJoin
from signwatch.monitoring.learning import LearnedOutbox, Learning
from signwatch.monitoring.model_quality import QualityConstraints
from signwatch.monitoring.registry import CHECKS, INCIDENTS, run_checks, run_screening_checks
from signwatch.monitoring.screening_counts import ScreeningCounts, ScreeningWindows
from signwatch.monitoring.screening_sequential import SEQUENTIAL_PART as SCREENING_SEQUENTIAL_PART
from signwatch.monitoring.screening_sequential import ScreeningDetector
from signwatch.monitoring.sequential import SequentialChecks
from signwatch.monitoring.sequential import state_key as sequential_key
from signwatch.monitoring.tracks import Tracks
from signwatch.monitoring.violations import EvaluationContext, ViolationWriter, names_in_order
from signwatch.monitoring.windows import Windows
from signwatch.ports.state import StateStore
from signwatch.ports.store import ObjectStore

log = logging.getLogger(__name__)


def snapshot_key(endpoint: str) -> str:
    return f"signwatch:snapshot:{endpoint}"


def read_snapshot(state: StateStore, endpoint: str) -> dict | None:
    """The monitor's latest view of ``endpoint`` (windows, baseline, drift, incidents), or None."""
    raw = state.get_value(snapshot_key(endpoint))
    return json.loads(raw) if raw else None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


def _with_screening(w: WindowCounts, s: ScreeningCounts) -> WindowCounts:
    return replace(w, screened=s.screened, flagged=s.flagged, flagged_expected=s.expected)


@dataclass
class MonitorConfig:
    endpoint: str = "signwatch"
    variant: str = "AllTraffic"
    window_s: int = 300
    bucket_s: int = 10
    count_n: int = 200
    samples_per_class: int = 8
    check_every_events: int = 50
    check_interval_s: float = 1.0
    resolve_after_s: float = 120.0
    resolve_after_predictions: int = 100  # an incident's calm lasts at least this many predictions too
    snapshot_interval_s: float = 1.0
    baseline_prefix: str | None = None
    baseline_reload_s: float = 30.0
    model_reload_s: float = 30.0     # how often the service re-reads the served model's manifest
    reports_prefix: str = "monitoring"
    outbox_grace_s: int = 15         # a claimer's own time to publish before any replica re-publishes
    track_window_s: float = 5.0      # frames of one object this close in time count once (tracks.py; 0: off)
    track_max_distance: int = 10     # image hashes this close (Hamming) show one object
    track_max_age_s: float = 60.0    # after this long an object counts again
    track_capacity: int = 1024       # frames the shared track list holds per endpoint
    sequential: bool = True          # the sequential checks (sequential.py) beside the window checks
    overrides: dict = field(default_factory=dict)
    learn_baseline_s: float = 10_800.0   # with no baseline in the store, learn one this long (learning.py; 0: off)
    learn_baseline_min_count: int = 1000  # ... and from this many predictions at least
    shipped_class_checks: bool = False   # the shipped baseline judges class shares too (else never)
    ground_truth: bool = True            # join labels with the captured predictions (labels.py)
    capture_sampling_percentage: float = 100.0  # the predictions a label can name: the captured ones
    ground_truth_retention_s: int = 7 * 86_400
    ground_truth_shard_chars: int = 3
    quality_window_s: int = 3600         # model quality over the pairs matched this long ...
    quality_last_n: int = 1000           # ... and over the last N matched
    quality_min_labels: int = 200        # pairs a model-quality window needs to be judged

    @classmethod
    def from_settings(cls, s) -> "MonitorConfig":
        overrides = {"over_prediction_share": s.monitor_share_threshold, "low_confidence": s.monitor_low_confidence,
                     "min_over_prediction": s.monitor_min_predictions, "min_drift": s.monitor_min_drift,
                     "alpha_per_day": s.monitor_alpha_per_day}
        return cls(endpoint=s.endpoint, variant=s.variant, window_s=s.monitor_window_seconds,
                   bucket_s=s.monitor_bucket_seconds, count_n=s.monitor_count_window,
                   samples_per_class=s.monitor_samples_per_class, check_every_events=s.monitor_check_every_events,
                   check_interval_s=s.monitor_check_interval_seconds, resolve_after_s=s.monitor_resolve_after_seconds,
                   resolve_after_predictions=s.monitor_resolve_after_predictions,
                   baseline_prefix=s.monitor_baseline_prefix, baseline_reload_s=s.monitor_baseline_reload_seconds,
                   model_reload_s=s.monitor_model_reload_seconds,
                   outbox_grace_s=s.monitor_outbox_grace_seconds, track_window_s=s.monitor_track_window_seconds,
                   track_max_distance=s.monitor_track_max_distance,
                   track_max_age_s=s.monitor_track_max_age_seconds, track_capacity=s.monitor_track_capacity,
                   sequential=s.monitor_sequential, overrides=overrides,
                   learn_baseline_s=s.monitor_learn_baseline_seconds,
                   learn_baseline_min_count=s.monitor_learn_baseline_min_count,
                   shipped_class_checks=s.monitor_shipped_class_checks,
                   ground_truth=s.monitor_ground_truth, capture_sampling_percentage=s.capture_sampling_percentage,
                   ground_truth_retention_s=s.ground_truth_retention_seconds,
                   ground_truth_shard_chars=s.ground_truth_shard_chars,
                   quality_window_s=s.monitor_quality_window_seconds, quality_last_n=s.monitor_quality_last_labels,
                   quality_min_labels=s.monitor_quality_min_labels)


@dataclass
class Evaluation:
    time: float
    windows: list[WindowCounts]
    results: list[CheckResult]
    estimated_accuracy: float | None
    quality: dict | None = None  # the labelled pairs' figures (Monitor._judge_quality), when labels are joined


QUALITY_EVERY_S = 10.0  # model quality is judged afresh this often at least (labels joined: at once)
MAX_CLOCK_SKEW_S = 300  # how far ahead of the monitor's wall clock an event's time may be


class Monitor:
    def __init__(self, state: StateStore, store: ObjectStore, config: MonitorConfig,
                 class_names: tuple[str, ...], baseline: bl.Baseline | None = None, clock=time.monotonic,
                 model_version: str | None = None, wall_clock=time.time) -> None:
        self.state, self.store, self.config, self.class_names = state, store, config, tuple(class_names)
        self.clock = clock
        self.wall_clock = wall_clock  # what "the future" means for admit()
        self.model_version = model_version
        self.windows = Windows(state, config.endpoint, config.window_s, config.bucket_s, config.count_n,
                               config.samples_per_class, n_classes=len(self.class_names))
        self.incidents = Incidents(state, config.endpoint, config.resolve_after_s, config.outbox_grace_s,
                                   config.resolve_after_predictions)
        self.tracks = Tracks(state, config.endpoint, config.track_window_s, config.track_max_distance,
                             config.track_max_age_s, config.track_capacity)
        # Called with (by, n) for n frames folded into a track ("hash" or "name"): the service's metric.
        self.on_folded: Callable[[str, int], None] | None = None
        # Called with the class id of each prediction counted (new, not folded): the service's metric.
        self.on_counted: Callable[[int], None] | None = None
        # Called with (reason, event or None) for each event counted as unreadable: the service's metric.
        self.on_unreadable: Callable[[str, InferenceEvent | None], None] | None = None
        self._unreadable_logged = float("-inf")
        self._now_ts = 0.0          # event time of the newest event seen
        self.baseline_keeper = BaselineKeeper(state, store, config, clock, baseline, self._served())
        self.violations = ViolationWriter(store, self.windows, config)
        self._since_check = 0
        self._last_check = float("-inf")
        self._last_snapshot = float("-inf")
        self._tipping: InferenceEvent | None = None
        self.last: Evaluation | None = None
        self.sequential: SequentialChecks | None = None  # made for the baseline on the first counted event
        # Labels (labels.py, model_quality.py): the join, the constraints, the last figures.
        self.labels = LabelJoin(state, config.endpoint, self.num_classes, config.ground_truth_retention_s,
                                config.quality_window_s, max(1, config.quality_window_s // 12),
                                config.quality_last_n, config.ground_truth_shard_chars) if config.ground_truth else None
        self.quality_constraints = QualityConstraints(store, quality.constraints_key(self.baseline_prefix),
                                                      config.baseline_reload_s, clock)
        self.quality: dict | None = None
        self._quality_at = float("-inf")
        self._quality_results: tuple[list[CheckResult], frozenset[str]] = ([], frozenset())
        # Set by the label loop (another thread) once it joined labels: the quality check is due
        # even when no prediction arrives (labels come days later, often in a quiet hour).
        self.labels_changed = False
        # The explainer's adversarial scores (screening_counts.py), counted by the screening loop
        # (another thread), which sets ``screening_changed``: the next tick judges them.
        self.screening = ScreeningWindows(state, config.endpoint, config.window_s, config.bucket_s, config.count_n)
        self.screening_changed = False
        # ... and the check's sequential view of them (screening_sequential.py), per process
        share = registry.shares(self._kinds).get("adversarial_share", 0.0) * SCREENING_SEQUENTIAL_PART
        self.screening_detector = ScreeningDetector(self.thresholds.alpha_per_day, share) if share else None
        self.windows.mark_alive()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # -- the served model ---------------------------------------------------------------------
    def set_model(self, class_names: tuple[str, ...], model_version: str | None = None) -> None:
        """A new model is served: count its classes from now on and take a baseline made for
        them (the store's, else none: the drift checks wait). See ``windows`` for the counts of
        the previous model still in the windows."""
        self.class_names = tuple(class_names)
        self.windows.n_classes = len(self.class_names)
        if self.labels is not None:
            self.labels.num_classes = len(self.class_names)
        if model_version is not None:
            self.model_version = model_version
        self.baseline_keeper.set_model(self._served())

    # -- the baseline (baseline_keeper.py) -----------------------------------------------------
    def _served(self) -> Served:
        return Served(self.class_names, self.model_version, self._now_ts)

    @property
    def baseline(self) -> bl.Baseline | None:
        return self.baseline_keeper.baseline

    @property
    def baseline_status(self) -> str:
        return self.baseline_keeper.status

    @property
    def baseline_source(self) -> str:
        """"given", "store", "learned", "shipped" or "none" (``BaselineKeeper.source``)."""
        return self.baseline_keeper.source

    @property
    def judge_classes(self) -> bool:
        """Whether the class checks judge class shares (``BaselineKeeper.judge_classes``)."""
        return self.baseline_keeper.judge_classes

    @property
    def baseline_prefix(self) -> str:
        return self.baseline_keeper.prefix

    @property
    def learning(self) -> Learning:
        return self.baseline_keeper.learning

    @property
    def baseline_outbox(self) -> LearnedOutbox:
        return self.baseline_keeper.outbox

    def _learn(self, items: list[tuple[InferenceEvent, Features]]) -> None:
        self.baseline_keeper.learn(items)

    def take_baseline_events(self) -> list[BaselineEvent]:
        """The takeover events claimed here since the last call: the service publishes each and
        then calls ``baseline_published`` (``BaselineKeeper.take_events``)."""
        return self.baseline_keeper.take_events()

    def baseline_published(self, event: BaselineEvent) -> None:
        self.baseline_keeper.published(event)

    def unpublished_baseline_events(self) -> list[BaselineEvent]:
        """A sweep's share (``BaselineKeeper.unpublished_events``)."""
        return self.baseline_keeper.unpublished_events()

    @property
    def thresholds(self) -> bl.Thresholds:
        if self.baseline is not None:
            return self.baseline.thresholds
        return bl.Thresholds().merged(self.config.overrides)

    @property
    def _kinds(self) -> tuple[str, ...]:
        """The kinds of checks that run (and share the false-alarm budget)."""
        return ("window", "sequential", "screening") if self.config.sequential else ("window", "screening")

    def alpha(self, check: str) -> float:
        """``check``'s alpha per test: its share of the day's budget over a day of evaluations of
        both windows (``registry.alpha_for``)."""
        tests = registry.WINDOWS_PER_EVALUATION * 86_400 / max(self.config.check_interval_s, 1e-3)
        return registry.alpha_for(check, self.thresholds.alpha_per_day, tests, self._kinds)


    # -- the one call -------------------------------------------------------------------------
    def admit(self, event: InferenceEvent) -> None:
        """Raise PoisonMessage for an event that passed the schema but cannot be this model's
        prediction. A top-1 class the model lacks is not refused: it is counted
        as unreadable (completeness), as the batch job counts it."""
        n = len(event.output.predictions)
        if n > self.num_classes:
            raise PoisonMessage(f"{n} predictions for a model of {self.num_classes} classes "
                                f"({self.model_version})")
        # The windows follow event time: one event stamped next year would move "now" there and
        # empty every time window until real time caught up.
        ahead = event.time.timestamp() - self.wall_clock()
        if ahead > MAX_CLOCK_SKEW_S:
            raise PoisonMessage(f"event time {event.time.isoformat()} is {ahead:.0f} s ahead of this "
                                f"monitor's clock (at most {MAX_CLOCK_SKEW_S} s of skew is accepted)")

    def _features(self, event: InferenceEvent, report: bool = True) -> Features | None:
        """The event's features, or None when it cannot be read as this model's prediction
        (counted as unreadable, with a log line at most once a minute, and reported)."""
        try:
            f = features_of(event.output.predictions, self.thresholds.low_confidence)
        except (ValueError, TypeError) as exc:
            reason, detail = "no_predictions", str(exc)
        else:
            if 0 <= f.class_id < self.num_classes:
                return f
            reason = "class_out_of_range"
            detail = (f"top-1 class id {f.class_id} is not one of the {self.num_classes} classes of model "
                      f"{self.model_version} (event model_version {event.model_version})")
        self.windows.record_unreadable(event.time.timestamp(), f"unreadable:{event.event_id}")
        if self.clock() - self._unreadable_logged >= 60:
            self._unreadable_logged = self.clock()
            log.warning("event %s counted as unreadable: %s (logged at most once a minute)", event.event_id, detail)
        if report and self.on_unreadable is not None:
            self.on_unreadable(reason, event)
        return None

    def observe(self, event: InferenceEvent) -> list[ViolationEvent]:
        if event.endpoint != self.config.endpoint:
            return []
        f = self._features(event)
        if f is not None:
            self._count([(event, f)])
        self._now_ts = max(self._now_ts, event.time.timestamp())
        self.model_version = event.model_version
        self._since_check += 1
        self._tipping = event
        return self.tick(force=self._since_check >= self.config.check_every_events)

    def observe_many(self, events: list[InferenceEvent]) -> list[InferenceEvent | ViolationEvent]:
        """``observe`` for a batch: counted ``check_every_events`` at a time in one round trip
        each, checked after each slice when due (what the service does per poll)."""
        out: list[ViolationEvent] = []
        mine = [e for e in events if e.endpoint == self.config.endpoint]
        k = self.config.check_every_events
        for i in range(0, len(mine), k):
            part = mine[i:i + k]
            readable = [(e, f) for e in part if (f := self._features(e)) is not None]
            if readable:
                self._count(readable)
            self._now_ts = max(self._now_ts, max(e.time.timestamp() for e in part))
            self.model_version = part[-1].model_version
            self._since_check += len(part)
            self._tipping = part[-1]
            out += self.tick(force=self._since_check >= k)
        return out

    def observe_unreadable(self, token: str, ts: float | None = None) -> list[ViolationEvent]:
        ts = ts if ts is not None else (self._now_ts or time.time())
        self.windows.record_unreadable(ts, f"unreadable:{token}")
        if self.on_unreadable is not None:
            self.on_unreadable("not_an_event", None)
        self._since_check += 1
        return self.tick()

    def recount(self, event: InferenceEvent) -> bool:
        """Count an event again after the state store lost the windows (no checks run)."""
        if event.endpoint != self.config.endpoint:
            return False
        f = self._features(event, report=False)  # reported when it was first seen
        return self._count([(event, f)], rebuild=True) == [True] if f is not None else False

    def _count(self, readable: list[tuple[InferenceEvent, Features]], rebuild: bool = False) -> list[bool]:
        """Count the readable events, but the frames that continue a track (``tracks``): one
        object seen in many frames within seconds is one observation. A rebuild decides against
        the frames it recounted, not the state's list (one read per event)."""
        decisions = self.tracks.decide([(e, f.class_id) for e, f in readable], read_state=not rebuild)
        counted = [item for item, d in zip(readable, decisions) if not d.folded]
        applied = self.windows.record_many(counted) if counted else []
        if self.labels is not None and not rebuild:  # every captured prediction may be labelled, folded or not
            pct = self.config.capture_sampling_percentage
            outcomes = self.labels.record_predictions([e for e, _ in readable if should_sample(e.event_id, pct)],
                                                      self.wall_clock())
            if "matched" in outcomes:  # labels that came first: the pairs are new, model quality is due
                self.labels_changed = True
        if not rebuild:  # a recount after a lost Redis: the sequential state was not lost
            new = [item for item, fresh in zip(counted, applied) if fresh]
            self._sequential_update(new)
            self._learn(new)  # no baseline uploaded: learn one
            if self.on_counted is not None:
                for _, f in new:
                    self.on_counted(f.class_id)
        self.tracks.remember(write_state=not rebuild)  # after the counts: a crash never loses a frame
        if self.on_folded is not None and not rebuild:
            for by in ("hash", "name"):
                if n := sum(d.by == by for d in decisions):
                    self.on_folded(by, n)
        return applied

    # -- sequential checks (sequential.py), when config.sequential ------------------------------
    def _sequential_update(self, items: list[tuple[InferenceEvent, Features]]) -> None:
        if not self.config.sequential or self.baseline is None or not items:
            return
        if self.sequential is None or self.sequential.baseline_id != self.baseline.baseline_id:
            shares = {name: share for name, share in registry.shares(self._kinds).items()
                      if registry.get(name).kind == "sequential"}
            self.sequential = SequentialChecks(self.baseline, shares=shares)  # a new baseline starts afresh
            raw = self.state.get_value(sequential_key(self.config.endpoint))
            if raw:
                self.sequential.load_state(json.loads(raw))
        for event, f in items:
            self.sequential.update(f, event.time.timestamp())

    def claim_rebuild(self) -> bool:
        """One replica rebuilds the lost windows; the others go on counting."""
        return self.state.set_value(self._rebuild_key, "1", 600, if_absent=True)

    def rebuilt(self) -> None:
        self.windows.mark_alive()
        self.state.delete(self._rebuild_key)

    def release_rebuild(self) -> None:
        self.state.delete(self._rebuild_key)

    @property
    def _rebuild_key(self) -> str:
        return f"signwatch:rebuild:{self.config.endpoint}"

    @property
    def pending(self) -> bool:
        return self._since_check > 0

    def tick(self, force: bool = False) -> list[ViolationEvent]:
        """Run the checks if events wait and the interval passed (or ``force``)."""
        if not (self._since_check or self.labels_changed or self.screening_changed) \
                or (not force and self.clock() - self._last_check < self.config.check_interval_s):
            return []
        return self.evaluate()

    def evaluate(self) -> list[ViolationEvent]:
        self.baseline_keeper.maybe_reload(self._served())
        self.baseline_keeper.maybe_take_over_learned(self._served())
        now = self._now_ts or time.time()
        tipping = self._tipping
        labelled = self.labels_changed
        self._since_check, self._last_check, self.labels_changed, self.screening_changed = 0, self.clock(), False, False
        windows = [_with_screening(self.windows.time_window(now), self.screening.time_window(now)),
                   _with_screening(self.windows.count_window(), self.screening.count_window())]
        judge = self.judge_classes
        results = [r for w in windows for r in run_checks(w, self.baseline, self.alpha, self.class_names,
                                                          self.thresholds, judge_classes=judge)]
        if self.sequential is not None and self.baseline is not None \
                and self.sequential.baseline_id == self.baseline.baseline_id:
            results += [r for r in self.sequential.results() if registry.get(r.name).runs(True, judge)]
        # Only where the explainer screens: an endpoint without screening shows no such check.
        results += [r for w in windows if w.screened for r in run_screening_checks(w, self.alpha)]
        if self.screening_detector is not None and self.screening_detector.seen:
            results.append(self.screening_detector.result(now))
        quality_results, mistaken = self._judge_quality(labelled)
        results += quality_results
        self.last = Evaluation(now, windows, results, estimated_accuracy(windows[0], self.baseline), self.quality)
        rate = windows[0].total / max(1, windows[0].seconds or self.config.window_s)  # predictions a second
        context = EvaluationContext(self.baseline, self.sequential, self.class_names, self.model_version,
                                    self._now_ts, mistaken)
        out: list[ViolationEvent] = []
        for group in INCIDENTS:
            mine = [r for r in results if registry.get(r.name).incident == group]
            if not mine:
                continue  # nothing of the group ran (no baseline): an open incident stays open
            failing = [r for r in mine if r.failing]
            unclear = failing or [r for r in mine if not registry.get(r.name).is_clear(r)]
            record = self.incidents.get(group)
            if record is None:
                if failing:
                    violation = self.violations.violation(failing, windows, tipping, context)
                    if self.incidents.claim(group, violation.checks, violation, now, _iso(now)):
                        self.violations.claimed(violation)
                        out.append(violation)
                    else:
                        self.violations.discard(violation)
            elif unclear:
                self.incidents.refresh(record, now, names_in_order(failing))
            elif self.incidents.due_to_resolve(record, now, rate):
                resolved = self.violations.resolved(record, mine, context)
                if self.incidents.resolve(record, resolved):
                    out.append(resolved)
        if self.clock() - self._last_snapshot >= self.config.snapshot_interval_s or out:
            self._write_snapshot(now)
        return out

    def add_screening(self, events: list[ScreeningEvent]) -> int:
        """Count the explainer's screening events of this endpoint, each event id once; safe from
        another thread (the screening loop's): new counts make the next tick judge them. Returns
        how many were new."""
        mine = [e for e in events if e.endpoint == self.config.endpoint]
        fresh = self.screening.record_many(mine)
        if self.screening_detector is not None:
            for e, first in zip(mine, fresh):
                if first:  # a replay adds no evidence
                    self.screening_detector.update(e.score, e.threshold, e.inference_time.timestamp())
        new = sum(fresh)
        if new:
            self.screening_changed = True
        return new

    def add_labels(self, labels: list[tuple[str, int]]) -> list[str]:
        """Join ``(id, class)`` labels (``LabelJoin.add_labels``); safe from another thread (the
        label loop's): a pair matched makes the next tick judge model quality."""
        outcomes = self.labels.add_labels(labels, self.wall_clock())
        if "matched" in outcomes:
            self.labels_changed = True
        return outcomes

    def _judge_quality(self, labelled: bool) -> tuple[list[CheckResult], frozenset[str]]:
        """The labelled pairs' figures (kept for the snapshot and the gauges) and, with
        model-quality constraints in the store, the ``model_quality`` results of both windows:
        afresh when labels were joined here or ``QUALITY_EVERY_S`` passed (another replica's
        labels, pairs leaving the window), else as at the last time (8 ms for 3,000 pairs, more
        with the window's size: not at every evaluation of the predictions)."""
        if self.labels is None:
            return [], frozenset()
        if not labelled and self.clock() - self._quality_at < QUALITY_EVERY_S:
            return self._quality_results
        self._quality_at = self.clock()
        self._quality_results = self._judge_quality_now()
        return self._quality_results

    def _judge_quality_now(self) -> tuple[list[CheckResult], frozenset[str]]:
        now = self.wall_clock()
        recent = self.labels.recent()
        windows = {"time": self.labels.window(now), "count": model_quality.from_recent(recent, self.num_classes)}
        constraints = self.quality_constraints.get()
        self.quality = {kind: model_quality.summary(w, self.baseline, self.class_names) for kind, w in windows.items()}
        self.quality["join"] = self.labels.stats(now)
        self.quality["constraints"] = constraints is not None
        if constraints is None:
            return [], frozenset()
        try:
            results = [model_quality.judge(w, kind, constraints, self.num_classes, self.config.quality_min_labels,
                                           self.config.quality_window_s) for kind, w in windows.items()]
        except ValueError as exc:  # constraints on metrics we lack: said once a reload, judged as none
            log.warning("model-quality constraints not usable: %s", exc)
            return [], frozenset()
        return results, frozenset(p.note for p in recent if p.true != p.predicted)

    def published(self, violation: ViolationEvent) -> None:
        """The bus acknowledged ``violation`` (or can never take it): its outbox entry is done.
        One that is not (a publish failed, the process died) is re-published by a sweep."""
        self.incidents.outbox.done(violation)

    @property
    def _baseline_id(self) -> str | None:
        return self.baseline.baseline_id if self.baseline is not None else None

    # -- snapshot -----------------------------------------------------------------------------
    def snapshot(self, now: float) -> dict:
        ev = self.last
        b = self.baseline
        by = {(r.name, r.window): r for r in ev.results} if ev else {}
        tw = ev.windows[0] if ev else WindowCounts.empty("time", self.num_classes, seconds=self.config.window_s)
        cw = ev.windows[1] if ev else WindowCounts.empty("count", self.num_classes, size=self.config.count_n)

        def stat(name: str) -> dict:  # n and judged: the page says why a test has no figure yet
            r = by[(name, "time")]
            return {"statistic": r.statistic, "p_value": r.p_value, "n": r.n, "judged": r.judged}

        def window(w: WindowCounts) -> dict:
            return {"seconds": w.seconds, "size": w.size, "total": int(w.total),
                    "class_counts": {str(c): int(n) for c, n in enumerate(w.class_counts) if n},
                    "low_confidence_share": round(w.low_confidence_share, 6), "unreadable": int(w.unreadable),
                    "other_classes": int(w.other_classes), "screened": int(w.screened), "flagged": int(w.flagged)}

        incidents = []
        for group in INCIDENTS:
            if rec := self.incidents.get(group):
                incidents.append({"group": group, "check": rec["checks"][0], "checks": rec["checks"],
                                  "state": "open", "violation_id": rec["violation_id"], "since": rec["since"]})
        for rec in self.incidents.recently_resolved()[:10]:
            incidents.append({"group": rec["group"], "check": rec["checks"][0], "checks": rec["checks"],
                              "state": "resolved", "violation_id": rec["violation_id"], "since": rec["since"]})
        return {
            "endpoint": self.config.endpoint, "time": _iso(now), "baseline_id": self._baseline_id,
            "model_version": self.model_version, "num_classes": self.num_classes,
            "window": window(tw), "count_window": window(cw),
            "baseline": {"class_shares": {str(c): round(float(s), 6) for c, s in enumerate(b.class_shares)},
                         "low_confidence_share": round(b.low_confidence_share, 6),
                         "accuracy": b.accuracy, "item_count": b.item_count,
                         "model": b.model} if b is not None else None,
            "baseline_status": self.baseline_status,
            "drift": {k.name: stat(k.name) for k in CHECKS if k.kind == "window" and k.budget_share
                      and (k.name, "time") in by},
            "estimated_accuracy": ev.estimated_accuracy if ev else None,
            "alpha_per_test": {k.name: self.alpha(k.name) for k in CHECKS if k.kind == "window" and k.budget_share},
            # the highest log S (nats) since the evaluation before: a check that alarmed restarted from 0
            "sequential": {k.name: by[(k.name, "count")].statistic for k in CHECKS
                           if k.kind == "sequential" and (k.name, "count") in by} or None,
            "incidents": incidents,
            # the share check's sequential view: log S, its threshold, the tail bounds it judges by
            "screening": self.screening_detector.summary(now)
            if self.screening_detector is not None and self.screening_detector.seen else None,
            "quality": self.quality,
        }

    def _write_snapshot(self, now: float) -> None:
        self._last_snapshot = self.clock()
        if self.sequential is not None:  # a restarted monitor goes on from here (losing it is safe)
            self.state.set_value(sequential_key(self.config.endpoint), json.dumps(self.sequential.to_state()),
                                 7 * 86_400)
        self.state.set_value(snapshot_key(self.config.endpoint), json.dumps(self.snapshot(now)), 86_400)


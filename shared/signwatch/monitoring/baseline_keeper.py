"""The baseline the monitor judges with, where it came from, and the one it learns meanwhile.

``BaselineKeeper`` owns the monitor's current baseline, its status line and its source ("given"
by the caller, "store" (uploaded), "learned", "shipped", "none"). It loads the store's baseline
when it was made for the served model's classes, re-reads the store every ``baseline_reload_s``
(an upload, or a baseline another replica learned, takes over), and refuses, once and logged, one
made for other classes. ``baseline.py`` is the baseline itself (files, parsing, the store's
layout); this module is the monitor's keeping of it.

With none uploaded it learns one from the endpoint's first traffic (``learning``) and takes it
over when enough was seen, claimed in the baseline outbox; the service publishes the
``BaselineEvent`` (``take_events``, then ``published``; a sweep publishes what a dead claimer
left, ``unpublished_events``). Meanwhile the shipped baseline, for a model with the GTSRB
classes, judges confidence, margin and low confidence, never class shares unless asked
(``judge_classes``). The shipped baseline is never written to the store: the learned one goes
there.

The served model (its classes and version) and the newest event time belong to the ``Monitor``
and change while it runs: each call that may change the baseline gets them as one ``Served``
value, so the keeper holds no reference back to the monitor. ``Monitor`` keeps ``baseline``,
``baseline_status``, ``baseline_source``, ``judge_classes``, ``learning``, ``baseline_outbox``
and the baseline-event calls as thin properties over this.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from signwatch.events import BaselineEvent, InferenceEvent
from signwatch.monitoring import baseline as bl
from signwatch.monitoring.features import Features
from signwatch.monitoring.learning import LearnedOutbox, Learning, is_shipped, learned, write_if_free
from signwatch.ports.state import StateStore
from signwatch.ports.store import ObjectStore

if TYPE_CHECKING:
    from signwatch.monitoring.monitor import MonitorConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    """What the monitor has at the call: the served model's classes and version, and the event
    time of the newest event seen (the learning's clock)."""

    class_names: tuple[str, ...]
    model_version: str | None
    now_ts: float

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class BaselineKeeper:
    def __init__(self, state: StateStore, store: ObjectStore, config: MonitorConfig, clock: Callable[[], float],
                 baseline: bl.Baseline | None, served: Served) -> None:
        self.state, self.store, self.config, self.clock = state, store, config, clock
        self.prefix = config.baseline_prefix or bl.store_prefix(config.endpoint)
        self._fixed = baseline is not None  # given by the caller: never reloaded, nothing learned
        if baseline is not None:
            bl.check_baseline_fits(baseline, served.num_classes)
        self.status = "given" if baseline is not None else ""
        self._source = "given" if baseline is not None else "none"  # source
        self._refused: tuple[str, int] | None = None   # the store's baseline refused for this class count
        self.learning = self._learning(served.class_names)
        self.outbox = LearnedOutbox(state, config.endpoint, config.outbox_grace_s)
        self._learned_events: list[BaselineEvent] = []  # claimed here, for the service to publish
        self.baseline = baseline if baseline is not None else self._load(served)
        self._checked = self.clock()

    def set_model(self, served: Served) -> None:
        """A new model is served: take a baseline made for its classes (the store's, else none),
        or refuse the given one when it was made for other classes."""
        if not self._fixed:
            self.baseline = self._load(served)
            self._checked = self.clock()
        elif self.baseline is not None and len(self.baseline.class_counts) != served.num_classes:
            log.error("the given baseline counts %d classes, the served model now has %d: drift checks stop",
                      len(self.baseline.class_counts), served.num_classes)
            self.baseline, self.status = None, "refused: made for other classes"

    @property
    def source(self) -> str:
        """Where the baseline judging now comes from: "given" (by the caller), "store" (uploaded),
        "learned" (from this endpoint's first traffic), "shipped" (rendered GTSRB signs), "none"."""
        return self._source if self.baseline is not None else "none"

    @property
    def judge_classes(self) -> bool:
        """Whether the class checks may judge the traffic's class shares with this baseline: not
        with the shipped one (rendered signs in uniform shares, not a road's mix) unless asked."""
        return self.baseline is not None and (self._source != "shipped" or self.config.shipped_class_checks)

    # -- the store's baseline -------------------------------------------------------------------
    def _load(self, served: Served) -> bl.Baseline | None:
        """The store's baseline when it was made for these classes. Without one (or with only the
        shipped one, which earlier versions wrote there), the monitor learns one from the traffic
        (``learning``; ``maybe_take_over_learned``) and meanwhile judges with the shipped baseline
        when the served model has the GTSRB classes, never their class shares unless
        ``shipped_class_checks`` (``judge_classes``), else with none. The shipped baseline is never
        written to the store: the learned one goes there."""
        if self.learning.class_names != served.class_names:
            self.learning = self._learning(served.class_names)  # another model: its own counts
        files = bl.read_store(self.store, self.prefix)
        if files is not None and not self._shipped_in_store(files, served):
            self._source = "none"
            return self._parse(files, served, "learned" if learned(files[0]) else "store")
        self.baseline = (self._parse(bl.shipped_files(), served, "shipped")
                         if bl.for_shipped_classes(served.class_names) else None)
        self._source = "shipped" if self.baseline is not None else "none"
        self.status = self._learning_status(served)
        log.warning("%s", self.status)
        return self.baseline

    def _parse(self, files: tuple[dict, dict], served: Served, source: str = "store") -> bl.Baseline | None:
        try:
            baseline = bl.load(*files, n_classes=served.num_classes, overrides=self.config.overrides)
        except ValueError as exc:
            key = (bl.baseline_id(*files), served.num_classes)
            self.status = f"refused: the baseline at {self.prefix} is not usable: {exc}"
            if self._refused != key:  # once per baseline and model, not every reload
                self._refused = key
                log.error("%s; running without it (over-prediction and completeness only)", self.status)
            return None
        made_for = (baseline.model or {}).get("version")
        if made_for and served.model_version and made_for != served.model_version:
            log.warning("baseline %s was made for model %s, the served model is %s (same %d classes): using it",
                        baseline.baseline_id, made_for, served.model_version, served.num_classes)
        self.status, self._refused, self._source = "loaded", None, source
        return baseline

    def maybe_reload(self, served: Served) -> None:
        """Every ``baseline_reload_s``: take over a new baseline from the store (an upload, or one
        another replica learned)."""
        if self._fixed or self.clock() - self._checked < self.config.baseline_reload_s:
            return
        self._checked = self.clock()
        try:
            files = bl.read_store(self.store, self.prefix)
        except ValueError as exc:
            log.error("the baseline in the store is not readable (%s): keeping what the monitor has", exc)
            return
        if files is None or (self.baseline is not None and bl.baseline_id(*files) == self.baseline.baseline_id):
            return
        if self._shipped_in_store(files, served) or self._refused == (bl.baseline_id(*files), served.num_classes):
            return  # the shipped one an earlier version wrote (not an upload), or refused before and logged then
        fresh = self._parse(files, served, "learned" if learned(files[0]) else "store")
        if fresh is not None:
            self.baseline = fresh
            log.warning("baseline changed: now %s (%s)", fresh.baseline_id, self._source)
        elif self.baseline is not None:
            self.status = f"loaded (a newer one was refused: {self.status})"

    def _shipped_in_store(self, files: tuple[dict, dict], served: Served) -> bool:
        """The shipped baseline, written to the store by an earlier version: not an upload (for
        a model with the GTSRB classes; for another it is a baseline for other classes, refused)."""
        return is_shipped(files) and bl.for_shipped_classes(served.class_names)

    # -- a baseline learned from the first traffic (learning.py) ---------------------------------
    def _learning(self, class_names: tuple[str, ...]) -> Learning:
        return Learning(self.state, self.config.endpoint, class_names, self.config.learn_baseline_s,
                        self.config.learn_baseline_min_count)

    @property
    def _learning_on(self) -> bool:
        """No baseline was uploaded (nor refused): the monitor learns one."""
        return (self.learning.enabled and not self._fixed and self._source in ("none", "shipped")
                and self._refused is None)

    def _learning_status(self, served: Served, progress=None) -> str:
        why = f"no baseline at {self.prefix} for model {served.model_version} ({served.num_classes} classes)"
        if self.source == "shipped":
            meanwhile = "the shipped baseline judges confidence, margin and low confidence" + (
                " and class shares" if self.judge_classes else ", not class shares")
        else:
            meanwhile = "over-prediction and completeness run, the drift checks wait"
        if not self._learning_on:
            head = "shipped" if self.baseline is not None else "waiting"
            return f"{head}: {why}; {meanwhile}; upload one: {bl.SUGGEST_HINT}"
        progress = progress or self.learning.progress()
        return (f"{self.learning.status(progress, served.now_ts)} ({why}; meanwhile {meanwhile}; or upload one: "
                f"{bl.SUGGEST_HINT})")

    def learn(self, items: list[tuple[InferenceEvent, Features]]) -> None:
        """Count predictions the windows counted for the first time, while learning."""
        if self._learning_on:
            self.learning.add(items)

    def maybe_take_over_learned(self, served: Served) -> None:
        """While learning, at each evaluation (two reads): the status, and once the traffic
        learned from is long and large enough, the takeover. One replica claims it (with the event and the
        files, in the outbox), writes the files to the store and judges with them; the others
        read them from the store at their next evaluation."""
        if not self._learning_on:
            return
        progress = self.learning.progress()
        self.status = self._learning_status(served, progress)
        now = served.now_ts
        if not self.learning.due(progress, now):
            return
        try:
            files = self.learning.files(progress, now, served.model_version)
        except ValueError as exc:  # counts that do not add up: never expected, never fatal
            log.error("the learned baseline cannot be made (%s): learning goes on", exc)
            return
        if self.baseline is not None and self._same_model(self.baseline, served):
            files = bl.with_calibration(files, self.baseline)  # the estimate stays calibrated
        event = BaselineEvent(endpoint=self.config.endpoint, variant=self.config.variant,
                              model_version=served.model_version, num_classes=served.num_classes,
                              baseline_id=bl.baseline_id(*files), item_count=progress.total,
                              learned_from=datetime.fromtimestamp(progress.first_ts, timezone.utc),
                              learned_to=datetime.fromtimestamp(now, timezone.utc),
                              statistics=f"{self.prefix}/{bl.STATISTICS}",
                              constraints=f"{self.prefix}/{bl.CONSTRAINTS}",
                              previous=self.source,
                              previous_baseline_id=self.baseline.baseline_id if self.baseline is not None else None)
        if not self.learning.claim(self.outbox, event, files, progress.first_ts):
            self._checked = float("-inf")  # another replica took it over: read its files next time
            return
        if not write_if_free(self.store, self.prefix, files):
            self.outbox.done(event)  # an upload came first: it judges from the next reload
            self._checked = float("-inf")
            return
        fresh = self._parse(files, served, "learned")
        if fresh is not None:
            self.baseline = fresh
            self._learned_events.append(event)
            log.warning("baseline %s learned from %d predictions (%s to %s) took over from %s; written to %s",
                        event.baseline_id, event.item_count, event.learned_from.isoformat(),
                        event.learned_to.isoformat(), event.previous, self.prefix)

    def _same_model(self, baseline: bl.Baseline, served: Served) -> bool:
        """Whether ``baseline`` was made for the served model (its calibration then holds): its
        recorded version, or, for the shipped baseline (which records none), the shipped model's."""
        version = (baseline.model or {}).get("version")
        if version is None and self.source == "shipped":
            from signwatch.model.core import load_spec

            version = load_spec().version
        return version is not None and version == served.model_version

    def take_events(self) -> list[BaselineEvent]:
        """The takeover events this replica claimed since the last call: the service publishes
        each and then calls ``published`` (until then each waits in the outbox)."""
        out, self._learned_events = self._learned_events, []
        return out

    def published(self, event: BaselineEvent) -> None:
        self.outbox.done(event)

    def unpublished_events(self) -> list[BaselineEvent]:
        """A sweep's share: takeover events claimed and never acknowledged whose claimer's lease
        ran out, their files written first when the store still has no baseline."""
        return self.outbox.recover(self.store, self.prefix)

"""The streaming monitor behind one call: ``Monitor.observe(event) -> list[ViolationEvent]``.

Each event is counted into both windows (one atomic state-store call). The checks run every
``check_every_events`` events or every ``check_interval_s`` of the monitor's clock, whichever
comes first (``tick()`` runs a pending evaluation when no event arrives), so the per-event cost
stays bounded. A failing check opens an episode (one violation across replicas), a check that
passed for a while resolves it. Violations carry sample inputs as store references with their
sha256 and are also written to the store as SageMaker ``constraint_violations.json``. The
snapshot that dashboards read (``read_snapshot``) is refreshed at most once a second.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from signwatch.events import (
    MAX_VIOLATION_BYTES, MAX_VIOLATION_SAMPLES, InferenceEvent, ViolationCheck, ViolationEvent,
    ViolationSample, ViolationWindow,
)
from signwatch.monitoring import baseline as bl
from signwatch.monitoring.checks import CheckResult, WindowCounts, alpha_per_test, estimated_accuracy, run_checks
from signwatch.monitoring.episodes import Episodes
from signwatch.monitoring.features import features_of
from signwatch.monitoring.windows import Windows
from signwatch.ports.state import StateStore
from signwatch.ports.store import ObjectStore

log = logging.getLogger(__name__)
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "application/x-npy": "npy"}
CHECK_FEATURES = (("over_prediction", "PredictedClass"), ("class_drift_chi2", "PredictedClass"),
                  ("class_drift_linf", "PredictedClass"), ("low_confidence", "Confidence"),
                  ("ks_confidence", "Confidence"), ("ks_margin", "Margin"), ("completeness", "InferenceEvent"))


def snapshot_key(endpoint: str) -> str:
    return f"signwatch:snapshot:{endpoint}"


def read_snapshot(state: StateStore, endpoint: str) -> dict | None:
    """The monitor's latest view of ``endpoint`` (windows, baseline, drift, episodes), or None."""
    raw = state.get_value(snapshot_key(endpoint))
    return json.loads(raw) if raw else None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


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
    snapshot_interval_s: float = 1.0
    baseline_prefix: str | None = None
    baseline_reload_s: float = 30.0
    reports_prefix: str = "monitoring"
    overrides: dict = field(default_factory=dict)

    @classmethod
    def from_settings(cls, s) -> "MonitorConfig":
        overrides = {"over_prediction_share": s.monitor_share_threshold, "low_confidence": s.monitor_low_confidence,
                     "min_over_prediction": s.monitor_min_predictions, "min_drift": s.monitor_min_drift,
                     "alpha_per_day": s.monitor_alpha_per_day}
        return cls(endpoint=s.endpoint, variant=s.variant, window_s=s.monitor_window_seconds,
                   bucket_s=s.monitor_bucket_seconds, count_n=s.monitor_count_window,
                   samples_per_class=s.monitor_samples_per_class, check_every_events=s.monitor_check_every_events,
                   check_interval_s=s.monitor_check_interval_seconds, resolve_after_s=s.monitor_resolve_after_seconds,
                   baseline_prefix=s.monitor_baseline_prefix, overrides=overrides)


@dataclass
class Evaluation:
    time: float
    windows: list[WindowCounts]
    results: list[CheckResult]
    estimated_accuracy: float | None


class Monitor:
    def __init__(self, state: StateStore, store: ObjectStore, config: MonitorConfig,
                 class_names: tuple[str, ...], baseline: bl.Baseline | None = None, clock=time.monotonic,
                 model_version: str | None = None) -> None:
        self.state, self.store, self.config, self.class_names = state, store, config, class_names
        self.clock = clock
        self.model_version = model_version
        self.windows = Windows(state, config.endpoint, config.window_s, config.bucket_s, config.count_n,
                               config.samples_per_class, len(class_names))
        self.episodes = Episodes(state, config.endpoint, config.resolve_after_s)
        self.baseline_prefix = config.baseline_prefix or bl.store_prefix(config.endpoint)
        self._fixed_baseline = baseline is not None
        self.baseline = baseline or self._load_baseline()
        self._baseline_checked = self.clock()
        self._since_check = 0
        self._last_check = float("-inf")
        self._last_snapshot = float("-inf")
        self._now_ts = 0.0          # event time of the newest event seen
        self._tipping: InferenceEvent | None = None
        self.last: Evaluation | None = None
        self.windows.mark_alive()

    # -- baseline -----------------------------------------------------------------------------
    def _load_baseline(self) -> bl.Baseline:
        files = bl.read_store(self.store, self.baseline_prefix)
        if files is None:  # first start: publish the shipped baseline where operators replace it
            files = bl.shipped_files()
            bl.write_store(self.store, self.baseline_prefix, *files)
            log.info("no baseline under %s: wrote the shipped one", self.baseline_prefix)
        return bl.load(*files, n_classes=len(self.class_names), overrides=self.config.overrides)

    def _maybe_reload_baseline(self) -> None:
        if self._fixed_baseline or self.clock() - self._baseline_checked < self.config.baseline_reload_s:
            return
        self._baseline_checked = self.clock()
        try:
            files = bl.read_store(self.store, self.baseline_prefix)
            if files and bl.baseline_id(*files) != self.baseline.baseline_id:
                self.baseline = bl.load(*files, n_classes=len(self.class_names), overrides=self.config.overrides)
                log.warning("baseline changed: now %s", self.baseline.baseline_id)
        except ValueError as exc:
            log.error("the baseline in the store is not usable (%s): keeping %s", exc, self.baseline.baseline_id)

    @property
    def alpha(self) -> float:
        return alpha_per_test(self.baseline.thresholds.alpha_per_day, self.config.check_interval_s)

    # -- the one call -------------------------------------------------------------------------
    def observe(self, event: InferenceEvent) -> list[ViolationEvent]:
        if event.endpoint != self.config.endpoint:
            return []
        f = features_of(event.output.predictions, self.baseline.thresholds.low_confidence)
        self.windows.record(event, f)
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
            low = self.baseline.thresholds.low_confidence
            self.windows.record_many([(e, features_of(e.output.predictions, low)) for e in part])
            self._now_ts = max(self._now_ts, max(e.time.timestamp() for e in part))
            self.model_version = part[-1].model_version
            self._since_check += len(part)
            self._tipping = part[-1]
            out += self.tick(force=self._since_check >= k)
        return out

    def observe_unreadable(self, token: str, ts: float | None = None) -> list[ViolationEvent]:
        ts = ts if ts is not None else (self._now_ts or time.time())
        self.windows.record_unreadable(ts, f"unreadable:{token}")
        self._since_check += 1
        return self.tick()

    def recount(self, event: InferenceEvent) -> bool:
        """Count an event again after the state store lost the windows (no checks run)."""
        if event.endpoint != self.config.endpoint:
            return False
        return self.windows.record(event, features_of(event.output.predictions, self.baseline.thresholds.low_confidence))

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
        if not self._since_check or (not force and self.clock() - self._last_check < self.config.check_interval_s):
            return []
        return self.evaluate()

    def evaluate(self) -> list[ViolationEvent]:
        self._maybe_reload_baseline()
        now = self._now_ts or time.time()
        tipping = self._tipping
        self._since_check, self._last_check = 0, self.clock()
        windows = [self.windows.time_window(now), self.windows.count_window()]
        results = [r for w in windows for r in run_checks(w, self.baseline, self.alpha, self.class_names)]
        self.last = Evaluation(now, windows, results, estimated_accuracy(windows[0], self.baseline))
        out: list[ViolationEvent] = []
        for check, feature in CHECK_FEATURES:
            mine = [r for r in results if r.name == check]
            failing = [r for r in mine if r.failing]
            record = self.episodes.get(check, feature)
            if failing:
                if record is not None:
                    self.episodes.refresh(record, now)
                    continue
                worst = min(failing, key=lambda r: (r.p_value if r.p_value is not None else 0.0, -(r.observed or 0)))
                violation = self._violation(worst, windows, tipping)
                if self.episodes.claim(check, feature, violation.violation_id, now, _iso(now)):
                    out.append(violation)
            elif record is not None and self.episodes.resolve_if_due(record, now):
                out.append(self._resolved(record, mine, now))
        if self.clock() - self._last_snapshot >= self.config.snapshot_interval_s or out:
            self._write_snapshot(now)
        return out

    def release(self, violation: ViolationEvent) -> None:
        """The violation could not be published: let the next evaluation raise it again."""
        if violation.state == "open":
            self.episodes.release(violation.check_name, violation.check.feature_name)

    # -- violations ---------------------------------------------------------------------------
    def _samples(self, result: CheckResult, counts: WindowCounts) -> list[ViolationSample]:
        if result.name == "completeness":
            return []
        if result.class_id is not None and result.name in ("over_prediction", "class_drift_linf"):
            raw = self.windows.samples(result.class_id)
        elif result.name == "class_drift_chi2":
            diff = counts.class_counts / max(1, counts.total) - self.baseline.class_shares
            raw = self.windows.samples(int(np.argmax(diff)))
        else:
            raw = self.windows.samples(None) or self.windows.samples(int(np.argmax(counts.class_counts)))
        out = []
        for s in raw[: min(self.config.samples_per_class, MAX_VIOLATION_SAMPLES)]:
            try:
                out.append(self._by_reference(s))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("sample %s left out: %s", s.get("event_id"), exc)
        return out

    def _by_reference(self, s: dict) -> ViolationSample:
        inp = s["input"]
        ref = inp.get("ref")
        if ref is None:  # inline in the event: move the bytes to the store, content-addressed
            raw = base64.b64decode(inp["data"])
            if hashlib.sha256(raw).hexdigest() != inp["sha256"]:
                raise ValueError("inline input does not match its sha256")
            ref = f"inputs/{self.config.endpoint}/samples/{inp['sha256']}.{EXTENSIONS.get(inp['content_type'], 'bin')}"
            if not self.store.exists(ref):
                self.store.put(ref, raw, inp["content_type"])
        return ViolationSample(event_id=s["event_id"], ref=ref, sha256=inp["sha256"], size=int(inp["size"]),
                               content_type=inp["content_type"], predicted_class=int(s["predicted_class"]),
                               probability=float(s["probability"]))

    def _violation(self, r: CheckResult, windows: list[WindowCounts], tipping: InferenceEvent | None) -> ViolationEvent:
        counts = next(w for w in windows if w.kind == r.window)
        now = self._now_ts or time.time()
        window = ViolationWindow(kind=r.window, seconds=counts.seconds, size=counts.size,
                                 start=datetime.fromtimestamp(now - counts.seconds, timezone.utc) if counts.seconds else None,
                                 end=datetime.fromtimestamp(now, timezone.utc))
        check = ViolationCheck(feature_name=r.feature, constraint_check_type=r.check_type, description=r.description)
        share = r.count / r.n if r.n and r.name in ("over_prediction", "class_drift_linf", "low_confidence") else None
        base = dict(endpoint=self.config.endpoint, variant=self.config.variant, model_version=self.model_version,
                    check=check, check_name=r.name, class_id=r.class_id if r.name == "over_prediction" else None,
                    share=round(share, 6) if share is not None else None, observed=r.observed,
                    statistic=r.statistic, p_value=r.p_value, threshold=r.threshold, count=r.count, total=r.n,
                    window_seconds=counts.seconds or 0, window=window, baseline_id=self.baseline.baseline_id,
                    tipped_at=tipping.time if tipping else None)
        draft = ViolationEvent(**base)
        report = (f"{self.config.reports_prefix}/{self.config.endpoint}/violations/"
                  f"{draft.time:%Y/%m/%d/%H}/{draft.violation_id}/constraint_violations.json")
        samples = self._samples(r, counts)
        violation = draft.model_copy(update={"samples": samples, "report": report})
        while len(violation.to_bytes()) > MAX_VIOLATION_BYTES and violation.samples:  # never over the limit
            violation = violation.model_copy(update={"samples": violation.samples[: len(violation.samples) // 2]})
        self.store.put(report, json.dumps({"violations": [check.model_dump()]}, indent=2).encode(), "application/json")
        return violation

    def _resolved(self, record: dict, results: list[CheckResult], now: float) -> ViolationEvent:
        r = min(results, key=lambda r: r.p_value if r.p_value is not None else 1.0)
        check = ViolationCheck(feature_name=record["feature"], constraint_check_type=r.check_type,
                               description=f"{record['check']} passed again since {_iso(record['last_failing'])}")
        return ViolationEvent(violation_id=record["violation_id"], state="resolved", endpoint=self.config.endpoint,
                              variant=self.config.variant, model_version=self.model_version, check=check,
                              check_name=record["check"], observed=r.observed, statistic=r.statistic,
                              p_value=r.p_value, threshold=r.threshold, count=r.count, total=r.n,
                              window_seconds=self.config.window_s, baseline_id=self.baseline.baseline_id)

    # -- snapshot -----------------------------------------------------------------------------
    def snapshot(self, now: float) -> dict:
        ev = self.last
        b = self.baseline
        by = {(r.name, r.window): r for r in ev.results} if ev else {}
        tw = ev.windows[0] if ev else WindowCounts.empty("time", len(self.class_names), seconds=self.config.window_s)
        cw = ev.windows[1] if ev else WindowCounts.empty("count", len(self.class_names), size=self.config.count_n)

        def stat(name: str, p: bool = True) -> dict:
            r = by.get((name, "time"))
            out = {"statistic": r.statistic if r else None}
            return out | {"p_value": r.p_value if r else None} if p else out

        def window(w: WindowCounts) -> dict:
            return {"seconds": w.seconds, "size": w.size, "total": int(w.total),
                    "class_counts": {str(c): int(n) for c, n in enumerate(w.class_counts) if n},
                    "low_confidence_share": round(w.low_confidence_share, 6), "unreadable": int(w.unreadable)}

        episodes = []
        for check, feature in CHECK_FEATURES:
            rec = self.episodes.get(check, feature)
            if rec:
                episodes.append({"check": check, "feature": feature, "state": "open",
                                 "violation_id": rec["violation_id"], "since": rec["since"]})
        for rec in self.episodes.recently_resolved()[:10]:
            episodes.append({"check": rec["check"], "feature": rec["feature"], "state": "resolved",
                             "violation_id": rec["violation_id"], "since": rec["since"]})
        return {
            "endpoint": self.config.endpoint, "time": _iso(now), "baseline_id": b.baseline_id,
            "model_version": self.model_version,
            "window": window(tw), "count_window": window(cw),
            "baseline": {"class_shares": {str(c): round(float(s), 6) for c, s in enumerate(b.class_shares)},
                         "low_confidence_share": round(b.low_confidence_share, 6),
                         "accuracy": b.accuracy, "item_count": b.item_count},
            "drift": {"chi2": stat("class_drift_chi2"), "linf": stat("class_drift_linf", p=False),
                      "ks_confidence": stat("ks_confidence"), "ks_margin": stat("ks_margin")},
            "estimated_accuracy": ev.estimated_accuracy if ev else None,
            "alpha_per_test": self.alpha,
            "episodes": episodes,
        }

    def _write_snapshot(self, now: float) -> None:
        self._last_snapshot = self.clock()
        self.state.set_value(snapshot_key(self.config.endpoint), json.dumps(self.snapshot(now)), 86_400)

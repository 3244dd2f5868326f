"""Prometheus metrics of the monitor: what it counts, what it tests, what it raised, how late."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from signwatch.events import InferenceEvent, ViolationEvent
from signwatch.ports.bus import Message


EXPLANATION_PATH = "/dashboard/violations/{violation_id}/"  # services/explainer/dashboard.py serves it
OPEN_LABELS = ["endpoint", "violation_id", "check", "class_id", "description", "explanation_url"]


def explanation_url(dashboard_url: str, violation_id: str) -> str:
    """Where a person sees the violation's explanation (the explainer's dashboard)."""
    return dashboard_url.rstrip("/") + EXPLANATION_PATH.format(violation_id=violation_id)


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry | None, endpoint: str, dashboard_url: str = "") -> None:
        r = registry or CollectorRegistry()
        self.endpoint = endpoint
        self.dashboard_url = dashboard_url
        # One series per open incident (bounded: one per incident group and endpoint), removed when
        # it resolves: what the ViolationOpen alert fires on (deploy/prometheus/alerts.yml). Every
        # replica shows the same ones, read from the state store, not only the one that published.
        self.violation_open = Gauge("signwatch_violation_open",
                                    "1 while the violation is open (its incident not resolved), with its "
                                    "description and the link to its explanation", OPEN_LABELS, registry=r)
        self._open: set[tuple[str, ...]] = set()
        self.predictions = Counter("signwatch_monitor_predictions_total",
                                   "Predictions counted into the windows, by class (each once; frames folded "
                                   "into an object counted seconds before are in frames_folded_total)",
                                   ["endpoint", "class_id"], registry=r)
        self.low_share = Gauge("signwatch_monitor_low_confidence_share", "Low-confidence share by window",
                               ["endpoint", "window"], registry=r)
        self.statistic = Gauge("signwatch_monitor_drift_statistic", "Drift statistic by check and window",
                               ["endpoint", "check", "window"], registry=r)
        self.p_value = Gauge("signwatch_monitor_drift_p_value", "Drift p-value by check and window",
                             ["endpoint", "check", "window"], registry=r)
        self.accuracy = Gauge("signwatch_monitor_estimated_accuracy", "Label-free accuracy estimate (time window)",
                              ["endpoint"], registry=r)
        self.violations = Counter("signwatch_monitor_violations_total", "Violations published, by check and state",
                                  ["endpoint", "check", "state"], registry=r)
        self.unpublishable = Counter("signwatch_monitor_unpublishable_total", "Violations too large to publish",
                                     ["endpoint"], registry=r).labels(endpoint)
        self.republished = Counter("signwatch_monitor_outbox_republished_total",
                                   "Violations re-published from the outbox: claimed, never acknowledged by the "
                                   "bus (the claimer died, or its publish failed)", ["endpoint"],
                                   registry=r).labels(endpoint)
        self.outbox_pending = Gauge("signwatch_monitor_outbox_pending", "Violations claimed and not yet published, "
                                    "at the last sweep", ["endpoint"], registry=r).labels(endpoint)
        self.latency = Histogram("signwatch_monitor_detection_latency_seconds",
                                 "From the event that tipped a check to its violation published", ["endpoint"],
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=r).labels(endpoint)
        self.lag = Gauge("signwatch_monitor_consumer_lag_seconds", "How far behind the newest event the monitor is",
                         ["endpoint"], registry=r).labels(endpoint)
        self.unreadable = Counter("signwatch_monitor_unreadable_total",
                                  "Events counted as unreadable (completeness), by reason: not_an_event, "
                                  "class_out_of_range (not one of the served model's classes), no_predictions",
                                  ["endpoint", "reason"], registry=r)
        self.folded = Counter("signwatch_monitor_frames_folded_total",
                              "Frames not counted on their own: one more frame of an object counted seconds ago "
                              "(tracks), by what matched it: hash (near-duplicate image), name (track=...)",
                              ["endpoint", "by"], registry=r)

        # Model quality from labels (monitoring/model_quality.py), per window of labelled pairs:
        # "time" (matched in the quality window) and "count" (the last N matched).
        self.quality = Gauge("signwatch_monitor_quality_metric",
                             "Model-quality metric of the labelled predictions (SageMaker's multiclass metrics: "
                             "accuracy, weighted_precision, weighted_recall, weighted_f0_5, weighted_f1, weighted_f2), "
                             "and estimated_accuracy: the label-free estimate over the same predictions",
                             ["endpoint", "metric", "window"], registry=r)
        self.quality_labels = Gauge("signwatch_monitor_quality_labels", "Labelled predictions in the window",
                                    ["endpoint", "window"], registry=r)
        self.estimate_error = Gauge("signwatch_monitor_estimate_error",
                                    "Label-free accuracy estimate minus the realised accuracy, same predictions",
                                    ["endpoint", "window"], registry=r)
        self.join = Gauge("signwatch_ground_truth_join", "The label join over the retention window: matched, "
                          "duplicates, predictions_pending (no label yet), labels_waiting (no prediction yet)",
                          ["endpoint", "state"], registry=r)

    def observed(self, message: Message) -> None:
        self.lag.set(max(0.0, time.time() - message.timestamp_ms / 1000))

    def counted(self, class_id: int) -> None:
        self.predictions.labels(self.endpoint, str(class_id)).inc()

    def unreadable_seen(self, reason: str, event: InferenceEvent | None = None) -> None:
        self.unreadable.labels(self.endpoint, reason).inc()

    def folded_seen(self, by: str, n: int) -> None:
        self.folded.labels(self.endpoint, by).inc(n)

    def evaluated(self, evaluation) -> None:
        for w in evaluation.windows:
            self.low_share.labels(self.endpoint, w.kind).set(w.low_confidence_share)
        for r in evaluation.results:
            if r.statistic is not None:
                self.statistic.labels(self.endpoint, r.name, r.window).set(r.statistic)
            if r.p_value is not None:
                self.p_value.labels(self.endpoint, r.name, r.window).set(r.p_value)
        if evaluation.estimated_accuracy is not None:
            self.accuracy.labels(self.endpoint).set(evaluation.estimated_accuracy)
        if evaluation.quality:
            self._quality(evaluation.quality)

    def _quality(self, q: dict) -> None:
        for window in ("time", "count"):
            figures = q.get(window) or {}
            self.quality_labels.labels(self.endpoint, window).set(figures.get("labels", 0))
            for metric, value in figures.items():
                if metric not in ("labels", "confusion", "estimate_error") and value is not None:
                    self.quality.labels(self.endpoint, metric, window).set(value)
            if figures.get("estimate_error") is not None:
                self.estimate_error.labels(self.endpoint, window).set(figures["estimate_error"])
        for state, n in (q.get("join") or {}).items():
            self.join.labels(self.endpoint, state).set(n)

    def published(self, violation: ViolationEvent) -> None:
        self.violations.labels(self.endpoint, violation.check_name, violation.state).inc()
        if violation.state == "open" and violation.tipped_at is not None:
            self.latency.observe(max(0.0, time.time() - violation.tipped_at.timestamp()))

    def incidents_open(self, records: list[dict]) -> None:
        """The open incidents' records (``Incidents.open_records``): a series each, the rest removed."""
        now = set()
        for record in records:
            class_id = record.get("class_id")
            now.add((self.endpoint, record["violation_id"], record["checks"][0],
                     "" if class_id is None else str(class_id), record.get("description", ""),
                     explanation_url(self.dashboard_url, record["violation_id"])))
        for gone in self._open - now:
            self.violation_open.remove(*gone)
        for labels in now - self._open:
            self.violation_open.labels(*labels).set(1)
        self._open = now

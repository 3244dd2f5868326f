"""Monitoring rules: rolling class counts, low-confidence counts, and the checks on them.

The streaming monitor counts every inference event once (``ClassCounter.record``, exactly once
per event id through the state store's ``apply_once``) into time buckets keyed by the event's own
time, so a replay lands in the same buckets. ``check_counts`` is pure: the batch job over captured
files (``run_batch``) applies the same checks and writes SageMaker's violations report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from signwatch.events import InferenceEvent, ViolationCheck, ViolationSample
from signwatch.ports.state import Increment, Push, StateStore

TOTAL = "total"
LOW_CONFIDENCE = "low_confidence"


@dataclass(frozen=True)
class Rules:
    share_threshold: float = 0.5
    min_predictions: int = 20
    low_confidence: float = 0.5
    low_confidence_share: float = 0.5

    @classmethod
    def from_settings(cls, s) -> "Rules":
        return cls(s.monitor_share_threshold, s.monitor_min_predictions,
                   s.monitor_low_confidence, s.monitor_low_confidence_share)


@dataclass(frozen=True)
class Finding:
    check: ViolationCheck
    class_id: int | None
    count: int
    total: int

    @property
    def share(self) -> float:
        return self.count / self.total if self.total else 0.0


def class_field(class_id: int) -> str:
    return f"class:{class_id}"


def check_counts(counts: dict[str, int], rules: Rules, class_names: tuple[str, ...]) -> list[Finding]:
    total = counts.get(TOTAL, 0)
    if total < rules.min_predictions:
        return []
    findings = []
    for name, count in sorted(counts.items()):
        if not name.startswith("class:"):
            continue
        share = count / total
        if share > rules.share_threshold:
            class_id = int(name.split(":", 1)[1])
            label = class_names[class_id] if 0 <= class_id < len(class_names) else "unknown"
            findings.append(Finding(ViolationCheck(
                feature_name="PredictedClass",
                constraint_check_type="baseline_drift_check",
                description=(f"Class {class_id} ({label}) predicted {share:.2%} of the time: "
                             f"exceeded {rules.share_threshold:.2%} threshold"),
            ), class_id, count, total))
    low = counts.get(LOW_CONFIDENCE, 0)
    if low / total > rules.low_confidence_share:
        findings.append(Finding(ViolationCheck(
            feature_name="Confidence",
            constraint_check_type="baseline_drift_check",
            description=(f"Top-1 confidence below {rules.low_confidence:.2f} for {low / total:.2%} "
                         f"of predictions: exceeded {rules.low_confidence_share:.2%} threshold"),
        ), None, low, total))
    return findings


@dataclass
class ClassCounter:
    state: StateStore
    endpoint: str
    window_s: int = 3600
    bucket_s: int = 60
    low_confidence: float = 0.5
    samples_per_class: int = 8

    def _bucket_key(self, bucket: int) -> str:
        return f"signwatch:counts:{self.endpoint}:{bucket}"

    def samples_key(self, class_id: int | None) -> str:
        return f"signwatch:samples:{self.endpoint}:{'low' if class_id is None else class_id}"

    def record(self, event: InferenceEvent) -> bool:
        """Count one event; False when this event id was counted before (a replay)."""
        top = event.output.predictions[0]
        bucket = int(event.time.timestamp()) // self.bucket_s
        ttl = self.window_s + 2 * self.bucket_s
        key = self._bucket_key(bucket)
        low = top.probability < self.low_confidence
        increments = [Increment(key, TOTAL, 1, ttl), Increment(key, class_field(top.class_id), 1, ttl)]
        sample = ViolationSample(event_id=event.event_id, input=event.input,
                                 predicted_class=top.class_id, probability=top.probability)
        pushes = [Push(self.samples_key(top.class_id), sample.model_dump_json(), self.samples_per_class, ttl)]
        if low:
            increments.append(Increment(key, LOW_CONFIDENCE, 1, ttl))
            pushes.append(Push(self.samples_key(None), sample.model_dump_json(), self.samples_per_class, ttl))
        return self.state.apply_once(f"signwatch:seen:{event.event_id}", ttl, increments, pushes)

    def window_counts(self, now_ts: float) -> dict[str, int]:
        last = int(now_ts) // self.bucket_s
        first = (int(now_ts) - self.window_s) // self.bucket_s + 1
        totals: dict[str, int] = {}
        for h in self.state.get_counts([self._bucket_key(b) for b in range(first, last + 1)]):
            for f, v in h.items():
                totals[f] = totals.get(f, 0) + v
        return totals

    def samples(self, class_id: int | None) -> list[ViolationSample]:
        return [ViolationSample.model_validate_json(s) for s in self.state.get_list(self.samples_key(class_id))]


def run_batch(files: list[bytes], rules: Rules, class_names: tuple[str, ...]) -> dict:
    """The scheduled job over captured files: class counts and SageMaker's violations report."""
    from signwatch.capture import read_capture_lines

    counts: dict[str, int] = {}
    unreadable = 0
    for data in files:
        records, bad = read_capture_lines(data)
        unreadable += bad
        for record in records:
            try:
                output = json.loads(record["captureData"]["endpointOutput"]["data"])
                top = output["predictions"][0]
                class_id, prob = int(top["class_id"]), float(top["probability"])
            except (ValueError, KeyError, TypeError, IndexError):
                unreadable += 1
                continue
            counts[TOTAL] = counts.get(TOTAL, 0) + 1
            counts[class_field(class_id)] = counts.get(class_field(class_id), 0) + 1
            if prob < rules.low_confidence:
                counts[LOW_CONFIDENCE] = counts.get(LOW_CONFIDENCE, 0) + 1
    violations = [f.check.model_dump() for f in check_counts(counts, rules, class_names)]
    if unreadable:
        violations.append(ViolationCheck(
            feature_name="CaptureRecord", constraint_check_type="completeness_check",
            description=f"{unreadable} captured records could not be read",
        ).model_dump())
    predicted = {int(k.split(":")[1]): v for k, v in counts.items() if k.startswith("class:")}
    return {"violations": violations, "predicted_classes": dict(sorted(predicted.items())),
            "total": counts.get(TOTAL, 0), "unreadable": unreadable}

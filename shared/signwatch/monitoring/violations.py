"""The violation events of an incident: the one that opens it and the one that resolves it.

``ViolationWriter.violation`` builds the event that opens an incident: the first failing check
in the registry's order (its worst window) speaks for it and every failing check is named; it
carries sample inputs as object-store references with their sha256 (inline inputs are moved to
the store, content-addressed), stays under ``MAX_VIOLATION_BYTES``, and its SageMaker
``constraint_violations.json`` report is written to the store by the replica that wins the
incident's claim (``claimed``; a loser ``discard``s it). ``resolved`` builds the event
that ends an incident.

The writer is made once by the ``Monitor`` from what stays fixed (the store, the windows, the
config). What changes between evaluations (the baseline, the sequential checks, the served
model, the newest event time) comes with each call as one ``EvaluationContext``, so a violation
says what the evaluation that raised it judged with, and the writer holds no reference back to
the monitor.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np

from signwatch.events import (
    MAX_VIOLATION_BYTES, MAX_VIOLATION_SAMPLES, InferenceEvent, ViolationCheck, ViolationEvent, ViolationSample,
    ViolationWindow,
)
from signwatch.monitoring import registry
from signwatch.monitoring.baseline import CLASS_FEATURE, Baseline
from signwatch.monitoring.checks import CheckResult, WindowCounts
from signwatch.monitoring.registry import CHECKS
from signwatch.monitoring.sequential import SequentialChecks
from signwatch.monitoring.windows import Windows
from signwatch.ports.store import ObjectStore

if TYPE_CHECKING:
    from signwatch.monitoring.monitor import MonitorConfig

log = logging.getLogger(__name__)
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "application/x-npy": "npy"}


@dataclass(frozen=True)
class EvaluationContext:
    """What the monitor judged with at one evaluation."""

    baseline: Baseline | None
    sequential: SequentialChecks | None
    class_names: tuple[str, ...]
    model_version: str | None
    now_ts: float  # event time of the newest event seen (0: none yet, the wall clock stands in)
    # ids of recently labelled predictions the model got wrong (a quality violation's samples first)
    mistaken: frozenset[str] = frozenset()

    @property
    def baseline_id(self) -> str | None:
        return self.baseline.baseline_id if self.baseline is not None else None


class ViolationWriter:
    def __init__(self, store: ObjectStore, windows: Windows, config: MonitorConfig) -> None:
        self.store, self.windows, self.config = store, windows, config
        self._reports: dict[str, bytes] = {}  # built with a violation, written once it is claimed

    def violation(self, failing: list[CheckResult], windows: list[WindowCounts], tipping: InferenceEvent | None,
                  context: EvaluationContext) -> ViolationEvent:
        """One violation for the incident: the first failing check in the registry's order (its
        worst window) speaks for it, and every failing check is named."""
        r = _primary(failing)
        names = names_in_order(failing)
        counts = next(w for w in windows if w.kind == r.window)
        now = context.now_ts or time.time()
        seconds, size = counts.seconds, counts.size
        if registry.get(r.name).kind == "quality":  # a window of labelled pairs, not of predictions
            seconds, size = ((self.config.quality_window_s, None) if r.window == "time"
                             else (None, self.config.quality_last_n))
        window = ViolationWindow(kind=r.window, seconds=seconds, size=size,
                                 start=datetime.fromtimestamp(now - seconds, timezone.utc) if seconds else None,
                                 end=datetime.fromtimestamp(now, timezone.utc))
        also = [n for n in names if n != r.name]
        description = r.description + (f" (failing with it: {', '.join(also)})" if also else "")
        class_id = self._class_of(r, counts, context)
        if class_id is not None and r.class_id is None:  # the check did not name it: say which class rose
            label = context.class_names[class_id] if class_id < len(context.class_names) else "unknown"
            description += f"; class {class_id} ({label}) rose most against the baseline"
        check = ViolationCheck(feature_name=r.feature, constraint_check_type=r.check_type, description=description)
        base = dict(endpoint=self.config.endpoint, variant=self.config.variant, model_version=context.model_version,
                    check=check, check_name=r.name, checks=names, class_id=class_id,
                    share=round(r.count / r.n, 6) if r.count and r.n else None, observed=r.observed,
                    statistic=r.statistic, p_value=r.p_value, threshold=r.threshold, count=r.count, total=r.n,
                    window_seconds=seconds or 0, window=window, baseline_id=context.baseline_id,
                    tipped_at=tipping.time if tipping else None)
        draft = ViolationEvent(**base)
        report = (f"{self.config.reports_prefix}/{self.config.endpoint}/violations/"
                  f"{draft.time:%Y/%m/%d/%H}/{draft.violation_id}/constraint_violations.json")
        samples = self._samples(r, counts, context)
        violation = draft.model_copy(update={"samples": samples, "report": report})
        while len(violation.to_bytes()) > MAX_VIOLATION_BYTES and violation.samples:  # never over the limit
            violation = violation.model_copy(update={"samples": violation.samples[: len(violation.samples) // 2]})
        worst = {}  # each check once, at its worst window
        for f in sorted(failing, key=_order):
            worst.setdefault(f.name, f)
        failed = [ViolationCheck(feature_name=f.feature, constraint_check_type=f.check_type, description=f.description)
                  for f in worst.values()]
        self._reports[violation.violation_id] = json.dumps(
            {"violations": [v.model_dump() for v in failed]}, indent=2).encode()
        return violation

    def claimed(self, violation: ViolationEvent) -> None:
        """This replica won ``violation``'s claim: its ``constraint_violations.json`` is written
        now, by it alone (a replica that lost the claim leaves no orphan report: ``discard``)."""
        body = self._reports.pop(violation.violation_id, None)
        if body is not None and violation.report is not None:
            self.store.put(violation.report, body, "application/json")

    def discard(self, violation: ViolationEvent) -> None:
        self._reports.pop(violation.violation_id, None)

    def resolved(self, record: dict, results: list[CheckResult], context: EvaluationContext) -> ViolationEvent:
        """The incident of ``record`` is over: its primary check speaks for it (at its most
        significant window), every check it named is named again."""
        primary = registry.get(record["checks"][0])
        r = min([x for x in results if x.name == primary.name] or results,
                key=lambda r: r.p_value if r.p_value is not None else 1.0)
        check = ViolationCheck(feature_name=primary.feature, constraint_check_type=primary.check_type,
                               description=(f"incident of {', '.join(record['checks'])} over: every check clear "
                                            f"since {_iso(record['last_unclear'])}"))
        return ViolationEvent(violation_id=record["violation_id"], state="resolved", endpoint=self.config.endpoint,
                              variant=self.config.variant, model_version=context.model_version, check=check,
                              check_name=primary.name, checks=record["checks"], observed=r.observed,
                              statistic=r.statistic, p_value=r.p_value, threshold=r.threshold, count=r.count,
                              total=r.n, window_seconds=self.config.window_s, baseline_id=context.baseline_id)

    def _class_of(self, result: CheckResult, counts: WindowCounts, context: EvaluationContext) -> int | None:
        """The class a violation is about: the one its check names, else, for a check that shows
        the class whose share rose most (``registry``: samples "mover"), that one."""
        if result.class_id is not None and (registry.get(result.name).feature == CLASS_FEATURE
                                            or registry.get(result.name).samples == "mistaken"):
            return result.class_id
        return self._mover(result, counts, context) if registry.get(result.name).samples == "mover" else None

    def _mover(self, result: CheckResult, counts: WindowCounts, context: EvaluationContext) -> int:
        """The class whose share rose most: over the last predictions for a sequential check (a
        window still holds mostly the traffic before the shift), else in the check's window."""
        if registry.get(result.name).kind == "sequential" and context.sequential is not None:
            recent = context.sequential.mover()
            if recent is not None:
                return recent
        shares = counts.class_counts / max(1, counts.total)
        if context.baseline is not None:
            shares = shares - context.baseline.class_shares
        return int(np.argmax(shares))

    def _samples(self, result: CheckResult, counts: WindowCounts, context: EvaluationContext) -> list[ViolationSample]:
        how = registry.get(result.name).samples
        if how == "none":
            return []
        if how == "class":
            raw = self.windows.samples(self._class_of(result, counts, context))
        elif how == "mover":
            raw = self.windows.samples(self._mover(result, counts, context))
        elif how == "mistaken":  # the class the model answers wrongly most: its misclassified ones first
            raw = self.windows.samples(result.class_id) if result.class_id is not None else []
            raw = sorted(raw, key=lambda s: s.get("event_id") not in context.mistaken)
        else:  # "unsure": the low-confidence predictions, if any were kept
            raw = self.windows.samples(None) or self.windows.samples(self._mover(result, counts, context))
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


def names_in_order(results: list[CheckResult]) -> list[str]:
    """The checks of ``results``, each once, in the registry's order."""
    return list(dict.fromkeys(r.name for r in sorted(results, key=_order)))


def _order(r: CheckResult) -> tuple[int, float, float]:
    """The registry's order, then the more significant window, then the larger effect."""
    return (CHECKS.index(registry.get(r.name)), r.p_value if r.p_value is not None else 0.0, -(r.observed or 0.0))


def _primary(failing: list[CheckResult]) -> CheckResult:
    return min(failing, key=_order)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()

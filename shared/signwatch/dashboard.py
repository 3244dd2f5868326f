"""What the live dashboard shows, as one JSON document: ``DashboardReader.read()``.

Two sources: the monitor's snapshot in the state store (``signwatch.monitoring.read_snapshot``:
windows, baseline, drift statistics, incidents) and the explainer's reports in the object store
(``{explanations_prefix}/{violation_id}/report.json`` beside one PNG panel per sample: the
original, the input and the saliency overlay side by side). Reports never change once written,
so each is read once and kept; a poll lists the prefix and reads only what is new.
The reader is tolerant: a snapshot with fields missing (older monitor) or no snapshot at all
still gives a document, with ``null`` where nothing is known.

Labels and version are the served model's: ``model_facts`` (``signwatch.model.published.ModelFacts``,
the manifest the inference service published, re-read every 30 s) when it knows them, else the
``class_names`` and ``model_version`` the reader was built with.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from datetime import datetime, timezone

from signwatch.ports.state import StateStore
from signwatch.ports.store import ObjectStore, check_key

log = logging.getLogger(__name__)
MAX_CACHED_REPORTS = 2000
MAX_PANEL_KEY = 512  # characters of a panel's key, at most


def _read_snapshot(state: StateStore, endpoint: str) -> dict | None:
    try:
        from signwatch.monitoring import read_snapshot
    except ImportError:  # a monitor without snapshots: the page shows the violations only
        return None
    try:
        return read_snapshot(state, endpoint)
    except Exception as exc:  # noqa: BLE001 - a broken snapshot must not take the page down
        log.warning("snapshot of %s unreadable: %s", endpoint, exc)
        return None


def _shares(counts: dict | None) -> dict[str, float]:
    counts = {str(k): float(v) for k, v in (counts or {}).items()}
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def summarize_snapshot(snapshot: dict | None, class_names: tuple[str, ...] = ()) -> dict:
    """The snapshot reduced to what the page draws; every field optional."""
    snap = snapshot or {}
    window = snap.get("window") or {}
    baseline = snap.get("baseline") or {}
    counts = {str(k): int(v) for k, v in (window.get("class_counts") or {}).items()}
    live = _shares(counts)
    base = {str(k): float(v) for k, v in (baseline.get("class_shares") or {}).items()}
    ids = sorted({*live, *base}, key=lambda k: int(k) if k.isdigit() else 10**6)
    classes = [{"class_id": int(k) if k.isdigit() else k,
                "label": class_names[int(k)] if k.isdigit() and int(k) < len(class_names) else k,
                "count": counts.get(k, 0), "share": round(live.get(k, 0.0), 6),
                "baseline_share": round(base[k], 6) if k in base else None} for k in ids]
    drift = {name: {k: v for k, v in (stat or {}).items() if k in ("statistic", "p_value", "n", "judged")}
             for name, stat in (snap.get("drift") or {}).items()}
    return {
        "time": snap.get("time"),
        "baseline_id": snap.get("baseline_id"),
        "model_version": snap.get("model_version"),
        "window_seconds": window.get("seconds"),
        "total": window.get("total", sum(counts.values())),
        "classes": classes,
        "low_confidence_share": window.get("low_confidence_share"),
        "baseline_low_confidence_share": baseline.get("low_confidence_share"),
        "drift": drift,
        "estimated_accuracy": snap.get("estimated_accuracy"),
        "incidents": list(snap.get("incidents") or []),
    }


def violation_summary(report: dict, report_key: str, time_: str | None) -> dict:
    base = report_key.rsplit("/", 1)[0]
    return {
        "violation_id": report.get("violation_id"),
        "endpoint": report.get("endpoint"),
        "time": report.get("time") or time_,
        "check": report.get("check") or {},
        "method": report.get("method"),
        "looks_away_count": report.get("looks_away_count"),
        "panels": [{"key": s["key"], "label": s.get("label"), "probability": s.get("probability"),
                    "looks_away": s.get("looks_away")}
                   for s in report.get("samples", []) if str(s.get("key", "")).startswith(base + "/")],
        "report_key": report_key,
    }


class DashboardReader:
    def __init__(self, state: StateStore, store: ObjectStore, endpoint: str, explanations_prefix: str,
                 class_names: tuple[str, ...] = (), model_version: str | None = None,
                 max_violations: int = 6, list_every_s: float = 1.0, model_facts=None) -> None:
        self.state, self.store, self.endpoint = state, store, endpoint
        self.prefix = explanations_prefix.rstrip("/")
        self.class_names, self.model_version = class_names, model_version
        self.model_facts = model_facts  # has poll() -> ModelSpec | None
        self._facts_lock = threading.Lock()
        self.max_violations = max_violations
        self._reports: OrderedDict[str, dict | None] = OrderedDict()  # key -> summary (None: other endpoint)
        self._lock = threading.Lock()
        self.list_every_s = list_every_s
        self._listed: tuple[float, list[dict]] | None = None

    def owns(self, key: str) -> bool:
        """Only panel images under the explanations prefix may be served by the page, by their one
        spelling: a key the store would refuse (``prefix//x.png``, ``./``, ``..``) is not a panel."""
        try:
            check_key(key)
        except ValueError:
            return False
        return (len(key) <= MAX_PANEL_KEY and key.startswith(self.prefix + "/") and key.endswith(".png")
                and ".." not in key)

    def _violations(self) -> list[dict]:
        now = time.monotonic()
        if self._listed is not None and now - self._listed[0] < self.list_every_s:
            return self._listed[1]  # several open pages share one listing of the bucket
        found = self._list_reports()
        self._listed = (now, found)
        return found

    def _list_reports(self) -> list[dict]:
        keys = [k for k in self.store.list(self.prefix + "/") if k.endswith("/report.json")]
        with self._lock:
            for key in keys:
                if key in self._reports:
                    continue
                try:
                    report = json.loads(self.store.get(key))
                except Exception as exc:  # noqa: BLE001 - half-written or foreign: try next poll
                    log.warning("report %s unreadable: %s", key, exc)
                    continue
                seen = datetime.now(timezone.utc).isoformat()
                ours = report.get("endpoint") == self.endpoint
                self._reports[key] = violation_summary(report, key, seen) if ours else None
                while len(self._reports) > MAX_CACHED_REPORTS:
                    self._reports.popitem(last=False)
            found = [v for v in self._reports.values() if v is not None]
        found.sort(key=lambda v: v["time"] or "", reverse=True)
        return found[: self.max_violations]

    def _served(self) -> tuple[tuple[str, ...], str | None]:
        """(labels, version) of the served model."""
        if self.model_facts is not None:
            try:
                with self._facts_lock:  # pages poll from several threads: one read of the store
                    spec = self.model_facts.poll()
            except Exception as exc:  # noqa: BLE001 - the page shows what it knew
                log.warning("model facts of %s unreadable: %s", self.endpoint, exc)
                spec = None
            if spec is not None:
                return spec.class_names, spec.version
        return self.class_names, self.model_version

    def read(self) -> dict:
        started = time.perf_counter()
        class_names, version = self._served()
        snapshot = summarize_snapshot(_read_snapshot(self.state, self.endpoint), class_names)
        violations = self._violations()
        return {
            "endpoint": self.endpoint,
            "generated_at": datetime.now(timezone.utc).isoformat(),
            "model_version": snapshot["model_version"] or version,
            "served_model": {"version": version, "num_classes": len(class_names) or None},
            "monitor": snapshot,
            "violations": violations,
            "read_ms": round((time.perf_counter() - started) * 1000, 1),
        }

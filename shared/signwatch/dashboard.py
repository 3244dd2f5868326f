"""What the live dashboard shows, as one JSON document: ``DashboardReader.read()``.

Two sources: the monitor's snapshot in the state store (``signwatch.monitoring.read_snapshot``:
windows, baseline, drift statistics, incidents) and the explainer's reports in the object store
(``{explanations_prefix}/{violation_id}/report.json`` beside one PNG panel per sample: the
original, the input and the saliency overlay side by side). Reports never change once written,
so each is read once and kept; a poll lists the prefix and reads only what is new.
The reader is tolerant: a snapshot with fields missing (older monitor) or no snapshot at all
still gives a document, with ``null`` where nothing is known.

Model quality from labels (the snapshot's ``quality``, ``signwatch.monitoring.model_quality``):
realised accuracy beside the label-free estimate, the other metrics, the confusion counts and
the join's counts. The snapshot holds only the latest figures, so the reader keeps a bounded
history of them (``quality_history``: a point whenever they change, else one every 10 s;
``MAX_QUALITY_HISTORY`` at most) for the page's chart; it grows while the page is polled and
starts again when the process does.

Flagged requests (issue 20): the screening loop's bounded newest-first list in the state store
(``signwatch.flagged``), the newest ``max_flagged`` of it, each with the keys of its triptych
under ``{flagged_prefix}/{endpoint}/`` (served by ``owns_flagged`` keys only).

Labels and version are the served model's: ``model_facts`` (``signwatch.model.published.ModelFacts``,
the manifest the inference service published, re-read every 30 s) when it knows them, else the
``class_names`` and ``model_version`` the reader was built with.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import asdict
from datetime import datetime, timezone

from signwatch.flagged import read_entries

from signwatch.ports.state import StateStore
from signwatch.ports.store import ObjectStore, check_key

log = logging.getLogger(__name__)
MAX_CACHED_REPORTS = 2000
MAX_PANEL_KEY = 512  # characters of a panel's key, at most
MAX_QUALITY_HISTORY = 360  # points of the quality chart (an hour at one every 10 s)
QUALITY_WINDOWS = ("time", "count")  # "time": matched in the quality window; "count": the last N matched
QUALITY_METRICS = ("accuracy", "weighted_recall", "weighted_precision", "weighted_f0_5", "weighted_f1", "weighted_f2")
JOIN_STATES = ("matched", "duplicates", "labels_waiting", "predictions_pending")


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


def _number(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _label(class_id, class_names: tuple[str, ...]) -> str:
    return class_names[class_id] if isinstance(class_id, int) and 0 <= class_id < len(class_names) else str(class_id)


def _quality_window(figures: dict, class_names: tuple[str, ...]) -> dict:
    confusion = figures.get("confusion") or {}
    ids = [c for c in confusion.get("classes") or [] if isinstance(c, int) and not isinstance(c, bool)]
    counts = confusion.get("counts") or []
    try:
        counts = [[int(n) for n in row] for row in counts]
    except (TypeError, ValueError):
        counts = []
    if len(counts) != len(ids) or any(len(row) != len(ids) for row in counts):
        ids, counts = [], []  # a matrix that does not fit its classes is not drawn
    return {
        "labels": int(_number(figures.get("labels")) or 0),
        "accuracy": _number(figures.get("accuracy")),
        "estimated_accuracy": _number(figures.get("estimated_accuracy")),
        "estimate_error": _number(figures.get("estimate_error")),
        "metrics": {name: _number(figures.get(name)) for name in QUALITY_METRICS},
        "confusion": {"classes": [{"class_id": c, "label": _label(c, class_names)} for c in ids],
                      "counts": counts},
    }


def summarize_quality(quality: dict | None, class_names: tuple[str, ...] = ()) -> dict | None:
    """The snapshot's ``quality`` as the page draws it, or None when the monitor joins no labels.
    ``received``: labels the join holds (matched, duplicates and those waiting for their prediction)."""
    if not isinstance(quality, dict):
        return None
    join = quality.get("join") if isinstance(quality.get("join"), dict) else {}
    join = {state: int(_number(join.get(state)) or 0) for state in JOIN_STATES}
    return {
        "windows": {kind: _quality_window(quality[kind], class_names)
                    for kind in QUALITY_WINDOWS if isinstance(quality.get(kind), dict)},
        "join": join | {"received": join["matched"] + join["duplicates"] + join["labels_waiting"]},
        "constraints": bool(quality.get("constraints")),
    }


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
        "quality": summarize_quality(snap.get("quality"), class_names),
    }


class QualityHistory:
    """The realised accuracy and the estimate of the time window, a point per snapshot at most,
    kept when they changed or ``every_s`` after the last point; ``maxlen`` points at most."""

    def __init__(self, every_s: float = 10.0, maxlen: int = MAX_QUALITY_HISTORY) -> None:
        self.every_s = every_s
        self._points: deque[dict] = deque(maxlen=maxlen)
        self._last_time: str | None = None
        self._kept_at = float("-inf")
        self._lock = threading.Lock()

    def add(self, snapshot_time: str | None, quality: dict | None, now: float) -> None:
        figures = ((quality or {}).get("windows") or {}).get("time") or {}
        if not snapshot_time or figures.get("accuracy") is None:
            return
        point = {"time": snapshot_time, "accuracy": figures["accuracy"],
                 "estimated_accuracy": figures.get("estimated_accuracy"), "labels": figures.get("labels", 0)}
        with self._lock:
            if snapshot_time == self._last_time:
                return
            self._last_time = snapshot_time
            last = self._points[-1] if self._points else None
            changed = last is None or any(last[k] != point[k] for k in ("accuracy", "estimated_accuracy", "labels"))
            if changed or now - self._kept_at >= self.every_s:
                self._points.append(point)
                self._kept_at = now

    def points(self) -> list[dict]:
        with self._lock:
            return list(self._points)


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
                 max_violations: int = 6, list_every_s: float = 1.0, model_facts=None,
                 flagged_prefix: str = "screening", max_flagged: int = 12) -> None:
        self.state, self.store, self.endpoint = state, store, endpoint
        self.prefix = explanations_prefix.rstrip("/")
        self.flagged_prefix = f"{flagged_prefix.rstrip('/')}/{endpoint}/"
        self.max_flagged = max_flagged
        self.class_names, self.model_version = class_names, model_version
        self.model_facts = model_facts  # has poll() -> ModelSpec | None
        self._facts_lock = threading.Lock()
        self.max_violations = max_violations
        self._reports: OrderedDict[str, dict | None] = OrderedDict()  # key -> summary (None: other endpoint)
        self._lock = threading.Lock()
        self.list_every_s = list_every_s
        self._listed: tuple[float, list[dict]] | None = None
        self.quality_history = QualityHistory()

    def owns(self, key: str) -> bool:
        """Only panel images under the explanations prefix may be served by the page, by their one
        spelling: a key the store would refuse (``prefix//x.png``, ``./``, ``..``) is not a panel."""
        try:
            check_key(key)
        except ValueError:
            return False
        return (len(key) <= MAX_PANEL_KEY and key.startswith(self.prefix + "/") and key.endswith(".png")
                and ".." not in key)

    def owns_flagged(self, key: str) -> bool:
        """Only a flagged request's images of this endpoint (``{flagged_prefix}/{endpoint}/.../*.png``),
        by their one spelling, as ``owns`` for panels."""
        try:
            check_key(key)
        except ValueError:
            return False
        return (len(key) <= MAX_PANEL_KEY and key.startswith(self.flagged_prefix) and key.endswith(".png")
                and ".." not in key)

    def flagged(self, limit: int | None = None) -> tuple[list[dict], int]:
        """The newest ``limit`` flagged requests (default ``max_flagged``) and how many are listed."""
        try:
            entries = read_entries(self.state, self.endpoint)
        except Exception as exc:  # noqa: BLE001 - the state store away: the page shows the rest
            log.warning("flagged requests of %s unreadable: %s", self.endpoint, exc)
            return [], 0
        limit = self.max_flagged if limit is None else limit
        return [asdict(e) for e in entries[:limit]], len(entries)

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
        self.quality_history.add(snapshot["time"], snapshot["quality"], time.monotonic())
        violations = self._violations()
        flagged, flagged_listed = self.flagged()
        return {
            "endpoint": self.endpoint,
            "generated_at": datetime.now(timezone.utc).isoformat(),
            "model_version": snapshot["model_version"] or version,
            "served_model": {"version": version, "num_classes": len(class_names) or None},
            "monitor": snapshot,
            "violations": violations,
            "flagged": flagged,
            "flagged_listed": flagged_listed,
            "quality_history": self.quality_history.points(),
            "read_ms": round((time.perf_counter() - started) * 1000, 1),
        }

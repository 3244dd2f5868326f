"""The dashboard's data: the monitor's snapshot and the explainer's reports, one document."""

from __future__ import annotations

import json

from fastapi import FastAPI
from fastapi.testclient import TestClient

from signwatch.dashboard import DashboardReader, summarize_snapshot
from signwatch.ports.state_memory import MemoryState
from signwatch.ports.store_file import FileStore
from signwatch_services.explainer.dashboard import dashboard_router

SNAPSHOT = {
    "endpoint": "ep", "time": "2026-12-01T20:00:00+00:00", "baseline_id": "b1", "model_version": "m1",
    "window": {"seconds": 300, "total": 40, "class_counts": {"14": 30, "1": 10}, "low_confidence_share": 0.1},
    "baseline": {"class_shares": {"14": 0.02, "1": 0.05, "2": 0.05}, "low_confidence_share": 0.05},
    "drift": {"chi2": {"statistic": 812.5, "p_value": 1e-9}, "linf": {"statistic": 0.73}},
    "estimated_accuracy": 0.41,
    "incidents": [{"group": "model", "check": "over_prediction", "checks": ["over_prediction"], "state": "open",
                  "violation_id": "v1", "since": "2026-12-01T19:59:00+00:00"}],
}


def _report(store, vid, endpoint, time):
    store.put(f"explanations/{vid}/e1.png", b"\x89PNG\r\n\x1a\nfake", "image/png")
    store.put(f"explanations/{vid}/report.json", json.dumps({
        "violation_id": vid, "endpoint": endpoint, "time": time, "method": "fullgrad",
        "check": {"feature_name": "PredictedClass", "constraint_check_type": "baseline_drift_check",
                  "description": "Class 14 (Stop) predicted"},
        "looks_away_count": 1,
        "samples": [{"key": f"explanations/{vid}/e1.png", "label": "Stop", "probability": 0.9,
                     "looks_away": True}]}).encode(), "application/json")


def test_snapshot_summary_puts_live_shares_beside_the_baseline():
    s = summarize_snapshot(SNAPSHOT, ("c0", "c1", "c2") + ("x",) * 11 + ("Stop",))
    by_id = {c["class_id"]: c for c in s["classes"]}
    assert by_id[14] == {"class_id": 14, "label": "Stop", "count": 30, "share": 0.75, "baseline_share": 0.02}
    assert by_id[2]["count"] == 0 and by_id[2]["baseline_share"] == 0.05
    assert s["drift"]["chi2"] == {"statistic": 812.5, "p_value": 1e-9}
    assert s["total"] == 40 and s["low_confidence_share"] == 0.1 and s["incidents"][0]["state"] == "open"


def test_a_missing_or_partial_snapshot_still_gives_a_document():
    assert summarize_snapshot(None)["classes"] == [] and summarize_snapshot(None)["drift"] == {}
    partial = summarize_snapshot({"window": {"class_counts": {"3": 2}}})
    assert partial["total"] == 2 and partial["classes"][0]["baseline_share"] is None


def test_reader_and_routes_show_this_endpoints_violations_newest_first(tmp_path):
    state, store = MemoryState(), FileStore(tmp_path)
    state.set_value("signwatch:snapshot:ep", json.dumps(SNAPSHOT), 60)
    _report(store, "old", "ep", "2026-12-01T19:00:00+00:00")
    _report(store, "new", "ep", "2026-12-01T20:00:00+00:00")
    _report(store, "other", "someone-else", "2026-12-01T21:00:00+00:00")
    store.put("explanations/broken/report.json", b"{not json", "application/json")
    reader = DashboardReader(state, store, "ep", "explanations", model_version="fallback", list_every_s=0)
    app = FastAPI()
    app.include_router(dashboard_router(reader))
    client = TestClient(app)
    page = client.get("/dashboard")
    assert page.status_code == 200 and "dashboard/data" in page.text and "setInterval" in page.text
    data = client.get("/dashboard/data").json()
    assert [v["violation_id"] for v in data["violations"]] == ["new", "old"]
    assert data["model_version"] == "m1" and data["monitor"]["baseline_id"] == "b1"
    key = data["violations"][0]["panels"][0]["key"]
    png = client.get("/dashboard/panel", params={"key": key})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    for bad in ("explanations/new/report.json", "datacapture/x.png", "explanations/../secret.png",
                "explanations/none/missing.png", "explanations//x.png", "explanations/./x.png", "/explanations/x.png",
                "explanations/x\\y.png", "explanations/x\x00.png", "explanations/" + "a" * 600 + ".png", ""):
        r = client.get("/dashboard/panel", params={"key": bad})
        assert r.status_code == 404 and r.json()["error"]["message"], bad
    _report(store, "newest", "ep", "2026-12-01T20:30:00+00:00")  # a later poll sees it
    assert client.get("/dashboard/data").json()["violations"][0]["violation_id"] == "newest"


def test_open_pages_share_one_listing_per_second(tmp_path):
    store = FileStore(tmp_path)
    calls = []
    real_list = store.list
    store.list = lambda prefix="": calls.append(prefix) or real_list(prefix)
    reader = DashboardReader(MemoryState(), store, "ep", "explanations", list_every_s=60)
    for _ in range(5):
        reader.read()
    assert len(calls) == 1


QUALITY_WINDOW = {
    "labels": 40, "accuracy": 0.75, "estimated_accuracy": 0.8, "estimate_error": 0.05,
    "weighted_recall": 0.75, "weighted_precision": 0.8, "weighted_f0_5": 0.78, "weighted_f1": 0.76,
    "weighted_f2": 0.75, "confusion": {"classes": [1, 14], "counts": [[10, 0], [10, 20]]},
}
QUALITY = {"time": QUALITY_WINDOW, "count": QUALITY_WINDOW | {"labels": 40},
           "join": {"matched": 40, "duplicates": 2, "predictions_pending": 60, "labels_waiting": 3},
           "constraints": False}


def test_quality_summary_names_the_confusion_classes_and_counts_labels_received():
    s = summarize_snapshot(SNAPSHOT | {"quality": QUALITY}, ("c0", "c1") + ("x",) * 12 + ("Stop",))
    q = s["quality"]
    time_window = q["windows"]["time"]
    assert time_window["accuracy"] == 0.75 and time_window["estimated_accuracy"] == 0.8
    assert time_window["estimate_error"] == 0.05 and time_window["labels"] == 40
    assert time_window["metrics"]["weighted_f1"] == 0.76 and set(time_window["metrics"]) >= {"accuracy", "weighted_f2"}
    assert time_window["confusion"] == {"classes": [{"class_id": 1, "label": "c1"}, {"class_id": 14, "label": "Stop"}],
                                        "counts": [[10, 0], [10, 20]]}
    assert q["join"] == {"matched": 40, "duplicates": 2, "predictions_pending": 60, "labels_waiting": 3,
                         "received": 45}
    assert q["constraints"] is False and set(q["windows"]) == {"time", "count"}


def test_quality_absent_or_partial_still_summarizes():
    assert summarize_snapshot(SNAPSHOT)["quality"] is None  # a monitor without labels: the page as before
    assert summarize_snapshot(SNAPSHOT | {"quality": None})["quality"] is None
    empty = {"time": {"labels": 0, "accuracy": None, "estimated_accuracy": None}}
    q = summarize_snapshot({"quality": empty})["quality"]
    assert q["windows"]["time"]["accuracy"] is None and q["windows"]["time"]["confusion"]["classes"] == []
    assert q["join"]["received"] == 0 and "count" not in q["windows"]
    bent = {"time": {"labels": "x", "confusion": {"classes": [1, 2], "counts": [[1]]}}, "join": "nonsense"}
    q = summarize_snapshot({"quality": bent})["quality"]  # a matrix that does not fit its classes: not drawn
    assert q["windows"]["time"]["labels"] == 0 and q["windows"]["time"]["confusion"]["counts"] == []
    assert q["join"]["matched"] == 0


def test_reader_keeps_a_bounded_history_of_realised_and_estimated_accuracy(tmp_path):
    from signwatch.dashboard import QualityHistory

    state = MemoryState()
    reader = DashboardReader(state, FileStore(tmp_path), "ep", "explanations", list_every_s=60)
    assert reader.read()["quality_history"] == []  # no snapshot
    state.set_value("signwatch:snapshot:ep", json.dumps(SNAPSHOT), 60)
    assert reader.read()["quality_history"] == []  # a snapshot without labels
    state.set_value("signwatch:snapshot:ep", json.dumps(SNAPSHOT | {"quality": QUALITY}), 60)
    reader.read(), reader.read()  # the same snapshot polled twice: one point
    later = QUALITY | {"time": QUALITY_WINDOW | {"labels": 50, "accuracy": 0.7}}
    state.set_value("signwatch:snapshot:ep", json.dumps(SNAPSHOT | {"time": "2026-12-01T20:00:01+00:00",
                                                                   "quality": later}), 60)
    history = reader.read()["quality_history"]
    assert history == [
        {"time": SNAPSHOT["time"], "accuracy": 0.75, "estimated_accuracy": 0.8, "labels": 40},
        {"time": "2026-12-01T20:00:01+00:00", "accuracy": 0.7, "estimated_accuracy": 0.8, "labels": 50}]

    bounded = QualityHistory(every_s=10, maxlen=3)
    same = {"windows": {"time": {"accuracy": 0.9, "estimated_accuracy": 0.9, "labels": 5}}}
    for i in range(10):  # unchanged figures each second: a point every 10 s
        bounded.add(f"t{i}", same, now=float(i))
    assert [p["time"] for p in bounded.points()] == ["t0"]
    for i in range(10, 20):
        bounded.add(f"t{i}", {"windows": {"time": {"accuracy": i / 100, "labels": i}}}, now=float(i))
    assert [p["time"] for p in bounded.points()] == ["t17", "t18", "t19"]


def test_a_violations_explanation_page_is_served_at_the_link_alerts_carry(tmp_path):
    from signwatch_services.monitor.metrics import explanation_url

    store = FileStore(tmp_path)
    _report(store, "v-1", "ep", "2026-12-01T20:00:00+00:00")
    store.put("explanations/v-1/index.html", b"<html><h1>Class 14 (Stop)</h1><img src=\"e1.png\"></html>", "text/html")
    store.put("secret/index.html", b"no", "text/html")
    app = FastAPI()
    app.include_router(dashboard_router(DashboardReader(MemoryState(), store, "ep", "explanations")))
    client = TestClient(app)
    link = explanation_url("https://signwatch.example.com/", "v-1")
    assert link == "https://signwatch.example.com/dashboard/violations/v-1/"
    page = client.get(link.removeprefix("https://signwatch.example.com"))
    assert page.status_code == 200 and "Class 14 (Stop)" in page.text
    panel = client.get("/dashboard/violations/v-1/e1.png")  # the page's relative <img src>
    assert panel.status_code == 200 and panel.content.startswith(b"\x89PNG")
    assert client.get("/dashboard/violations/v-1", follow_redirects=True).status_code == 200
    later = client.get("/dashboard/violations/not-yet/")
    assert later.status_code == 404 and "no explanation yet" in later.text
    for bad in ("/dashboard/violations/v-1/report.json", "/dashboard/violations/v-1/..%2F..%2Fsecret%2Findex.html",
                "/dashboard/violations/..%2Fsecret/", "/dashboard/violations/v-1/missing.png",
                "/dashboard/violations/.hidden/e1.png"):
        assert client.get(bad).status_code == 404, bad

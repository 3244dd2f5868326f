"""The served model's facts (class count, labels, version) flow from its manifest to the monitor,
the baselines, the scheduled job and the dashboard, never from ``ModelSpec()``'s GTSRB defaults.

The model here is not GTSRB's: 10 classes named ``sign-0`` .. ``sign-9``, version "x".
"""

from __future__ import annotations

import ast
import json
import threading
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client import CollectorRegistry, generate_latest
from typer.testing import CliRunner

from signwatch.capture import capture_record
from signwatch.config import Settings
from signwatch.events import InferenceOutput, Prediction
from signwatch.model.core import ModelSpec, load_spec, save_model
from signwatch.model.published import (
    ModelFacts, publish_manifest, publish_when_possible, published_key, read_published,
)
from signwatch.monitoring import Monitor, MonitorConfig, read_snapshot
from signwatch.monitoring import baseline as bl
from signwatch.monitoring.features import features_of
from signwatch.monitoring.job import run_job
from signwatch.ports.state_memory import MemoryState
from signwatch.ports.store_file import FileStore
from signwatch.runtime import open_ports
from signwatch_services.cli import app
from signwatch_services.health import loops_waiting, worker_app
from signwatch_services.monitor.server import build_loop
from tests.conftest import PROJECT
from tests.unit.helpers import inference_event

LABELS = tuple(f"sign-{i}" for i in range(10))
SPEC = ModelSpec(architecture="resnet18", input_size=32, class_names=LABELS, version="x")
T0 = 1_760_000_000.0  # in the past: the monitor refuses events from its future
HOUR = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def _event(t: float, class_id: int, p: float = 0.99, endpoint: str = "ep", **kw):
    e = inference_event(class_id=class_id, probability=p, endpoint=endpoint,
                        time=datetime.fromtimestamp(t, timezone.utc), **kw)
    preds = [Prediction(class_id=class_id, label="a", probability=p),
             Prediction(class_id=(class_id + 1) % 10, label="b", probability=(1 - p) / 2)]
    return e.model_copy(update={"output": InferenceOutput(predictions=preds, model_version="x"), "model_version": "x"})


def _monitor(tmp_path, clock, names=LABELS, **kw) -> Monitor:
    return Monitor(MemoryState(clock=clock), FileStore(tmp_path), MonitorConfig(endpoint="ep", **kw), names,
                   clock=clock, model_version="x")


# -- no literal 43 --------------------------------------------------------------------------------

def _literal_class_counts(roots: list[Path]) -> list[str]:
    """``file:line`` of every integer literal 43 (GTSRB's class count) or 42 (its last class id)
    in Python sources outside the GTSRB data module."""
    found = []
    data = PROJECT / "shared" / "signwatch" / "data"
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if data in path.parents:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and type(node.value) is int and node.value in (42, 43):
                    found.append(f"{path.relative_to(PROJECT)}:{node.lineno}: {node.value}")
    return found


def test_no_literal_class_count_outside_the_gtsrb_data_module():
    """43 classes is the shipped model's fact (its manifest, ``signwatch.data.classes``), never
    the code's: a user's model has its own. A seed or a size that happens to be 42 or 43 takes
    another number."""
    found = _literal_class_counts([PROJECT / "shared" / "signwatch", PROJECT / "services", PROJECT / "benchmarks"])
    assert not found, "literal GTSRB class counts (take them from the model's manifest):\n" + "\n".join(found)


# -- the published manifest ------------------------------------------------------------------------

def test_the_served_manifest_round_trips_through_the_store(tmp_path):
    store = FileStore(tmp_path)
    assert read_published(store, "ep") is None
    uri = publish_manifest(store, "ep", SPEC)
    assert uri.endswith("models/ep/manifest.json") and published_key("ep") == "models/ep/manifest.json"
    got = read_published(store, "ep")
    assert got.class_names == LABELS and got.num_classes == 10 and got.version == "x" and got.input_size == 32
    assert "published_at" in json.loads(store.get("models/ep/manifest.json"))
    store.put("models/ep/manifest.json", b"{not json")
    with pytest.raises(ValueError, match="not JSON"):
        read_published(store, "ep")


def test_publishing_retries_in_the_background_while_the_store_is_away(tmp_path):
    store = FileStore(tmp_path)
    calls = []
    real_put = store.put

    def flaky_put(key, data, content_type="application/octet-stream"):
        calls.append(key)
        if len(calls) < 3:
            raise ConnectionError("store away")
        return real_put(key, data, content_type)

    store.put = flaky_put
    thread = publish_when_possible(store, "ep", SPEC, first_retry_s=0.01)
    assert isinstance(thread, threading.Thread), "the start is not held up"
    thread.join(10)
    assert read_published(store, "ep").version == "x" and len(calls) == 3
    assert publish_when_possible(FileStore(tmp_path / "up"), "ep", SPEC) is None, "published at once when it can"


def test_model_facts_wait_with_backoff_then_reload_a_new_model():
    clock = Clock()
    answers = [None, None, SPEC, SPEC, ModelSpec(architecture="resnet18", input_size=32,
                                                 class_names=LABELS[:5], version="y")]
    loads = []

    def load():
        loads.append(clock.t)
        return answers[min(len(loads), len(answers)) - 1]

    facts = ModelFacts(load, "the test's store", reload_s=30, first_retry_s=1, max_retry_s=4, clock=clock)
    assert facts.poll() is None and "the test's store" in facts.waiting_for
    clock.t += 0.5
    assert facts.poll() is None and len(loads) == 1, "no read before the backoff passed"
    clock.t += 0.6
    assert facts.poll() is None and len(loads) == 2
    clock.t += 2.1  # the backoff doubled
    assert facts.poll() is SPEC and facts.generation == 1 and facts.waiting_for is None
    clock.t += 10
    assert facts.poll() is SPEC and len(loads) == 3, "re-read only every reload_s"
    clock.t += 30
    assert facts.poll() is SPEC and facts.generation == 1, "the same model: nothing changes"
    clock.t += 30
    assert facts.poll().num_classes == 5 and facts.generation == 2


# -- windows and the streaming monitor -----------------------------------------------------------

def test_a_ten_class_model_is_counted_and_over_prediction_runs_without_a_baseline(tmp_path):
    clock = Clock()
    monitor = _monitor(tmp_path, clock)
    assert monitor.baseline is None and monitor.baseline_status.startswith("learning: 0 of 1000 predictions")
    assert "baseline suggest --capture" in monitor.baseline_status and monitor.baseline_source == "none"
    assert not FileStore(tmp_path).exists("baselines/ep/statistics.json"), "the GTSRB baseline is not this model's"
    raised = []
    for i in range(60):
        clock.t += 1
        raised += monitor.observe(_event(clock.t, 7 if i % 4 else i % 10))
    over = [v for v in raised if v.check_name == "over_prediction"]
    assert len(over) == 1 and over[0].class_id == 7 and over[0].baseline_id is None
    assert over[0].check.description.startswith("Class 7 (sign-7) predicted")
    assert {r.name for r in monitor.last.results} == {"over_prediction", "completeness"}
    window = monitor.windows.time_window(clock.t)
    assert len(window.class_counts) == 10 and window.total == 60 and window.class_counts.sum() == 60
    snap = read_snapshot(monitor.state, "ep")
    assert snap["num_classes"] == 10 and snap["baseline"] is None
    status = snap["baseline_status"]
    assert status.startswith("learning: 60 of 1000 predictions, 5") and "s of 10800 s" in status


def test_a_class_id_outside_the_model_is_counted_unreadable_never_dropped(tmp_path, caplog):
    clock = Clock()
    monitor = _monitor(tmp_path, clock)
    seen = []
    monitor.on_unreadable = lambda reason, event: seen.append(reason)
    raised = []
    for i in range(40):
        clock.t += 1
        raised += monitor.observe(_event(clock.t, i % 10))
    clock.t += 1
    raised += monitor.observe(_event(clock.t, 12))  # one event: the per-event path
    batch = []
    for _ in range(3):
        clock.t += 1
        batch.append(_event(clock.t, 43))
    raised += monitor.observe_many(batch)  # the service's path
    window = monitor.windows.time_window(clock.t)
    assert window.total == 40 and window.unreadable == 4 and window.class_counts.sum() == 40
    assert seen == ["class_out_of_range"] * 4
    assert "top-1 class id 12 is not one of the 10 classes" in caplog.text
    completeness = [v for v in raised if v.check_name == "completeness"]
    assert completeness and completeness[0].check.constraint_check_type == "completeness_check"
    monitor.observe(batch[0])
    assert monitor.windows.time_window(clock.t).unreadable == 4, "a replayed event is not counted twice"


def test_a_baseline_for_other_classes_is_refused_and_the_monitor_runs_without_it(tmp_path, caplog):
    stats, cons = bl.shipped_files()
    with pytest.raises(bl.BaselineMismatch, match="made for 43 classes"):
        bl.load(stats, cons, 10)
    bl.write_store(FileStore(tmp_path), "baselines/ep", stats, cons)
    clock = Clock()
    monitor = _monitor(tmp_path, clock, baseline_reload_s=5)
    assert monitor.baseline is None and monitor.baseline_status.startswith("refused")
    assert "made for 43 classes" in caplog.text
    raised = []
    for _ in range(30):
        clock.t += 1
        raised += monitor.observe(_event(clock.t, 3))
    assert [v.class_id for v in raised if v.check_name == "over_prediction"] == [3]
    # A baseline suggested for this model is taken at the next reload.
    feats = [features_of([{"class_id": int(c), "probability": 0.99}]) for c in np.arange(300) % 10]
    bl.write_store(monitor.store, "baselines/ep", *bl.suggest(feats, 10, model_version="x"))
    clock.t += 10
    monitor.observe(_event(clock.t, 3))
    assert monitor.baseline is not None and monitor.baseline.model == {"version": "x", "num_classes": 10}
    assert len(monitor.baseline.class_counts) == 10 and monitor.baseline_status == "loaded"


def test_baselines_record_their_model_and_refuse_classes_outside_it():
    feats = [features_of([{"class_id": int(c), "probability": 0.9}]) for c in np.arange(200) % 10]
    stats, cons = bl.suggest(feats, 10, model_version="x")
    assert stats["signwatch"]["model"] == {"version": "x", "num_classes": 10}
    assert cons["features"][0]["string_constraints"]["domains"] == [str(c) for c in range(10)]
    assert bl.load(stats, cons, 10).item_count == 200
    with pytest.raises(bl.BaselineMismatch):
        bl.load(stats, cons, 12)
    with pytest.raises(ValueError, match="outside the model's 0..4"):
        bl.suggest(feats, 5)
    foreign = json.loads(json.dumps(stats))
    del foreign["signwatch"]["model"]
    foreign["features"][0]["string_statistics"]["distribution"]["categorical"]["buckets"].append(
        {"value": "11", "count": 0})
    with pytest.raises(bl.BaselineMismatch, match="class 11"):
        bl.load(foreign, {**cons, "features": cons["features"][1:]}, 10)


def test_the_shipped_baseline_judges_the_shipped_classes_only_and_is_never_written(tmp_path):
    gtsrb = _monitor(tmp_path / "a", Clock(), names=load_spec().class_names)
    assert gtsrb.baseline is not None and gtsrb.baseline_source == "shipped" and not gtsrb.judge_classes
    assert not FileStore(tmp_path / "a").exists("baselines/ep/statistics.json"), "the learned one goes there"
    assert bl.for_shipped_classes(load_spec().class_names) and not bl.for_shipped_classes(LABELS)


def test_a_new_model_with_fewer_classes_does_not_break_the_windows(tmp_path):
    clock = Clock()
    monitor = _monitor(tmp_path, clock, names=load_spec().class_names)
    for i in range(30):
        clock.t += 1
        monitor.observe(_event(clock.t, 20 if i % 2 else 3))
    monitor.set_model(LABELS, "x")
    assert monitor.baseline is None, "the GTSRB baseline does not fit 10 classes"
    clock.t += 1
    monitor.observe(_event(clock.t, 4))
    w = monitor.windows.time_window(clock.t)
    assert len(w.class_counts) == 10 and w.other_classes == 15 and w.total == 16 and w.class_counts.sum() == 16
    assert monitor.windows.count_window().other_classes == 15


# -- the service: waits for the manifest, then follows it ----------------------------------------

def test_the_monitor_service_waits_for_the_published_manifest_then_follows_it(tmp_path, unique):
    settings = Settings(bus_url=f"memory://facts-{unique}", state_url="memory://", store_url=tmp_path.as_uri(),
                        endpoint="ep")
    ports = open_ports(settings)
    clock = Clock()
    facts = ModelFacts.for_settings(settings, ports.store, reload_s=30, first_retry_s=1, clock=clock)
    registry = CollectorRegistry()
    loop = build_loop(settings, ports=ports, registry=registry, facts=facts)
    for i in range(30):
        e = _event(T0 + i, 5)
        ports.bus.publish(settings.inference_topic, e.event_id, e.to_bytes())
    assert loop.run_once() == 0 and loop.handler.monitor is None and loop.processed == 0, "nothing consumed"
    assert "models/ep/manifest.json" in loop.waiting_for

    waiting = worker_app("signwatch monitor", [], ports, registry, waiting=loops_waiting([loop]))
    ready = TestClient(waiting).get("/health/ready")
    assert ready.status_code == 503 and "models/ep/manifest.json" in ready.json()["waiting_for"][loop.group]

    publish_manifest(ports.store, "ep", SPEC)  # the inference service starts
    clock.t += 2
    while loop.processed < 30 or not loop.handler.idle:
        loop.run_once()
    monitor = loop.handler.monitor
    assert monitor.num_classes == 10 and monitor.model_version == "x" and loop.waiting_for is None
    assert TestClient(waiting).get("/health/ready").status_code == 200
    assert monitor.windows.time_window(T0 + 30).class_counts[5] == 30

    publish_manifest(ports.store, "ep", ModelSpec(architecture="resnet18", input_size=32,
                                                  class_names=LABELS[:4], version="y"))
    clock.t += 31
    e = _event(T0 + 31, 5)  # class 5 is not one of model y's 4 classes
    ports.bus.publish(settings.inference_topic, e.event_id, e.to_bytes())
    while loop.processed < 31 or not loop.handler.idle:
        loop.run_once()
    assert loop.handler.monitor is monitor and monitor.num_classes == 4
    assert monitor.windows.time_window(T0 + 31).unreadable == 1
    text = generate_latest(registry).decode()
    assert 'signwatch_monitor_unreadable_total{endpoint="ep",reason="class_out_of_range"} 1.0' in text


def test_a_model_path_gives_the_monitor_its_facts_without_the_store(tmp_path, unique, model_10):
    settings = Settings(bus_url=f"memory://path-{unique}", state_url="memory://",
                        store_url=(tmp_path / "store").as_uri(), endpoint="ep", model_path=str(model_10))
    ports = open_ports(settings)
    loop = build_loop(settings, ports=ports)
    loop.run_once()
    assert loop.handler.monitor.class_names == LABELS and loop.handler.monitor.model_version == "x"


# -- baselines and the job from the command line ---------------------------------------------------

@pytest.fixture(scope="module")
def model_10(tmp_path_factory) -> Path:
    from signwatch.model.architectures import build

    path = tmp_path_factory.mktemp("model") / "mine.safetensors"
    return save_model(build("resnet18", 10), SPEC, path, half=False)


def _capture(store, n: int = 200, top: int | None = None, outside: int = 0) -> None:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n + outside):
        c = 12 if i >= n else (top if top is not None and i % 5 else int(rng.integers(0, 10)))
        e = _event(HOUR.replace(minute=i % 60).timestamp(), c)
        lines.append(json.dumps(capture_record(e, b"x")))
    store.put("datacapture/ep/AllTraffic/2026/12/01/10/part.jsonl", ("\n".join(lines) + "\n").encode())


def _env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIGNWATCH_STORE_URL", (tmp_path / "store").as_uri())
    monkeypatch.setenv("SIGNWATCH_ENDPOINT", "ep")
    monkeypatch.delenv("SIGNWATCH_MODEL_PATH", raising=False)
    return FileStore(tmp_path / "store")


def test_suggest_from_capture_takes_the_class_count_from_the_published_manifest(tmp_path, monkeypatch):
    store = _env(monkeypatch, tmp_path)
    _capture(store, outside=3)
    args = ["baseline", "suggest", "--capture", "datacapture/ep", "--out", str(tmp_path / "b"), "--upload"]
    missing = CliRunner().invoke(app, args)
    assert missing.exit_code == 1 and "no model manifest" in missing.output
    assert "models/ep/manifest.json" in missing.output, "it says where it looked"
    publish_manifest(store, "ep", SPEC)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["num_classes"] == 10 and summary["model_version"] == "x" and summary["unreadable"] == 3
    stats, cons = bl.read_store(store, "baselines/ep")
    assert stats["signwatch"]["model"] == {"version": "x", "num_classes": 10} and stats["dataset"]["item_count"] == 200
    assert len(cons["features"][0]["string_constraints"]["domains"]) == 10
    assert bl.load(stats, cons, 10).item_count == 200


def test_rendered_baselines_are_refused_for_a_model_that_is_not_gtsrbs(tmp_path, monkeypatch, model_10):
    store = _env(monkeypatch, tmp_path)
    result = CliRunner().invoke(app, ["baseline", "suggest", "--count", "100", "--weights", str(model_10)])
    assert result.exit_code == 2 and "--capture" in result.output and "(10)" in result.output
    publish_manifest(store, "ep", SPEC)  # the endpoint serves the 10-class model: a GTSRB baseline is not uploaded
    shipped = CliRunner().invoke(app, ["baseline", "suggest", "--count", "100", "--upload",
                                       "--out", str(tmp_path / "g")])
    assert shipped.exit_code == 1 and "not uploaded" in shipped.output
    assert not store.exists("baselines/ep/statistics.json")


def test_suggest_from_a_folder_of_labelled_images(tmp_path, monkeypatch, model_10):
    _env(monkeypatch, tmp_path)
    rng = np.random.default_rng(0)
    for i in range(110):
        folder = tmp_path / "images" / (LABELS[i % 10] if i % 2 else str(i % 10))  # a label or a class id
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    result = CliRunner().invoke(app, ["baseline", "suggest", "--images", str(tmp_path / "images"), "--weights",
                                      str(model_10), "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["item_count"] == 110 and summary["num_classes"] == 10 and summary["labelled_accuracy"] is not None
    (tmp_path / "images" / "no-such-label").mkdir()
    bad = CliRunner().invoke(app, ["baseline", "suggest", "--images", str(tmp_path / "images"), "--weights",
                                   str(model_10)])
    assert bad.exit_code == 1 and "no-such-label" in bad.output


def test_the_job_counts_the_models_classes_and_runs_without_a_baseline(tmp_path, monkeypatch):
    store = _env(monkeypatch, tmp_path)
    _capture(store, n=300, top=7, outside=4)
    publish_manifest(store, "ep", SPEC)
    args = ["monitor", "job", "--capture", "datacapture/ep", "--start", "2026-12-01T10:00:00Z",
            "--end", "2026-12-01T11:00:00Z", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    summary = json.loads(result.stdout)
    assert summary["total"] == 300 and summary["unreadable"] == 4 and summary["num_classes"] == 10
    assert summary["model_version"] == "x" and summary["drift_checks"].startswith("skipped")
    assert any(v["description"].startswith("Class 7 (sign-7) predicted") for v in summary["violations"])
    assert "no baseline at baselines/ep" in result.stderr
    bl.write_store(store, "baselines/ep", *bl.shipped_files())  # a baseline for GTSRB's 43 classes
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and "made for 43 classes" in refused.output


def test_the_batch_job_counts_out_of_range_classes_as_unreadable():
    lines = [json.dumps(capture_record(_event(T0 + i, 12 if i < 5 else i % 10), b"x")) for i in range(100)]
    result = run_job([("\n".join(lines) + "\n").encode()], None, LABELS)
    assert result.total == 95 and result.unreadable == 5 and sum(result.predicted_classes.values()) == 95
    assert result.baseline_id is None


# -- the dashboard -----------------------------------------------------------------------------------

def test_the_dashboard_labels_classes_with_the_served_models_labels(tmp_path):
    from signwatch.dashboard import DashboardReader

    store, state = FileStore(tmp_path), MemoryState()
    state.set_value("signwatch:snapshot:ep", json.dumps({"window": {"class_counts": {"7": 3}}}), 60)
    clock = Clock()
    facts = ModelFacts(lambda: read_published(store, "ep"), "store", reload_s=30, clock=clock)
    reader = DashboardReader(state, store, "ep", "explanations", class_names=("fallback",) * 43,
                             model_version="shipped", model_facts=facts)
    assert reader.read()["monitor"]["classes"][0]["label"] == "fallback"
    publish_manifest(store, "ep", SPEC)
    clock.t += 1  # past the backoff: the next read asks the store again
    data = reader.read()
    assert data["monitor"]["classes"][0]["label"] == "sign-7"
    assert data["served_model"] == {"version": "x", "num_classes": 10} and data["model_version"] == "x"

"""``signwatch baseline suggest`` and ``signwatch monitor job``: SageMaker's files, checked
against JSON Schemas written from its docs, and exit statuses a scheduler can act on."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
from typer.testing import CliRunner

from signwatch.capture import capture_record
from signwatch.events import InferenceOutput, Prediction
from signwatch.model.core import DEFAULT_WEIGHTS, load_spec
from signwatch.model.published import publish_manifest
from signwatch.monitoring import baseline as bl
from signwatch.ports.store_file import FileStore
from signwatch_services.cli import app
from tests.schemas import validate
from tests.unit.helpers import inference_event

HOUR = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)


def test_the_shipped_baseline_fits_sagemakers_schemas():
    stats, cons = bl.shipped_files()
    validate(stats, "statistics")
    validate(cons, "constraints")


def test_baseline_suggest_writes_both_files_from_rendered_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["baseline", "suggest", "--count", "120", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "b" / "statistics.json").read_text())
    cons = json.loads((tmp_path / "b" / "constraints.json").read_text())
    validate(stats, "statistics")
    validate(cons, "constraints")
    assert stats["dataset"]["item_count"] == 120
    assert [f["name"] for f in stats["features"]] == ["PredictedClass", "Confidence", "Margin"]
    assert bl.load(stats, cons, 43).accuracy > 0.8


def _capture(store: FileStore, prefix: str, stop_share: float, n: int = 300) -> None:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        c = 14 if rng.random() < stop_share else int(rng.integers(0, 43))
        e = inference_event(class_id=c, probability=0.999, time=HOUR.replace(minute=i % 60))
        e = e.model_copy(update={"output": InferenceOutput(predictions=[
            Prediction(class_id=c, label="x", probability=0.999), Prediction(class_id=(c + 1) % 43, label="y",
                                                                              probability=0.0005)],
            model_version="test")})
        lines.append(json.dumps(capture_record(e, b"x")))
    store.put(f"{prefix}/ep/AllTraffic/2026/12/01/10/part.jsonl", ("\n".join(lines) + "\n").encode())


def test_monitor_job_writes_a_run_folder_and_exits_2_on_violations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIGNWATCH_STORE_URL", (tmp_path / "store").as_uri())
    monkeypatch.setenv("SIGNWATCH_ENDPOINT", "ep")
    store = FileStore(tmp_path / "store")
    publish_manifest(store, "ep", load_spec())  # the served model's classes, as inference publishes them
    _capture(store, "datacapture", stop_share=0.8)
    args = ["monitor", "job", "--capture", "datacapture/ep", "--start", "2026-12-01T10:00:00Z",
            "--end", "2026-12-01T11:00:00Z", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    summary = json.loads(result.stdout)  # a note on stderr says what judged the classes
    assert summary["total"] == 300 and summary["predicted_classes"]["14"] > 200
    assert summary["folder"] == "monitoring/ep/schedule/2026/12/01/10"
    violations = json.loads(store.get(f"{summary['folder']}/constraint_violations.json"))
    validate(violations, "constraint_violations")
    validate(json.loads(store.get(f"{summary['folder']}/statistics.json")), "statistics")
    assert any(v["description"].startswith("Class 14 (Stop) predicted") for v in violations["violations"])

    printed = CliRunner().invoke(app, args[:-1])  # the reference's per-class counts, for people
    assert printed.exit_code == 2 and "class 14 (Stop):" in printed.output

    empty = CliRunner().invoke(app, args[:4] + ["--start", "2026-12-02T10:00:00Z", "--end", "2026-12-02T11:00:00Z"])
    assert empty.exit_code == 1 and "no capture files" in empty.output


def test_monitor_job_refuses_bad_arguments_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = [(["monitor", "job", "--start", "yesterday"], "not an ISO 8601 time"),
           (["monitor", "job", "--start", "2026-12-01T11:00:00Z", "--end", "2026-12-01T10:00:00Z"], "must come after"),
           (["monitor", "job", "--schedule", "every tuesday"], "hourly, daily or a cron expression"),
           (["monitor", "job", "--capture", "ftp://x/y"], "--capture must be")]
    for args, message in bad:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)


def test_baseline_suggest_from_captured_records_in_a_time_range(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIGNWATCH_STORE_URL", (tmp_path / "store").as_uri())
    monkeypatch.setenv("SIGNWATCH_MODEL_PATH", str(DEFAULT_WEIGHTS))  # the class count from its manifest
    _capture(FileStore(tmp_path / "store"), "datacapture", stop_share=0.0)
    result = CliRunner().invoke(app, ["baseline", "suggest", "--capture", "datacapture/ep", "--start",
                                      "2026-12-01T10:00:00Z", "--end", "2026-12-01T11:00:00Z", "--upload",
                                      "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "b" / "statistics.json").read_text())
    assert stats["dataset"]["item_count"] == 300 and "labelled_accuracy" not in stats["signwatch"]
    assert FileStore(tmp_path / "store").exists("baselines/signwatch/statistics.json"), "uploaded where the monitor looks"


def test_a_schedule_fires_on_the_next_period():
    from signwatch.monitoring.cli import _next_fire

    t = datetime(2026, 12, 1, 10, 17, tzinfo=timezone.utc)
    assert _next_fire("hourly", t) == datetime(2026, 12, 1, 11, 0, tzinfo=timezone.utc)
    assert _next_fire("*/15 * * * *", t) == datetime(2026, 12, 1, 10, 30, tzinfo=timezone.utc)


def test_monitor_job_counts_a_burst_of_one_sign_once_as_the_streaming_monitor_does(tmp_path, monkeypatch):
    """200 captured frames of one "Keep right" within 10 s (each record holds its image) fold into
    one observation: the job hashes the captured pixels as the serving core did. With folding off
    (a track window of 0) the same capture raises over-prediction."""
    from signwatch.data.burst import passing_frames
    from signwatch.imaging import encode_png

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIGNWATCH_STORE_URL", (tmp_path / "store").as_uri())
    monkeypatch.setenv("SIGNWATCH_ENDPOINT", "ep")
    store = FileStore(tmp_path / "store")
    publish_manifest(store, "ep", load_spec())
    rng, lines = np.random.default_rng(1), []
    for i, c in enumerate(rng.integers(0, 43, 30)):  # a quiet half hour: one other sign a minute
        e = inference_event(class_id=int(c), probability=0.99, time=HOUR.replace(minute=i))
        lines.append(json.dumps(capture_record(e, encode_png(passing_frames(int(c), 1, seed=100 + i)[0]))))
    for k, frame in enumerate(passing_frames(38, 200, seed=17)):  # then the car passes "Keep right"
        e = inference_event(class_id=38, probability=0.99, time=HOUR.replace(minute=40, second=k // 20))
        lines.append(json.dumps(capture_record(e, encode_png(frame))))
    store.put("datacapture/ep/AllTraffic/2026/12/01/10/part.jsonl", ("\n".join(lines) + "\n").encode())
    args = ["monitor", "job", "--capture", "datacapture/ep", "--start", "2026-12-01T10:00:00Z",
            "--end", "2026-12-01T11:00:00Z", "--json"]

    folded = CliRunner().invoke(app, args)
    assert folded.exit_code == 0, folded.output
    summary = json.loads(folded.stdout)
    assert summary["folded"] == 199 and summary["total"] == 31 and summary["violations"] == []

    monkeypatch.setenv("SIGNWATCH_MONITOR_TRACK_WINDOW_SECONDS", "0")
    every_frame = CliRunner().invoke(app, args)
    assert every_frame.exit_code == 2, every_frame.output
    summary = json.loads(every_frame.stdout)
    assert summary["folded"] == 0 and summary["predicted_classes"]["38"] >= 200
    assert any("Class 38" in v["description"] for v in summary["violations"])

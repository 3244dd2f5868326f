"""Model quality on the batch path: ``signwatch monitor job --ground-truth`` merges labels with
the captured predictions of each run and checks the metrics against a model-quality baseline;
``signwatch baseline suggest --quality`` makes that baseline from merged labels or a labelled
CSV / JSON-lines dataset. Runs against a folder store, no stack."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score
from typer.testing import CliRunner

from signwatch.capture import capture_record
from signwatch.data.classes import CLASS_NAMES
from signwatch.events import InferenceOutput, Prediction
from signwatch.model.core import load_spec
from signwatch.model.published import publish_manifest
from signwatch.monitoring import groundtruth as gt
from signwatch.monitoring import quality
from signwatch.ports.store_file import FileStore
from signwatch_services.cli import app
from tests.schemas import validate
from tests.unit.helpers import inference_event

DAY1, DAY2 = datetime(2026, 12, 1, 10, tzinfo=timezone.utc), datetime(2026, 12, 2, 10, tzinfo=timezone.utc)
N = 240  # over 200: the metrics carry standard deviations
CLASSES = np.random.default_rng(0).integers(0, 43, N)  # every hour predicts the same classes: no drift


@pytest.fixture
def store(tmp_path, monkeypatch) -> FileStore:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIGNWATCH_STORE_URL", (tmp_path / "store").as_uri())
    monkeypatch.setenv("SIGNWATCH_ENDPOINT", "ep")
    s = FileStore(tmp_path / "store")
    publish_manifest(s, "ep", load_spec())  # the served model's classes
    return s


def _capture(store: FileStore, hour: datetime) -> list[tuple[str, int]]:
    """N captured predictions in ``hour``: (event id, predicted class)."""
    lines, out = [], []
    for i, c in enumerate(CLASSES):
        c = int(c)
        e = inference_event(class_id=c, time=hour.replace(minute=i % 60, second=i // 60))
        e = e.model_copy(update={"output": InferenceOutput(predictions=[
            Prediction(class_id=c, label="x", probability=0.95),
            Prediction(class_id=(c + 1) % 43, label="y", probability=0.03)], model_version="test")})
        lines.append(json.dumps(capture_record(e, b"x")))
        out.append((e.event_id, c))
    store.put(f"datacapture/ep/AllTraffic/{hour:%Y/%m/%d/%H}/part.jsonl", ("\n".join(lines) + "\n").encode())
    return out


def _label(store: FileStore, predictions, right: float, collected_at: datetime, seed: int = 1):
    """Labels for the predictions, ``right`` of them equal to the prediction: (y_true, y_pred)."""
    rng = np.random.default_rng(seed)
    truth = [c if rng.random() < right else (c + 1 + int(rng.integers(0, 42))) % 43 for _, c in predictions]
    # half by class id, half by class name, as clients send them
    gt.write_labels(store, "ep", [(i, t if k % 2 else CLASS_NAMES[t]) for k, ((i, _), t) in
                                  enumerate(zip(predictions, truth))], collected_at)
    return truth, [c for _, c in predictions]


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _drift_baseline_from(hour: datetime) -> None:
    """A drift baseline of the same predictions, so that only model quality can violate."""
    r = _invoke("baseline", "suggest", "--capture", "datacapture/ep", "--start", hour.isoformat(),
                "--end", hour.replace(minute=59).isoformat(), "--upload", "--out", "drift")
    assert r.exit_code == 0, r.output


JOB = ["monitor", "job", "--capture", "datacapture/ep", "--start", DAY2.isoformat(),
       "--end", DAY2.replace(hour=11).isoformat(), "--json"]
LABELS = ["--ground-truth", "groundtruth", "--start-offset", "-P1D", "--end-offset", "-P1D"]


def test_a_run_merges_yesterdays_labels_and_reports_sklearns_metrics(store):
    yesterday = _capture(store, DAY1)
    _capture(store, DAY2)  # today's traffic, which the drift checks look at
    y_true, y_pred = _label(store, yesterday, right=0.8, collected_at=DAY2.replace(hour=9))
    _drift_baseline_from(DAY2)

    r = _invoke(*JOB, *LABELS)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["violations"] == []
    q = summary["model_quality"]
    assert q["merge"]["matched"] == N and q["merge"]["predictions_without_label"] == 0
    assert q["merge"]["labels_without_prediction"] == q["merge"]["duplicates"] == q["merge"]["unknown_class"] == 0
    assert q["window"]["predictions"] == [DAY1.isoformat(), DAY1.replace(hour=11).isoformat()]
    assert q["metrics"]["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert q["metrics"]["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted", zero_division=0))
    assert q["metrics"]["weighted_precision"] == pytest.approx(
        precision_score(y_true, y_pred, average="weighted", zero_division=0))
    assert q["realised_accuracy"] == q["metrics"]["accuracy"]
    assert q["estimate_error"] == pytest.approx(q["estimated_accuracy"] - q["realised_accuracy"])
    assert q["constraints"] is None and q["violations"] == [] and "no model-quality constraints" in r.stderr

    folder = summary["folder"]
    stats = json.loads(store.get(f"{folder}/{quality.RUN_FOLDER}/statistics.json"))
    validate(stats, "model_quality_statistics")
    assert stats["dataset"]["item_count"] == N
    assert store.exists(f"{folder}/statistics.json"), "beside the drift run's files"
    assert len(q["merged"]) == 1 and q["merged"][0].startswith("merge/ep/AllTraffic/2026/12/01/10/")

    printed = _invoke(*JOB[:-1], *LABELS)  # for people
    assert printed.exit_code == 0 and "model quality: 240 labelled predictions, accuracy" in printed.stdout


def test_a_quality_baseline_from_good_labels_flags_a_worse_day(store):
    good = _capture(store, DAY1)
    _label(store, good, right=0.95, collected_at=DAY1.replace(hour=12))
    _drift_baseline_from(DAY1)
    r = _invoke("baseline", "suggest", "--quality", "--ground-truth", "groundtruth", "--capture", "datacapture/ep",
                "--start", DAY1.isoformat(), "--end", DAY1.replace(hour=11).isoformat(), "--upload", "--out", "mq")
    assert r.exit_code == 0, r.output
    made = json.loads(r.stdout)
    assert made["merge"]["matched"] == N and made["uploaded"][1].endswith("baselines/ep/model-quality/constraints.json")
    constraints = json.loads(store.get(quality.constraints_key("baselines/ep")))
    validate(constraints, "model_quality_constraints")
    validate(json.loads(store.get("baselines/ep/model-quality/statistics.json")), "model_quality_statistics")
    assert constraints[quality.CONSTRAINTS_KEY]["accuracy"]["threshold"] < made["metrics"]["accuracy"] - 0.05 + 1e-9
    assert store.exists("baselines/ep/statistics.json"), "the drift baseline stays where it was"

    worse = _capture(store, DAY2)
    _label(store, worse, right=0.6, collected_at=DAY2.replace(hour=10, minute=30))
    r = _invoke(*JOB, "--ground-truth", "groundtruth")
    assert r.exit_code == 2, r.output
    summary = json.loads(r.stdout)
    assert summary["violations"] == [], "the drift checks see the same predictions"
    q = summary["model_quality"]
    assert "accuracy" in {v["metric_name"] for v in q["violations"]}
    assert q["constraints"] == "baselines/ep/model-quality/constraints.json"
    report = json.loads(store.get(f"{summary['folder']}/{quality.RUN_FOLDER}/constraint_violations.json"))
    validate(report, "model_quality_constraint_violations")
    assert report["violations"] == q["violations"]


def test_no_labels_in_range_skips_model_quality_without_failing(store):
    _capture(store, DAY2)
    _drift_baseline_from(DAY2)
    r = _invoke(*JOB, "--ground-truth", "groundtruth")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model_quality"]["skipped"] == "no labels"
    assert "model quality skipped: no labels" in r.stderr


def test_job_refuses_offsets_without_labels_and_bad_durations(store):
    for args, message in ((["--start-offset", "-P1D"], "go with --ground-truth"),
                          (["--ground-truth", "groundtruth", "--end-offset", "-P7H"], "-PT7H"),
                          (["--ground-truth", "ftp://x/y"], "--ground-truth must be"),
                          (["--ground-truth", "datacapture"], "the same folder")):
        r = _invoke(*JOB, *args)
        assert r.exit_code == 2 and message in r.stderr and "Traceback" not in r.output, (args, r.output)


def test_a_quality_baseline_from_a_csv_of_ids_and_names(store, tmp_path):
    rng = np.random.default_rng(3)
    y_pred = rng.integers(0, 43, 150)
    y_true = np.where(rng.random(150) < 0.9, y_pred, rng.integers(0, 43, 150))
    rows = ["id,truth,answer"] + [f"{k},{t if k % 3 else chr(34) + CLASS_NAMES[t] + chr(34)},{p}"
                                  for k, (t, p) in enumerate(zip(y_true, y_pred))]
    (tmp_path / "labelled.csv").write_text("\n".join(rows) + "\n")
    r = _invoke("baseline", "suggest", "--quality", "--dataset", tmp_path / "labelled.csv", "--label-column", "truth",
                "--prediction-column", "answer", "--tolerance", "0.1", "--out", tmp_path / "mq")
    assert r.exit_code == 0, r.output
    stats = json.loads((tmp_path / "mq" / "statistics.json").read_text())
    constraints = json.loads((tmp_path / "mq" / "constraints.json").read_text())
    accuracy = accuracy_score(y_true, y_pred)
    assert stats[quality.METRICS_KEY]["accuracy"]["value"] == pytest.approx(accuracy)
    assert stats[quality.METRICS_KEY]["accuracy"]["standard_deviation"] == "NaN"  # under 200 rows
    assert constraints[quality.CONSTRAINTS_KEY]["accuracy"] == {"threshold": pytest.approx(accuracy - 0.1),
                                                                "comparison_operator": "LessThanThreshold"}

    jsonl = "\n".join(json.dumps({"label": CLASS_NAMES[int(t)], "prediction": int(p)}) for t, p in zip(y_true, y_pred))
    (tmp_path / "labelled.jsonl").write_text(jsonl + "\n")
    r = _invoke("baseline", "suggest", "--quality", "--dataset", tmp_path / "labelled.jsonl", "--out", tmp_path / "j")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["metrics"]["accuracy"] == pytest.approx(accuracy)


@pytest.mark.parametrize("content, message", [
    (b"label,guess\n1,2\n", "no column 'prediction'"),
    (b"label,prediction\n1,2\nStop,Nowhere\n", "line 3: unknown class 'Nowhere'"),
    (b"label,prediction\n1,43\n", "unknown class '43'"),
    (b"label,prediction\n1,\n", "no value in column 'prediction'"),
    (b"", "is empty"),
    (b"label,prediction\n", "has no rows"),
    (b"label,prediction\n\xff\xfe,1\n", "not UTF-8"),
    (None, "cannot read"),
])
def test_bad_datasets_fail_in_one_line(store, tmp_path, content, message):
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_bytes(content)
    r = _invoke("baseline", "suggest", "--quality", "--dataset", path, "--out", tmp_path / "out")
    assert r.exit_code == 1, r.output
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit), r.exception
    assert not (tmp_path / "out").exists()


def test_suggest_quality_needs_one_source_and_keeps_drift_options_apart(store, tmp_path):
    for args, message in ((["--quality"], "one of them"),
                          (["--quality", "--dataset", "x.csv", "--ground-truth", "groundtruth"], "one of them"),
                          (["--quality", "--dataset", "x.csv", "--images", tmp_path], "not --images"),
                          (["--dataset", "x.csv"], "add --quality")):
        r = _invoke("baseline", "suggest", *args)
        assert r.exit_code == 2 and message in r.stderr, (args, r.output)

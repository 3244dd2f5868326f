"""Ground-truth labels in SageMaker's format and the batch merge with captured predictions:
the layout, every kind of bad label counted exactly, the offsets' window, the merged records,
and metrics from the merge equal to scikit-learn's on the same pairs."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from signwatch.capture import capture_record, read_capture_lines
from signwatch.monitoring import groundtruth as gt
from signwatch.ports.store_file import FileStore
from tests.unit.helpers import inference_event

CLASSES = ("Stop", "Yield", "Speed limit (30km/h)", "No entry", "Priority road")
UTC = timezone.utc


def _at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def _put_captures(store, events, variant="AllTraffic", name="c"):
    hour = events[0].time
    lines = [json.dumps(capture_record(e, b"raw")) for e in events]
    store.put(f"datacapture/ep/{variant}/{hour:%Y/%m/%d/%H}/{name}.jsonl", ("\n".join(lines) + "\n").encode())


def _put_labels(store, collected_at, lines, name="l"):
    body = b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n"
    store.put(gt.ground_truth_key("groundtruth", "ep", collected_at, name), body)


def _label(value, event_id=None, inference_id=None, encoding="CSV") -> str:
    meta = {k: v for k, v in (("eventId", event_id), ("inferenceId", inference_id)) if v is not None}
    return json.dumps({"groundTruthData": {"data": value, "encoding": encoding}, "eventMetadata": meta,
                       "eventVersion": "0"})


def test_durations_parse_as_iso_8601():
    assert gt.parse_duration("-P1D") == timedelta(days=-1)
    assert gt.parse_duration("-PT1H") == timedelta(hours=-1)
    assert gt.parse_duration("-P1DT12H30M") == -timedelta(days=1, hours=12, minutes=30)
    assert gt.parse_duration("PT90S") == timedelta(seconds=90)
    assert gt.parse_duration("P2W") == timedelta(days=14)
    assert gt.parse_duration("") == gt.parse_duration(None) == timedelta(0)
    for text in ("-P7H", "P", "PT", "-P1DT", "P1Y", "P1M", "1D", "-P-1D", "P1.5D"):
        with pytest.raises(ValueError):
            gt.parse_duration(text)
    with pytest.raises(ValueError, match="-PT7H"):
        gt.parse_duration("-P7H")  # the form the old SageMaker docs printed


def test_window_moves_the_predictions_back_as_sagemakers_example():
    # The docs: offsets -P8D and -P1D for a run at 2020-01-09T13:00 analyse the data of
    # 2020-01-01T13:00 to 2020-01-08T13:00; labels are read up to the run's end.
    w = gt.merge_window(datetime(2020, 1, 9, 12, tzinfo=UTC), datetime(2020, 1, 9, 13, tzinfo=UTC), "-P8D", "-P1D")
    assert w.predictions == (datetime(2020, 1, 1, 12, tzinfo=UTC), datetime(2020, 1, 8, 13, tzinfo=UTC))
    assert w.labels == (datetime(2020, 1, 1, 12, tzinfo=UTC), datetime(2020, 1, 9, 13, tzinfo=UTC))
    with pytest.raises(ValueError, match="time zone"):
        gt.merge_window(datetime(2020, 1, 9, 12), datetime(2020, 1, 9, 13, tzinfo=UTC))
    with pytest.raises(ValueError, match="empty window"):
        gt.merge_window(_at(21, 0), _at(21, 1), "-PT1H", "-PT2H")


def test_labels_are_written_in_the_collection_hour_and_a_rewrite_replaces(tmp_path):
    store = FileStore(tmp_path)
    labels = [("req-1", 3), ("evt-2", "Speed limit (30km/h)"), ("evt-3", 'Sign, "quoted"')]
    key = gt.write_labels(store, "ep", labels, _at(20, 10, 59))
    assert key.startswith("groundtruth/ep/2026/11/20/10/labels-") and key.endswith(".jsonl")
    assert gt.write_labels(store, "ep", labels, _at(20, 10, 5)) == key  # same labels, same file
    assert store.list("groundtruth") == [key]
    assert gt.ground_truth_key("gt", "ep", datetime(2026, 11, 20, 11, 59, 1, 7, tzinfo=timezone(timedelta(hours=2)))) \
        == "gt/ep/2026/11/20/09/labels-20261120T095901000007Z.jsonl"  # the hour in UTC
    first = json.loads(store.get(key).decode().splitlines()[0])
    assert first == {"groundTruthData": {"data": "3", "encoding": "CSV"}, "eventMetadata": {"eventId": "req-1"},
                     "eventVersion": "0"}
    counts = gt.MergeCounts()
    read = gt.read_labels(store.get(key), key, (*CLASSES, 'Sign, "quoted"'), counts)
    assert [(r.ids, r.class_id) for r in read] == [(("req-1",), 3), (("evt-2",), 2), (("evt-3",), 5)]
    assert counts.bad == {} and counts.unknown_class == 0


def test_an_oversized_label_file_is_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(gt, "MAX_FILE_BYTES", 100)
    counts = gt.MergeCounts()
    data = ((_label("1", "a") + "\n") * 3).encode()
    assert gt.read_labels(data, "k", CLASSES, counts) == []
    assert counts.label_files_too_large == 1 and counts.label_files == 1
    assert "skipped" in counts.examples[0]


def _scenario(store):
    """Captures of 2026-11-20 05h, 07h (a second variant) and 09h, with some outside the run's
    window, and labels in five hour folders (see ``test_merge_counts_every_label_exactly``)."""
    e = [inference_event(class_id=i % 5, time=_at(20, 5, i), inference_id=f"req-{i}" if i % 2 == 0 else None)
         for i in range(10)]
    f = [inference_event(class_id=(i * 2) % 5, time=_at(20, 9, 30 + i)) for i in range(10)]
    c = [inference_event(class_id=4, time=_at(20, 7))]
    before = [inference_event(class_id=1, time=_at(19, 23, 30 + i)) for i in range(3)]  # before the window
    after = [inference_event(class_id=1, time=_at(21, 0, 10 + i)) for i in range(2)]  # after end + end_offset
    # The 05h file out of time order, as a replayed batch may be
    _put_captures(store, e[5:] + e[:5], name="e")
    _put_captures(store, f, name="f")
    _put_captures(store, c, variant="Canary", name="c")
    _put_captures(store, before, name="before")
    _put_captures(store, after, name="after")

    truth = {}  # event id -> the class the labels give it (the first label, for duplicates)

    def lab(event, value, by="event", key=None):
        truth[event.event_id] = value if isinstance(value, int) else CLASSES.index(value)
        if by == "inference":
            return _label(str(value), event_id=event.inference_id)  # SageMaker's field holding it
        if by == "inference_key":
            return _label(str(value), inference_id=event.inference_id)  # signwatch's own field
        return _label(str(value), event_id=event.event_id)

    # 11-20 10h, after the predictions (the usual case)
    _put_labels(store, _at(20, 10), [
        lab(e[0], 0, by="inference"),              # by inferenceId, class id
        lab(e[1], "Yield"),                        # by eventId, class name
        lab(e[2], 3),                              # by eventId though it has an inferenceId
        lab(e[3], "Priority road"),
        lab(e[4], 4, by="inference_key"),
        lab(c[0], "Stop"),                          # the Canary variant
        _label("1", event_id="nobody-1"),           # unknown ids
        _label("2", event_id="nobody-2"),
        _label("1", event_id=before[0].event_id),   # a prediction outside the window
        _label("99", event_id=e[7].event_id),       # classes the model does not have
        _label("Unicorn", event_id=e[8].event_id),
    ], name="a")
    # 11-20 03h: before the predictions' hour, within the offsets
    _put_labels(store, _at(20, 3), [
        lab(e[5], "Speed limit (30km/h)"),
        lab(e[6], 1, by="inference"),
        lab(f[0], 2),
        b"not json{",
        b"[1, 2]",
        _label("1", event_id="x", encoding="JSON"),
        json.dumps({"groundTruthData": {"data": "1", "encoding": "CSV"}, "eventMetadata": {}}),
        _label("1", event_id="y" * 20_000),         # over MAX_LINE_BYTES
        _label("1,2", event_id="z"),
        b'{"groundTruthData": "\xff"}',
        b"",
    ], name="b")
    # 11-21 00h: after the predictions' window, before the run's end
    _put_labels(store, _at(21, 0), [
        *(lab(f[i], i % 5) for i in range(1, 5)),
        _label("4", event_id=e[0].inference_id),    # the same id again
        _label("4", event_id=e[2].inference_id),    # a second label for e[2] (the first named its eventId)
    ], name="c")
    # outside the label window: not read
    _put_labels(store, _at(19, 22), [_label("0", event_id=f[5].event_id)], name="d")
    _put_labels(store, _at(21, 1), [_label("0", event_id=f[6].event_id)], name="e")
    return e, f, c, truth


def _merge(store):
    # A run over 11-21 00h, analysing the predictions of the day before: -P1D / -PT1H
    return gt.merge(store, "ep", CLASSES, _at(21, 0), _at(21, 1), "-P1D", "-PT1H")


def test_merge_counts_every_label_exactly(tmp_path):
    store = FileStore(tmp_path)
    e, f, c, truth = _scenario(store)
    result = _merge(store)
    counts = result.counts
    matched = [*e[:7], f[0], *f[1:5], c[0]]
    assert counts.matched == len(matched) == 13
    assert counts.predictions_without_label == 8  # e[7..9] (e[7], e[8]: unknown classes), f[5..9]
    assert counts.labels_without_prediction == 3  # nobody-1, nobody-2, the one outside the window
    assert counts.duplicates == 2
    assert counts.unknown_class == 2
    assert counts.bad == {"encoding_not_csv": 1, "line_too_long": 1, "no_id": 1, "not_an_object": 1,
                          "not_json": 1, "not_one_csv_field": 1, "not_utf8": 1}
    assert counts.label_files == 3 and counts.capture_files == 3 and counts.captures_unreadable == 0
    assert len(counts.examples) == gt.MAX_EXAMPLES
    json.dumps(counts.as_dict())  # the report is JSON

    got = {p.record["eventMetadata"]["eventId"]: (p.true_class, p.predicted_class) for p in result.pairs}
    assert got == {ev.event_id: (truth[ev.event_id], ev.output.predictions[0].class_id) for ev in matched}
    assert got[e[0].event_id][0] == 0 and got[e[2].event_id][0] == 3  # the first label wins


def test_merged_records_are_the_capture_with_its_label_in_the_predictions_hour(tmp_path):
    store = FileStore(tmp_path)
    e, f, c, truth = _scenario(store)
    result = _merge(store)
    keys = gt.write_merged(store, "ep", result)
    name = "merged-20261120T000000Z-20261121T000000Z.jsonl"
    assert keys == [f"merge/ep/AllTraffic/2026/11/20/05/{name}", f"merge/ep/AllTraffic/2026/11/20/09/{name}",
                    f"merge/ep/Canary/2026/11/20/07/{name}"]
    records = [r for k in keys for r in read_capture_lines(store.get(k))[0]]
    assert len(records) == 13
    for r in records:
        assert set(r) == {"captureData", "eventMetadata", "eventVersion", "groundTruthData"}
        assert r["groundTruthData"] == {"data": str(truth[r["eventMetadata"]["eventId"]]), "encoding": "CSV"}
    assert gt.write_merged(store, "ep", _merge(store)) == keys  # a rerun replaces its files
    assert len(store.list("merge")) == 3


def test_metrics_of_the_merge_equal_scikit_learns(tmp_path):
    store = FileStore(tmp_path)
    _scenario(store)
    result = _merge(store)
    y_true, y_pred = result.y()
    metrics = gt.merged_metrics(result, CLASSES)
    assert metrics["accuracy"]["value"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    p, r, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="weighted", zero_division=0)
    assert metrics["weighted_f1"]["value"] == pytest.approx(f1, abs=1e-12)
    assert metrics["weighted_precision"]["value"] == pytest.approx(p, abs=1e-12)
    assert set(metrics["confusion_matrix"]) <= set(CLASSES)  # keyed by the model's class names


def test_nothing_to_merge_is_counted_not_an_error(tmp_path):
    store = FileStore(tmp_path)
    result = gt.merge(store, "ep", CLASSES, _at(21, 0), _at(21, 1))
    assert result.pairs == [] and result.counts.matched == 0 and result.counts.label_files == 0
    with pytest.raises(ValueError, match="no labelled predictions"):
        gt.merged_metrics(result, CLASSES)

"""Ground-truth labels in the store, and the batch merge that joins them with captured
predictions, as SageMaker Model Monitor's model-quality monitor takes them.

Sources (SageMaker Developer Guide): "Ingest Ground Truth labels and merge them with
predictions" (model-monitor-model-quality-merge.html) for the record and the layout;
"Schedule model quality monitoring jobs" (model-monitor-model-quality-schedule.html) for the
offsets; a merge job's request as logged by a user's schedule (aws-samples MLOps pipeline
notes: ``groundtruth-merge-…`` reading ``groundtruth/…/yyyy/mm/dd/hh`` and
``{endpoint}/{variant}/yyyy/mm/dd/hh``, writing to ``merge/{endpoint}/{variant}/yyyy/mm/dd/hh``,
read by the analyzer as ``sagemakerMergeJson``).

**A label** is one JSON line: ``{"groundTruthData": {"data": "14", "encoding": "CSV"},
"eventMetadata": {"eventId": "..."}, "eventVersion": "0"}``, in a ``.jsonl`` file under
``groundtruth/{endpoint}/yyyy/mm/dd/hh/``, the hour the label was *collected* (not the hour of
the prediction). SageMaker puts the client's ``inferenceId`` or its own ``eventId`` in
``eventMetadata.eventId``; signwatch also takes ``eventMetadata.inferenceId``. ``data`` is one
CSV field: the class id ("14") or the model's class name ("Stop"); digits are read as an id
first (no GTSRB name is a number). A JSON number is taken too (clients send one).

**The join key**: SageMaker joins on the capture's ``inferenceId`` when it has one, else its
``eventId``. The issue lets a label name either, so a capture is found by its ``inferenceId``
first, then by its ``eventId``.

**Duplicates**: the first label in collection order (hour folder, then key, then line) wins;
each later one for the same id, or for a capture another label already matched (one label by
``inferenceId``, one by ``eventId``), is counted as a duplicate and not used. First, not last,
because the streaming join cannot take back a label it already counted: both joins then agree.
A client that reuses an ``inferenceId`` for two requests gets its label joined to the first
capture read (key order); the other counts as a prediction without a label.

**The window and the offsets**: SageMaker's docs say a model-quality job "subtract[s]" the
``StartTimeOffset`` from its start time and the ``EndTimeOffset`` from its end time (ISO 8601
durations such as ``-P1D``, ``-PT1H``; their example: offsets ``-P8D``/``-P1D`` for a run at
2020-01-09T13:00 analyse 2020-01-01T13:00 to 2020-01-08T13:00). So the offsets move the
*predictions* analysed back in time, to those old enough to have their labels. The docs do not
say which label folders the merge reads; since labels are collected after their predictions, we
read every folder whose hour overlaps [start + start_offset, end): from when the first analysed
prediction was made to the end of the run's own window, never later, so a rerun of the same
window merges the same labels. Hence, for a run over [start, end):

- predictions: captured records with ``inferenceTime`` in [start + start_offset, end + end_offset)
- labels: files in hour folders overlapping [start + start_offset, end)

A label collected before its prediction's hour (the clocks of the labelling tool and the
endpoint disagree, or labels were uploaded by ``inferenceId`` in advance) still joins when its
folder lies in that range.

**Limits**: a label line over ``MAX_LINE_BYTES`` (16 KiB; a label is ~150 bytes) is bad and not
parsed; a label file over ``MAX_FILE_BYTES`` (64 MiB, ~400,000 labels) is skipped whole and
counted, so one runaway upload cannot exhaust the job's memory; an id over ``MAX_ID_CHARS``
(``events.MAX_NAME``, 128: SageMaker's ``InferenceId`` has 64, event ids are UUIDs) is bad.
Nothing in a label file is fatal: every problem is counted by reason, with a few examples.

**Memory**: labels are read first (an id and a class each), then the captures are streamed one
file at a time and only the matched records are kept.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

from signwatch.capture import read_capture_lines
from signwatch.events import MAX_NAME
from signwatch.monitoring import quality
from signwatch.monitoring.features import Features, features_of
from signwatch.monitoring.reference import record_time
from signwatch.ports.store import ObjectStore

GROUND_TRUTH_PREFIX = "groundtruth"
CAPTURE_PREFIX = "datacapture"
MERGE_PREFIX = "merge"
MAX_LINE_BYTES = 16 * 1024
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_ID_CHARS = MAX_NAME
MAX_EXAMPLES = 10  # problems quoted in the report; the counts cover all of them
HOUR = timedelta(hours=1)


# ISO 8601 durations, the fixed-length part only: weeks, days, hours, minutes, seconds. Years and
# months have no fixed length, and SageMaker's offsets use D, H and M (minutes) only.
_DURATION = re.compile(r"([-+]?)P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?")


def parse_duration(text: str | None) -> timedelta:
    """``-P1D``, ``-PT1H``, ``PT30M``, ``-P1DT12H``...; ``None`` or "" is zero."""
    if not text:
        return timedelta(0)
    m = _DURATION.fullmatch(text.strip())
    if not m or not any(m.groups()[1:]) or text.strip().endswith("T"):
        hint = " (hours and minutes go after a T: -PT7H)" if re.fullmatch(r"[-+]?P\d+[HM]", text.strip()) else ""
        raise ValueError(f"{text!r} is not an ISO 8601 duration of weeks, days, hours, minutes or seconds{hint}")
    sign, weeks, days, hours, minutes, seconds = m.groups()
    d = timedelta(weeks=int(weeks or 0), days=int(days or 0), hours=int(hours or 0),
                  minutes=int(minutes or 0), seconds=float(seconds or 0))
    return -d if sign == "-" else d


def _utc(t: datetime, what: str) -> datetime:
    # A naive time would be read as the host's local time by astimezone: refuse it instead.
    if t.tzinfo is None:
        raise ValueError(f"{what} {t.isoformat()} has no time zone (give UTC)")
    return t.astimezone(timezone.utc)


# --- labels in the store -------------------------------------------------------------------

def ground_truth_key(prefix: str, endpoint: str, collected_at: datetime, name: str | None = None) -> str:
    """``{prefix}/{endpoint}/yyyy/mm/dd/hh/{name}.jsonl``, the hour (UTC) the labels were
    collected; ``name`` by default the collection time to the microsecond."""
    t = _utc(collected_at, "collected_at")
    return f"{prefix}/{endpoint}/{t:%Y/%m/%d/%H}/{name or f'labels-{t:%Y%m%dT%H%M%S%fZ}'}.jsonl"


def label_line(label_id: str, value: int | str) -> str:
    """One SageMaker ground-truth record; ``value`` a class id or a class name (CSV-quoted when
    it needs it)."""
    field_ = value if isinstance(value, int) else _csv_field(str(value))
    record = {"groundTruthData": {"data": str(field_), "encoding": "CSV"},
              "eventMetadata": {"eventId": label_id}, "eventVersion": "0"}
    return json.dumps(record, separators=(",", ":"))


def _csv_field(text: str) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow([text])
    return out.getvalue()


def write_labels(store: ObjectStore, endpoint: str, labels: Iterable[tuple[str, int | str]],
                 collected_at: datetime, prefix: str = GROUND_TRUTH_PREFIX) -> str:
    """Write ``(id, class id or name)`` pairs as one file in the hour folder of ``collected_at``.
    The file is named by its content's hash, so writing the same labels again replaces the file
    instead of duplicating every label."""
    body = "".join(label_line(i, v) + "\n" for i, v in labels).encode()
    name = "labels-" + hashlib.sha256(body).hexdigest()[:16]
    key = ground_truth_key(prefix, endpoint, collected_at, name)
    store.put(key, body, "application/jsonlines")
    return key


@dataclass(frozen=True)
class Label:
    ids: tuple[str, ...]  # what the label names: inferenceId and/or eventId, in lookup order
    class_id: int
    where: str            # key:line, for the report


@dataclass
class MergeCounts:
    matched: int = 0
    # an unknown id, a prediction outside the window, or one whose record cannot be read
    labels_without_prediction: int = 0
    predictions_without_label: int = 0  # captured in the window, no usable label
    duplicates: int = 0
    unknown_class: int = 0              # the model has no such class (id or name)
    bad: Counter = field(default_factory=Counter)  # unreadable label lines, by reason
    label_files: int = 0
    label_files_too_large: int = 0
    capture_files: int = 0
    captures_unreadable: int = 0        # capture lines or records the merge cannot use
    examples: list[str] = field(default_factory=list)

    def note(self, where: str, reason: str) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {reason}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["bad"] = dict(sorted(self.bad.items()))
        return d


def class_index(class_names: Sequence[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(class_names)}


def _resolve_class(text: str, names: dict[str, int], n_classes: int) -> int | None:
    text = text.strip()
    if text.isascii() and text.isdigit():
        c = int(text)
        return c if c < n_classes else None
    return names.get(text)


def parse_label(line: bytes, names: dict[str, int], n_classes: int, where: str,
                counts: MergeCounts) -> Label | None:
    """The label of one line (a file's, a topic message, an item of ``POST /ground-truth``), or
    ``None`` with the reason counted: the one reader of SageMaker's ground-truth record."""
    def bad(reason: str) -> None:
        counts.bad[reason] += 1
        counts.note(where, reason)

    if len(line) > MAX_LINE_BYTES:
        return bad("line_too_long")
    try:
        record = json.loads(line)
    except UnicodeDecodeError:
        return bad("not_utf8")
    except ValueError:
        return bad("not_json")
    if not isinstance(record, dict):
        return bad("not_an_object")
    data, meta = record.get("groundTruthData"), record.get("eventMetadata")
    if not isinstance(data, dict) or not isinstance(meta, dict):
        return bad("no_groundTruthData_or_eventMetadata")
    # CSV is the only encoding SageMaker takes; a label without one is read as CSV
    if str(data.get("encoding", "CSV")).upper() != "CSV":
        return bad("encoding_not_csv")
    value = data.get("data")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return bad("no_label")
    ids = tuple(dict.fromkeys(i for i in (meta.get("inferenceId"), meta.get("eventId"))
                              if isinstance(i, str) and i))
    if not ids:
        return bad("no_id")
    if any(len(i) > MAX_ID_CHARS for i in ids):
        return bad("id_too_long")
    row = next(csv.reader([value]), [])
    if len(row) != 1:
        return bad("not_one_csv_field")
    c = _resolve_class(row[0], names, n_classes)
    if c is None:
        counts.unknown_class += 1
        counts.note(where, f"unknown class {row[0][:64]!r}")
        return None
    return Label(ids, c, where)


def read_labels(data: bytes, key: str, class_names: Sequence[str], counts: MergeCounts,
                names: dict[str, int] | None = None) -> list[Label]:
    """The labels of one file, its problems counted in ``counts``."""
    counts.label_files += 1
    if len(data) > MAX_FILE_BYTES:
        counts.label_files_too_large += 1
        counts.note(key, f"file of {len(data)} bytes over {MAX_FILE_BYTES}: skipped")
        return []
    names = class_index(class_names) if names is None else names
    labels = []
    for n, line in enumerate(data.split(b"\n"), 1):
        if line.strip():
            label = parse_label(line, names, len(class_names), f"{key}:{n}", counts)
            if label is not None:
                labels.append(label)
    return labels


# --- the batch merge -----------------------------------------------------------------------

@dataclass(frozen=True)
class MergeWindow:
    predictions: tuple[datetime, datetime]  # [from, to) of inferenceTime
    labels: tuple[datetime, datetime]       # hour folders overlapping [from, to)


def merge_window(start: datetime, end: datetime, start_offset: str | None = None,
                 end_offset: str | None = None) -> MergeWindow:
    start, end = _utc(start, "start"), _utc(end, "end")
    a, b = start + parse_duration(start_offset), end + parse_duration(end_offset)
    if not a < b:
        raise ValueError(f"empty window: predictions from {a.isoformat()} to {b.isoformat()}")
    return MergeWindow((a, b), (a, end))


def _hour_of(key: str) -> datetime | None:
    """The hour folder ``.../yyyy/mm/dd/hh/<file>`` of a key, or ``None`` if it has none."""
    parts = key.split("/")
    try:
        y, m, d, h = (int(p) for p in parts[-5:-1])
        return datetime(y, m, d, h, tzinfo=timezone.utc)
    except ValueError:
        return None


def _keys_in(store: ObjectStore, prefix: str, frm: datetime, to: datetime) -> list[str]:
    """Keys under ``prefix`` whose hour folder overlaps [frm, to), in key (so time) order."""
    out = []
    for key in store.list(prefix):
        hour = _hour_of(key)
        if hour is not None and hour + HOUR > frm and hour < to:
            out.append(key)
    return out


@dataclass(frozen=True)
class MergedPair:
    true_class: int
    predicted_class: int
    features: Features
    record: dict        # the captured record, as read
    capture_key: str
    label_where: str


@dataclass
class MergeResult:
    pairs: list[MergedPair]
    counts: MergeCounts
    window: MergeWindow

    def y(self) -> tuple[list[int], list[int]]:
        return [p.true_class for p in self.pairs], [p.predicted_class for p in self.pairs]


def merge(store: ObjectStore, endpoint: str, class_names: Sequence[str], start: datetime, end: datetime,
          start_offset: str | None = None, end_offset: str | None = None,
          ground_truth_prefix: str = GROUND_TRUTH_PREFIX, capture_prefix: str = CAPTURE_PREFIX) -> MergeResult:
    """Join the labels under ``{ground_truth_prefix}/{endpoint}/`` with the records captured
    under ``{capture_prefix}/{endpoint}/`` for a run over [start, end) (see the module's notes
    for the offsets, the key and the duplicates)."""
    window = merge_window(start, end, start_offset, end_offset)
    counts, names, n_classes = MergeCounts(), class_index(class_names), len(class_names)

    # Labels first: id -> (order, label); the first label for an id wins.
    by_id: dict[str, tuple[int, Label]] = {}
    order = 0
    for key in _keys_in(store, f"{ground_truth_prefix}/{endpoint}/", *window.labels):
        for label in read_labels(store.get(key), key, class_names, counts, names):
            if any(i in by_id for i in label.ids):
                counts.duplicates += 1
                counts.note(label.where, f"duplicate label for {label.ids[0][:64]!r}")
                continue
            for i in label.ids:
                by_id[i] = (order, label)
            order += 1
    used: set[Label] = set()

    pairs = []
    frm, to = window.predictions
    for key in _keys_in(store, f"{capture_prefix}/{endpoint}/", frm, to):
        counts.capture_files += 1
        records, unreadable = read_capture_lines(store.get(key))
        counts.captures_unreadable += unreadable
        for record in records:
            t = record_time(record)
            if t is None:
                counts.captures_unreadable += 1
                continue
            if not frm <= t < to:
                continue
            meta = record.get("eventMetadata") or {}
            found = sorted({by_id[i] for i in (meta.get("inferenceId"), meta.get("eventId"))
                            if isinstance(i, str) and i in by_id and by_id[i][1] not in used},
                           key=lambda entry: entry[0])
            if not found:
                counts.predictions_without_label += 1
                continue
            try:
                predictions = json.loads(record["captureData"]["endpointOutput"]["data"])["predictions"]
                features = features_of(predictions)
                if not 0 <= features.class_id < n_classes:
                    raise ValueError(f"class {features.class_id} outside the model's")
            except (ValueError, KeyError, TypeError, IndexError):
                counts.captures_unreadable += 1
                continue
            (_, label), *others = found
            used.add(label)
            for _, other in others:  # one label by inferenceId, another by eventId
                used.add(other)
                counts.duplicates += 1
                counts.note(other.where, f"second label for the prediction {label.ids[0][:64]!r}")
            pairs.append(MergedPair(label.class_id, features.class_id, features, record, key, label.where))
    counts.matched = len(pairs)
    counts.labels_without_prediction = len({label for _, label in by_id.values()} - used)
    return MergeResult(pairs, counts, window)


def merged_record(pair: MergedPair) -> dict:
    """A merged record: the captured record with the label's ``groundTruthData`` beside its
    ``captureData`` (the class id, as CSV). SageMaker's docs do not publish the merge job's
    output record, only that the analyzer reads it as ``sagemakerMergeJson`` with
    ``captureIndexNames``; this is signwatch's shape for it."""
    return {**pair.record, "groundTruthData": {"data": str(pair.true_class), "encoding": "CSV"}}


def merged_records(pairs: Iterable[MergedPair]) -> bytes:
    return "".join(json.dumps(merged_record(p), separators=(",", ":")) + "\n" for p in pairs).encode()


def write_merged(store: ObjectStore, endpoint: str, result: MergeResult, prefix: str = MERGE_PREFIX) -> list[str]:
    """The merged records under ``{prefix}/{endpoint}/{variant}/yyyy/mm/dd/hh/`` (the hour of
    the prediction, as SageMaker's merge job lays them out), one file per hour and variant,
    named by the run's window so that a rerun replaces its files."""
    a, b = result.window.predictions
    name = f"merged-{a:%Y%m%dT%H%M%SZ}-{b:%Y%m%dT%H%M%SZ}"
    groups: dict[str, list[MergedPair]] = {}
    for pair in result.pairs:
        variant = pair.capture_key.split("/")[-6]
        t = record_time(pair.record)
        groups.setdefault(f"{prefix}/{endpoint}/{variant}/{t:%Y/%m/%d/%H}/{name}.jsonl", []).append(pair)
    for key, group in sorted(groups.items()):
        store.put(key, merged_records(group), "application/jsonlines")
    return sorted(groups)


def merged_metrics(result: MergeResult, class_names: Sequence[str], seed: int = 0) -> dict:
    """SageMaker's ``multiclass_classification_metrics`` of the merged pairs (``ValueError``
    when nothing matched: no labels, no quality)."""
    y_true, y_pred = result.y()
    return quality.multiclass_metrics(y_true, y_pred, len(class_names), list(class_names), seed)

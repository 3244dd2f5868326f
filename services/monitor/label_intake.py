"""Labels in, whichever way they come (``POST /ground-truth``, label files in the store): each
item normalised to a ``GroundTruthRecord`` of the monitor's endpoint and read by
``groundtruth.parse_label`` (the reader of the topic too), so that a wrong label is counted by
the same reason wherever it comes from; the good ones are published to the ground-truth topic.

An item is SageMaker's ground-truth record or a compact one::

    {"groundTruthData": {"data": "14", "encoding": "CSV"}, "eventMetadata": {"eventId": "..."}, "eventVersion": "0"}
    {"id": "...", "label": 14}          (or "14", or the class name "Stop"; "inferenceId" or
                                         "eventId" in place of "id")
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from signwatch.events import GroundTruthRecord
from signwatch.monitoring.groundtruth import MergeCounts, class_index, label_line, parse_label

SAGEMAKER_FIELDS = ("groundTruthData", "eventMetadata")
COMPACT_IDS = ("id", "inferenceId", "eventId")  # the first present names the prediction
COMPACT_FIELDS = frozenset(COMPACT_IDS + ("label", "endpoint"))


def _record_of(item, endpoint: str) -> dict | object:
    """The SageMaker record of one item of the body, with the monitor's endpoint; an item that
    is not an object is returned as it is (``parse_label`` counts it)."""
    if not isinstance(item, dict):
        return item
    if any(f in item for f in SAGEMAKER_FIELDS):
        record = dict(item)
        data = record.get("groundTruthData")
        # A JSON number is taken as the class id (parse_label does), but the record carries text.
        if isinstance(data, dict) and isinstance(data.get("data"), int) and not isinstance(data["data"], bool):
            record["groundTruthData"] = {**data, "data": str(data["data"])}
        return {**record, "endpoint": record.get("endpoint", endpoint)}
    label_id = next((item[k] for k in COMPACT_IDS if k in item), None)
    label = item.get("label")
    if isinstance(label_id, str) and (isinstance(label, str) or (isinstance(label, int) and not isinstance(label, bool))):
        record = json.loads(label_line(label_id, label))  # a class name CSV-quoted when it needs it
    else:  # what is missing or wrong is left for parse_label to name
        record = {"groundTruthData": {} if label is None else {"data": label, "encoding": "CSV"},
                  "eventMetadata": {} if label_id is None else {"eventId": label_id}, "eventVersion": "0"}
    return {**record, "endpoint": item.get("endpoint", endpoint)}


def _unknown_fields(item) -> list[str]:
    if not isinstance(item, dict) or any(f in item for f in SAGEMAKER_FIELDS):
        return []  # a SageMaker record's fields are GroundTruthRecord's to judge
    return sorted(set(item) - COMPACT_FIELDS)


def read_items(items: list, endpoint: str, class_names: tuple[str, ...],
               counts: MergeCounts) -> list[tuple[str, bytes]]:
    """``(key, value)`` of each good label, in the order given; the others counted in ``counts``."""
    names, n_classes = class_index(class_names), len(class_names)
    good = []
    for i, item in enumerate(items):
        where = f"[{i}]"
        if unknown := _unknown_fields(item):
            counts.bad["unknown_field"] += 1
            counts.note(where, f"unknown field(s) {', '.join(repr(f[:32]) for f in unknown[:5])}")
            continue
        record = _record_of(item, endpoint)
        if isinstance(record, dict) and record.get("endpoint") != endpoint:
            counts.bad["other_endpoint"] += 1
            counts.note(where, f"label for endpoint {str(record.get('endpoint'))[:64]!r}, this monitor's is {endpoint!r}")
            continue
        line = json.dumps(record, separators=(",", ":")).encode()
        label = parse_label(line, names, n_classes, where, counts)
        if label is None:
            continue
        try:
            value = GroundTruthRecord.model_validate(record).to_bytes()
        except ValidationError as exc:  # e.g. a field SageMaker's record does not have
            err = exc.errors(include_url=False)[0]
            counts.bad["not_a_ground_truth_record"] += 1
            counts.note(where, f"{'.'.join(map(str, err['loc']))}: {err['msg']}")
            continue
        good.append((label.ids[0], value))
    return good

"""A labelled dataset for a model-quality baseline: the model's answer and the true label of each
item, as SageMaker's model-quality baselining job takes a dataset with a prediction attribute
and a ground-truth attribute.

Two formats: CSV with a header row, or JSON lines (one object a line), each naming the label
and the prediction in columns (keys) ``label`` and ``prediction`` unless told otherwise. A value
is a class id ("14", or a JSON integer) or the model's class name ("Stop"); digits are read as
an id first, as ground-truth labels are (``groundtruth``). The reader is strict: a baseline
must not quietly leave rows out, so any row it cannot read is a ``LabelledDataError`` whose
message is one line naming the row.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from signwatch.monitoring.groundtruth import class_index

LABEL_COLUMN, PREDICTION_COLUMN = "label", "prediction"
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


class LabelledDataError(ValueError):
    """The dataset cannot be read; the message is one line."""


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 64 else text[:61] + "..."


class _Classes:
    def __init__(self, class_names: Sequence[str]):
        self.names, self.n = class_index(class_names), len(class_names)

    def resolve(self, value, column: str, where: str) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            text = str(value)
        elif isinstance(value, str):
            text = value.strip()
        else:
            raise LabelledDataError(f"{where}: {column} {_short(value)} is neither a class id nor a class name")
        if not text:
            raise LabelledDataError(f"{where}: no value in column {column!r}")
        if text.isascii() and text.isdigit():
            if int(text) < self.n:
                return int(text)
        elif text in self.names:
            return self.names[text]
        raise LabelledDataError(f"{where}: unknown class {_short(text)} in {column!r} (the model's classes are "
                                f"ids 0..{self.n - 1} or their names)")


def _is_json_lines(text: str, name: str) -> bool:
    if name.lower().endswith(JSON_SUFFIXES):
        return True
    if name.lower().endswith(".csv"):
        return False
    return text.lstrip().startswith("{")


def read_pairs(data: bytes, name: str, class_names: Sequence[str], label_column: str = LABEL_COLUMN,
               prediction_column: str = PREDICTION_COLUMN) -> tuple[list[int], list[int]]:
    """(true class ids, predicted class ids) of a CSV or JSON-lines dataset; ``name`` (a path or
    URL) picks the format by its suffix, else the first character does (``{``: JSON lines)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LabelledDataError(f"{name} is not UTF-8 text") from None
    if not text.strip():
        raise LabelledDataError(f"{name} is empty")
    classes = _Classes(class_names)
    if _is_json_lines(text, name):
        rows = _json_rows(text, name, label_column, prediction_column)
    else:
        rows = _csv_rows(text, name, label_column, prediction_column)
    y_true, y_pred = [], []
    for where, label, prediction in rows:
        y_true.append(classes.resolve(label, label_column, where))
        y_pred.append(classes.resolve(prediction, prediction_column, where))
    if not y_true:
        raise LabelledDataError(f"{name} has no rows")
    return y_true, y_pred


def _csv_rows(text: str, name: str, label_column: str, prediction_column: str):
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
        missing = [c for c in (label_column, prediction_column) if c not in header]
        if missing:
            raise LabelledDataError(f"{name} has no column {missing[0]!r} in its header row (columns: "
                                    f"{', '.join(header)[:200]})")
        i, j = header.index(label_column), header.index(prediction_column)
        for row in reader:
            where = f"{name} line {reader.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) <= max(i, j):
                raise LabelledDataError(f"{where}: {len(row)} fields, the header has {len(header)}")
            yield where, row[i], row[j]
    except csv.Error as exc:
        raise LabelledDataError(f"{name} line {reader.line_num}: not CSV: {exc}") from None


def _json_rows(text: str, name: str, label_column: str, prediction_column: str):
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{name} line {n}"
        try:
            record = json.loads(line)
        except ValueError:
            raise LabelledDataError(f"{where}: not JSON") from None
        if not isinstance(record, dict):
            raise LabelledDataError(f"{where}: not a JSON object")
        for key in (label_column, prediction_column):
            if key not in record:
                raise LabelledDataError(f"{where}: no key {key!r}")
        yield where, record[label_column], record[prediction_column]

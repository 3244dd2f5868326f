"""JSON Schemas of SageMaker Model Monitor's files, written from its docs."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

HERE = Path(__file__).resolve().parent


def validate(document: dict, name: str) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``document`` fits ``{name}.schema.json``."""
    schema = json.loads((HERE / f"{name}.schema.json").read_text())
    jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)

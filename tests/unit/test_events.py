"""The serving path's event encoder writes exactly the InferenceEvent the model would."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from signwatch.events import (
    INFERENCE_SCHEMA, InferenceEvent, InferenceOutput, Prediction, ResponsePayload, encode_inference_event,
)
from signwatch.publishing import make_input_payload

OUTPUT = InferenceOutput(predictions=[Prediction(class_id=14, label="Stop", probability=0.875),
                                      Prediction(class_id=1, label='Speed limit "30" \u2192', probability=0.125)],
                         model_version="resnet18-64px-seed0")


@pytest.mark.parametrize("inference_id, attributes, ref", [
    (None, None, None),
    ("req-1", 'trace="a\\b"; \u00e9', None),
    ("req-2", None, "inputs/signwatch/2026/12/02/03/e.png"),
])
def test_the_encoded_event_parses_to_the_model_built_field_by_field(inference_id, attributes, ref):
    when = datetime(2026, 12, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    payload = make_input_payload(b"\x89PNG fake", "image/png", observed_content_type="application/octet-stream",
                                 ref=ref)
    text = OUTPUT.model_dump_json()
    fields = dict(event_id="e-1", inference_id=inference_id, custom_attributes=attributes, time=when,
                  endpoint="signwatch", variant="AllTraffic", model_version=OUTPUT.model_version, latency_ms=12.345)
    expected = InferenceEvent(**fields, input=payload, output=OUTPUT,
                              response=ResponsePayload(content_type="application/json", data=text))
    encoded = encode_inference_event(**fields, input=payload, output_json=text, response_type="application/json")
    assert InferenceEvent.model_validate_json(encoded) == expected
    assert json.loads(encoded) == json.loads(expected.to_bytes())  # the same JSON, key for key
    assert json.loads(encoded)["schema"] == INFERENCE_SCHEMA and json.loads(encoded)["time"].endswith("Z")


def test_the_cores_limits_are_the_models_so_no_encoded_event_is_refused_downstream():
    # The encoder skips the model's validation; the core checks these fields on the way in.
    from signwatch.serving.core import MAX_CUSTOM_ATTRIBUTES, MAX_INFERENCE_ID

    def max_length(name: str) -> int:
        return next(m.max_length for m in InferenceEvent.model_fields[name].metadata if hasattr(m, "max_length"))

    assert max_length("inference_id") == MAX_INFERENCE_ID
    assert max_length("custom_attributes") == MAX_CUSTOM_ATTRIBUTES

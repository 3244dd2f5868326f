"""The generated documents are current, and what they promise holds for real events."""

from __future__ import annotations

import json

import jsonschema
import yaml

from signwatch import contracts, events
from signwatch.config import Settings

HOW = "stale: regenerate with `python -m signwatch.contracts` and commit docs/"


def test_committed_asyncapi_and_configuration_reference_are_current():
    for name, make in contracts.GENERATED.items():
        assert (contracts.DOCS / name).read_text() == make(), f"docs/{name} {HOW}"


def test_configuration_reference_lists_every_setting():
    text = (contracts.DOCS / "configuration.md").read_text()
    for name in Settings.model_fields:
        assert f"`SIGNWATCH_{name.upper()}`" in text


def _event_samples():
    payload = events.InputPayload(content_type="image/png", data="aGk=", sha256="0" * 64, size=2)
    output = events.InferenceOutput(predictions=[events.Prediction(class_id=14, label="Stop", probability=0.9)],
                                    model_version="m")
    inference = events.InferenceEvent(endpoint="e", variant="v", model_version="m", input=payload,
                                      output=output, latency_ms=1.0)
    check = events.ViolationCheck(feature_name="PredictedClass", constraint_check_type="baseline_drift_check",
                                  description="d")
    violation = events.ViolationEvent.model_validate({"endpoint": "e", "variant": "v", "check": check.model_dump(),
                                                      "count": 1, "total": 2, "window_seconds": 60})
    explanation = events.ExplanationEvent(violation_id=violation.violation_id, method="fullgrad",
                                          objects=["k"], report="k")
    baseline = events.BaselineEvent(endpoint="e", variant="v", num_classes=7, baseline_id="0123456789abcdef",
                                    item_count=1000, learned_from=events.utc_now(), learned_to=events.utc_now(),
                                    statistics="baselines/e/statistics.json",
                                    constraints="baselines/e/constraints.json",
                                    previous="shipped")
    return {"inference": inference, "violations": violation, "explanations": explanation, "baselines": baseline}


def test_real_events_validate_against_the_documented_schemas_and_broken_ones_do_not():
    doc = yaml.safe_load((contracts.DOCS / "asyncapi.yaml").read_text())
    for channel, event in _event_samples().items():
        [ref] = [m["$ref"] for m in doc["channels"][channel]["messages"].values()]
        message = doc["components"]["messages"][ref.rsplit("/", 1)[1]]
        schema = {"$ref": message["payload"]["$ref"], "components": doc["components"]}
        body = json.loads(event.to_bytes())
        jsonschema.validate(body, schema)
        assert body["schema"] in message["x-schema-versions"]
        broken = dict(body, schema="signwatch.unknown/v9")
        try:
            jsonschema.validate(broken, schema)
        except jsonschema.ValidationError:
            pass
        else:
            raise AssertionError(f"{channel}: an unknown schema version validated")


def test_older_versions_a_consumer_may_meet_still_parse():
    """The evolution rule in practice: every version named in a model's Literal is accepted."""
    sample = json.loads(_event_samples()["inference"].to_bytes())
    for version in contracts.schema_versions(events.InferenceEvent):
        minimal = {k: v for k, v in sample.items() if k in events.InferenceEvent.model_json_schema(
            by_alias=True).get("required", [])} | {"schema": version}
        assert events.parse_event(json.dumps(minimal).encode(), events.InferenceEvent)

"""Small builders shared by the unit tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from signwatch.events import InferenceEvent, InferenceOutput, Prediction
from signwatch.publishing import make_input_payload


def png_bytes(seed: int = 0, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def inference_event(class_id: int = 3, probability: float = 0.9, endpoint: str = "ep", **kw) -> InferenceEvent:
    return InferenceEvent(
        endpoint=endpoint, variant="AllTraffic", model_version="test",
        input=make_input_payload(png_bytes(), "image/png"),
        output=InferenceOutput(
            predictions=[Prediction(class_id=class_id, label=f"class {class_id}", probability=probability)],
            model_version="test",
        ),
        latency_ms=1.0, **kw,
    )


def published_events(core, ports, topic: str = "signwatch.inference") -> list[InferenceEvent]:
    """Every event an in-process inference core has published so far (on the memory bus)."""
    import uuid

    core.publisher.drain()
    consumer = ports.bus.consumer([topic], f"g-{uuid.uuid4().hex}")
    events, batch = [], consumer.poll(timeout_ms=100, max_records=10_000)
    while batch:
        events += [InferenceEvent.model_validate_json(m.value) for m in batch]
        batch = consumer.poll(timeout_ms=50, max_records=10_000)
    return events


MONITOR_ONLY = ("more_predictions_than_classes", "time_next_year", "class_out_of_range")


def bad_inference_events(endpoint: str, num_classes: int = 43) -> dict[str, bytes]:
    """Every kind of bad inference event found by issue 16's fault injection, and more, by name.
    Each fails the schema every consumer checks, except ``more_predictions_than_classes`` and
    ``time_next_year`` (only the monitor, which knows the model and keeps windows in event time,
    refuses them: ``MONITOR_ONLY``) and ``class_out_of_range`` (the monitor counts it as
    unreadable, for completeness, and dead-letters nothing)."""
    import json

    base = inference_event(endpoint=endpoint).model_dump(by_alias=True, mode="json")

    def event(**changes) -> bytes:
        e = json.loads(json.dumps(base))
        e["event_id"] = new_event_id()
        for path, value in changes.items():
            *parents, leaf = path.split("__")
            node = e
            for p in parents:
                node = node[int(p)] if p.isdigit() else node[p]
            node[int(leaf) if leaf.isdigit() else leaf] = value
        return json.dumps(e).encode()  # allow_nan: NaN and Infinity go out as JSON extensions

    from datetime import datetime, timedelta, timezone

    next_year = (datetime.now(timezone.utc) + timedelta(days=365)).isoformat()
    many = [{"class_id": i, "label": str(i), "probability": 1e-4} for i in range(10_000)]
    over = [{"class_id": i, "label": str(i), "probability": 0.01} for i in range(num_classes + 1)]
    return {
        "top1_1e308": event(output__predictions__0__probability=1e308),
        "nan": event(output__predictions__0__probability=float("nan")),
        "infinity": event(output__predictions__0__probability=float("inf")),
        "negative": event(output__predictions__0__probability=-0.25),
        "above_one": event(output__predictions__0__probability=1.5),
        "string_probability": event(output__predictions__0__probability="0.9"),
        "string_class_id": event(output__predictions__0__class_id="3"),
        "bool_probability": event(output__predictions__0__probability=True),
        "negative_class_id": event(output__predictions__0__class_id=-1),
        "empty_predictions": event(output__predictions=[]),
        "10000_predictions": event(output__predictions=many),
        "more_predictions_than_classes": event(output__predictions=over),
        "same_class_twice": event(output__predictions=[base["output"]["predictions"][0]] * 2),
        "predictions_not_a_list": event(output__predictions={"class_id": 3}),
        "output_null": event(output=None),
        "latency_a_string": event(latency_ms="fast"),
        "latency_nan": event(latency_ms=float("nan")),
        "time_not_a_time": event(time="yesterday"),
        "time_next_year": event(time=next_year),  # would move the monitor's windows a year ahead
        "huge_label": event(output__predictions__0__label="x" * 500_000),
        "huge_model_version": event(model_version="v" * 200_000),
        "endpoint_a_path": event(endpoint="../" + endpoint),
        "ref_outside_the_store": event(input__data=None, input__ref="../../secrets/key"),
        "no_data_no_ref": event(input__data=None),
        "sha256_not_hex": event(input__sha256="../" * 20 + "abcd"),
        "unknown_schema": event(schema="signwatch.inference/v9"),
        "not_json": b"\x00\xffnot json at all{",
        "json_not_an_object": b"[1, 2, 3]",
        "class_out_of_range": event(output__predictions__0__class_id=num_classes + 7),
    }


def new_event_id() -> str:
    import uuid

    return str(uuid.uuid4())


T0 = 1_800_000_000.0  # a fixed "now" (2027-01-15): simulated time starts here


class Clock:
    """Simulated time, moved by hand (``clock.t += 1``): the monitor's clocks in unit tests."""

    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


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

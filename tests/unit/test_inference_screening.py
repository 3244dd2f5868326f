"""Screening inside the inference batch (SIGNWATCH_SCREENING_IN_INFERENCE): each answer, its event
and its capture record carry the score ``Screener.screen`` gives the same image; off (the default)
nothing changes; no calibration for the served model: the service refuses to start."""

from __future__ import annotations

import base64
import io
import json
import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from signwatch.capture import capture_record
from signwatch.config import Settings
from signwatch.events import INFERENCE_SCHEMA, INFERENCE_SCHEMA_SCREENED, InferenceEvent
from signwatch.imaging import encode_npy
from signwatch.runtime import open_ports
from signwatch.screening import Screener
from signwatch.screening.stored import SHIPPED, write_store
from signwatch.serving import v2
from signwatch.serving.screening import ScreeningUnavailable
from signwatch_services.inference.server import build_core, create_app
from tests.unit.helpers import png_bytes, published_events

TOLERANCE = 1e-3  # the same image scored in another batch: the frozen graph's sums in another order


def _settings(tmp_path, **kw) -> Settings:
    return Settings(bus_url=f"memory://screen-{uuid.uuid4().hex[:8]}", store_url=tmp_path.as_uri(),
                    state_url="memory://", **kw)


@pytest.fixture(scope="module")
def screened(tmp_path_factory):
    settings = _settings(tmp_path_factory.mktemp("screened"), screening_in_inference=True)
    ports = open_ports(settings)
    core = build_core(settings, ports)
    with TestClient(create_app(core)) as client:
        yield client, core, ports
    core.close()


def _pixels(png: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(png)).convert("RGB"))


def _expected(core, images: list[np.ndarray]):
    """What the explainer's screener says of these images, one at a time (batch of one)."""
    cal = core.service.screening.calibration
    screener = Screener(core.classifier.model, core.spec, signal=cal.signal, squeezers=tuple(cal.squeezers),
                        forward=core.classifier.forward)
    return [screener.screen([image], cal) for image in images]


def test_the_answer_event_and_capture_record_carry_the_screeners_score(screened):
    client, core, ports = screened
    body = png_bytes(seed=3, size=40)
    r = client.post("/invocations", content=body, headers={"content-type": "image/png"})
    assert r.status_code == 200
    answer = r.json()
    [expected] = _expected(core, [_pixels(body)])
    assert answer["adversarial_score"] == pytest.approx(float(expected.scores[0]), abs=TOLERANCE)
    assert answer["flagged"] == bool(expected.flagged[0])
    # the prediction is the unsqueezed copy's: the same top class and probability as screen's
    assert answer["predictions"][0]["class_id"] == int(expected.probabilities[0].argmax())
    assert answer["predictions"][0]["probability"] == pytest.approx(float(expected.probabilities[0].max()), abs=1e-4)

    [event] = [e for e in published_events(core, ports) if e.event_id == r.headers["x-signwatch-event-id"]]
    assert event.schema_ == INFERENCE_SCHEMA_SCREENED
    assert event.screening.score == answer["adversarial_score"] and event.screening.flagged == answer["flagged"]
    cal = core.service.screening.calibration
    assert (event.screening.threshold, event.screening.fpr, event.screening.signal) == \
        (cal.threshold, cal.fpr, cal.signal)
    assert event.screening.squeezer == expected.squeezer[0]
    assert event.output.adversarial_score == answer["adversarial_score"]

    # SageMaker's record keeps its shape: the score is in endpointOutput, the bytes the client received
    record = capture_record(event, body)
    assert record["captureData"]["endpointOutput"]["data"].encode() == r.content
    captured = json.loads(record["captureData"]["endpointOutput"]["data"])
    assert captured["adversarial_score"] == answer["adversarial_score"] and captured["flagged"] == answer["flagged"]
    assert set(record["eventMetadata"]) <= {"eventId", "inferenceId", "inferenceTime", "customAttributes", "imageHash"}


def test_a_batch_request_carries_one_score_per_image(screened):
    client, core, _ = screened
    rng = np.random.default_rng(7)
    images = rng.integers(0, 255, (3, 48, 48, 3), dtype=np.uint8)
    images[1] = np.clip(images[0].astype(int) + rng.integers(-40, 40, images[0].shape), 0, 255)
    r = client.post("/invocations", content=encode_npy(images), headers={"content-type": "application/x-npy"})
    assert r.status_code == 200
    answer = r.json()
    expected = _expected(core, list(images))
    assert len(answer["adversarial_score"]) == len(answer["flagged"]) == len(answer["predictions"]) == 3
    for got, flag, want in zip(answer["adversarial_score"], answer["flagged"], expected):
        assert got == pytest.approx(float(want.scores[0]), abs=TOLERANCE) and flag == bool(want.flagged[0])


def test_v2_declares_and_answers_the_screening_outputs(screened):
    client, core, _ = screened
    meta = client.get("/v2/models/signwatch").json()
    assert {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}.items() >= {
        "adversarial_score": ("FP32", [-1]), "flagged": ("BOOL", [-1])}.items()
    png = png_bytes(seed=5, size=36)
    request = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                           "data": [base64.b64encode(png).decode()]}]}
    r = client.post("/v2/models/signwatch/infer", json=request)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    [expected] = _expected(core, [_pixels(png)])
    assert outputs["adversarial_score"]["datatype"] == "FP32" and outputs["adversarial_score"]["shape"] == [1]
    assert outputs["adversarial_score"]["data"][0] == pytest.approx(float(expected.scores[0]), abs=TOLERANCE)
    assert outputs["flagged"]["data"] == [bool(expected.flagged[0])]
    # asked for alone, in binary: 4 bytes, then 1 byte
    body, length = v2.binary_request([png])
    doc = json.loads(body[:length])
    doc["outputs"] = [{"name": "adversarial_score", "parameters": {"binary_data": True}},
                      {"name": "flagged", "parameters": {"binary_data": True}}]
    header = json.dumps(doc).encode()
    r = client.post("/v2/models/signwatch/infer", content=header + body[length:],
                    headers={"inference-header-content-length": str(len(header))})
    assert r.status_code == 200, r.text
    split = int(r.headers["inference-header-content-length"])
    assert [o["parameters"]["binary_data_size"] for o in json.loads(r.content[:split])["outputs"]] == [4, 1]
    score = np.frombuffer(r.content[split:split + 4], "<f4")[0]
    assert score == pytest.approx(float(expected.scores[0]), abs=TOLERANCE)
    assert r.content[split + 4:] == bytes([bool(expected.flagged[0])])


def test_off_by_default_nothing_changes(tmp_path):
    settings = _settings(tmp_path)
    assert settings.screening_in_inference is False
    ports = open_ports(settings)
    core = build_core(settings, ports)
    assert core.service.screening is None
    with TestClient(create_app(core)) as client:
        r = client.post("/invocations", content=png_bytes(), headers={"content-type": "image/png"})
        assert set(r.json()) == {"predictions", "model_version"}
        meta = client.get("/v2/models/signwatch").json()
        assert [o["name"] for o in meta["outputs"]] == ["probabilities", "class_ids"]
        png = base64.b64encode(png_bytes()).decode()
        asked = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": [png]}],
                 "outputs": [{"name": "adversarial_score"}]}
        refused = client.post("/v2/models/signwatch/infer", json=asked)
        assert refused.status_code == 400 and "unknown output" in refused.json()["error"]
    [event] = published_events(core, ports)
    core.close()
    assert event.schema_ == INFERENCE_SCHEMA and event.screening is None
    assert b"screening" not in event.to_bytes() and "adversarial_score" not in event.response.data


def test_no_calibration_for_the_served_model_refuses_to_start(tmp_path, monkeypatch):
    """Neither the store's nor the shipped one fits: a clear refusal, naming what is missing."""
    import signwatch.screening.stored as stored

    monkeypatch.setattr(stored, "SHIPPED", tmp_path / "nothing-shipped.json")
    settings = _settings(tmp_path / "store", screening_in_inference=True)
    with pytest.raises(ScreeningUnavailable, match="SIGNWATCH_SCREENING_IN_INFERENCE.*no screening calibration"):
        build_core(settings, open_ports(settings))


def test_the_stored_calibration_wins_over_the_shipped_one(tmp_path):
    from signwatch.screening import ScreeningCalibration

    shipped = ScreeningCalibration.from_json(json.loads(SHIPPED.read_text()))
    mine = ScreeningCalibration(**{**shipped.__dict__, "threshold": -1e9})  # everything reads as an attack
    settings = _settings(tmp_path, screening_in_inference=True)
    ports = open_ports(settings)
    write_store(ports.store, "baselines/signwatch", mine)
    core = build_core(settings, ports)
    assert core.service.screening.stored.source == "store"
    with TestClient(create_app(core)) as client:
        r = client.post("/invocations", content=png_bytes(), headers={"content-type": "image/png"})
        assert r.json()["flagged"] is True
    core.close()


def test_a_screened_event_is_v4_and_the_encoder_writes_the_model_an_old_consumer_keeps_v3():
    from datetime import datetime, timezone

    from signwatch.events import InferenceOutput, InferenceScreening, Prediction, ResponsePayload, encode_inference_event
    from signwatch.publishing import make_input_payload

    screening = InferenceScreening(score=2.5, flagged=True, threshold=1.2, fpr=0.01, squeezer="shift:1",
                                   signal="margin_drop", calibration_id="baselines/signwatch/screening.json")
    output = InferenceOutput(predictions=[Prediction(class_id=14, label="Stop", probability=0.99)], model_version="m",
                             adversarial_score=2.5, flagged=True)
    text = output.model_dump_json()
    fields = dict(event_id="e-1", time=datetime(2026, 12, 2, tzinfo=timezone.utc), endpoint="signwatch",
                  variant="AllTraffic", model_version="m", latency_ms=3.0,
                  input=make_input_payload(b"\x89PNG fake", "image/png"))
    encoded = encode_inference_event(**fields, output_json=text, response_type="application/json", screening=screening)
    expected = InferenceEvent(**fields, output=output, response=ResponsePayload(data=text), screening=screening)
    assert InferenceEvent.model_validate_json(encoded) == expected and expected.schema_ == INFERENCE_SCHEMA_SCREENED
    assert json.loads(encoded) == json.loads(expected.to_bytes())
    # a v3 event cannot claim a screening; one without stays v3 and writes no new key
    with pytest.raises(ValueError, match="v4"):
        InferenceEvent(**fields, output=output, screening=screening, schema=INFERENCE_SCHEMA)
    plain = encode_inference_event(**fields, output_json=output.model_copy(
        update={"adversarial_score": None, "flagged": None}).model_dump_json(), response_type="application/json")
    assert json.loads(plain)["schema"] == INFERENCE_SCHEMA and "screening" not in json.loads(plain)
    assert "adversarial_score" not in json.loads(plain)["output"]

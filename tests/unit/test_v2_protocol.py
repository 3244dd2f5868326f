"""The Open Inference Protocol (V2) on the inference service, through FastAPI's TestClient: metadata
and health, answers that agree with the SageMaker route, binary data both ways, one event per
image, and a JSON 4xx ``{"error": ...}`` (publishing nothing) for every malformed request."""

from __future__ import annotations

import base64
import io
import json
import logging
import struct
import threading
import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from signwatch.config import Settings
from signwatch.events import InferenceEvent
from signwatch.publishing import resolve_input
from signwatch.runtime import open_ports
from signwatch.serving import ServingError, v2
from signwatch_services.inference.server import build_core, create_app, served_top_k
from tests.unit.helpers import png_bytes, published_events

MAX_BODY = 256 * 1024
MAX_IMAGES = 8
INFER = "/v2/models/signwatch/infer"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    settings = Settings(bus_url=f"memory://v2-unit-{uuid.uuid4().hex[:8]}",
                        store_url=tmp_path_factory.mktemp("v2").as_uri(), state_url="memory://",
                        max_body_bytes=MAX_BODY, max_batch_images=MAX_IMAGES, inline_input_limit_bytes=2048)
    ports = open_ports(settings)
    core = build_core(settings, ports)
    with TestClient(create_app(core)) as client:
        yield client, core, ports
    core.close()


def _events(core, ports, response) -> list[InferenceEvent]:
    """The events of one answer, in the order of its images."""
    ids = response.headers["x-signwatch-event-id"].split(",")
    by_id = {e.event_id: e for e in published_events(core, ports)}
    return [by_id[i] for i in ids]


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _json_request(name: str, datatype: str, shape: list, data, **extra) -> dict:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}], **extra}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _outputs(response) -> dict[str, np.ndarray]:
    """Each output as an array of its shape, read from JSON or from the binary part."""
    length = response.headers.get("inference-header-content-length")
    raw = response.content
    header = json.loads(raw[:int(length)] if length else raw)
    at, out = int(length or len(raw)), {}
    for o in header["outputs"]:
        dtype = {"FP32": "<f4", "INT64": "<i8"}[o["datatype"]]
        if "data" in o:
            out[o["name"]] = np.array(o["data"], dtype=dtype).reshape(o["shape"])
        else:
            size = o["parameters"]["binary_data_size"]
            out[o["name"]] = np.frombuffer(raw[at:at + size], dtype=dtype).reshape(o["shape"])
            at += size
    assert at == len(raw)
    return out


def test_server_and_model_metadata_and_health(served):
    client, core, _ = served
    meta = client.get("/v2").json()
    assert meta["name"] == "signwatch" and meta["version"] and "binary_tensor_data" in meta["extensions"]
    model = client.get("/v2/models/signwatch").json()
    assert model["name"] == "signwatch" and model["versions"] == [core.spec.version]
    assert {i["name"]: (i["datatype"], i["shape"]) for i in model["inputs"]} == {
        "images": ("UINT8", [-1, -1, -1, 3]), "image_bytes": ("BYTES", [-1])}
    assert {o["name"]: (o["datatype"], o["shape"]) for o in model["outputs"]} == {
        "probabilities": ("FP32", [-1, 43]), "class_ids": ("INT64", [-1, 5])}
    assert client.get(f"/v2/models/signwatch/versions/{core.spec.version}").json() == model
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/signwatch/ready").status_code == 200
    assert client.get(f"/v2/models/signwatch/versions/{core.spec.version}/ready").status_code == 200
    for path in ("/v2/models/other", "/v2/models/other/ready", "/v2/models/signwatch/versions/9",
                 "/v2/models/signwatch/versions/9/ready"):
        r = client.get(path)
        assert r.status_code == 404 and isinstance(r.json()["error"], str), path


def test_probabilities_match_the_sagemaker_route_and_class_ids_are_best_first(served):
    client, core, _ = served
    png = png_bytes(seed=5, size=40)
    sagemaker = client.post("/invocations", content=png, headers={"content-type": "image/png"}).json()
    r = client.post(INFER, json=_json_request("image_bytes", "BYTES", [1], [_b64(png)], id="same-image"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "signwatch" and body["model_version"] == core.spec.version
    assert body["id"] == "same-image"
    out = _outputs(r)
    probs, ids = out["probabilities"], out["class_ids"]
    assert probs.shape == (1, 43) and ids.shape == (1, 5)
    assert abs(float(probs.sum()) - 1) < 1e-5 and (probs >= 0).all()
    assert ids[0, 0] == probs[0].argmax()
    assert list(probs[0, ids[0]]) == sorted(probs[0, ids[0]], reverse=True)
    assert list(ids[0]) == [p["class_id"] for p in sagemaker["predictions"]]
    np.testing.assert_allclose(probs[0, ids[0]], [p["probability"] for p in sagemaker["predictions"]],
                               rtol=1e-4, atol=1e-6)


def test_uint8_and_bytes_in_json_and_binary_give_the_same_answers(served):
    client, _, _ = served
    pngs = [png_bytes(seed=s, size=24) for s in (1, 2, 3)]
    pixels = np.stack([_pixels(p) for p in pngs])
    answers = [
        client.post(INFER, json=_json_request("images", "UINT8", list(pixels.shape), pixels.reshape(-1).tolist())),
        client.post(INFER, json=_json_request("images", "UINT8", list(pixels.shape), pixels.tolist())),  # nested
        client.post(INFER, json=_json_request("image_bytes", "BYTES", [3], [_b64(p) for p in pngs])),
    ]
    for tensor in (pixels, pngs):
        body, length = v2.binary_request(tensor)
        answers.append(client.post(INFER, content=body, headers={v2.HEADER_LENGTH: str(length)}))
    assert [r.status_code for r in answers] == [200] * 5, [r.text for r in answers]
    results = [_outputs(r) for r in answers]
    for result in results[1:]:
        np.testing.assert_allclose(result["probabilities"], results[0]["probabilities"], rtol=1e-4, atol=1e-6)
        assert (result["class_ids"] == results[0]["class_ids"]).all()
    assert results[0]["probabilities"].shape == (3, 43)


def test_outputs_come_in_binary_when_asked_per_output_or_for_all(served):
    client, _, _ = served
    png = png_bytes(seed=9)
    asked = [{"name": "class_ids"}, {"name": "probabilities", "parameters": {"binary_data": True}}]
    request = _json_request("image_bytes", "BYTES", [1], [_b64(png)], outputs=asked)
    r = client.post(INFER, json=request)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    length = int(r.headers["inference-header-content-length"])
    header = json.loads(r.content[:length])
    assert [o["name"] for o in header["outputs"]] == ["class_ids", "probabilities"]  # in the order asked
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 43 * 4} and "data" not in header["outputs"][1]
    assert len(r.content) == length + 43 * 4
    split = _outputs(r)
    only_ids = client.post(INFER, json={**request, "outputs": [{"name": "class_ids"}]})
    assert only_ids.headers["content-type"] == "application/json"
    assert [o["name"] for o in only_ids.json()["outputs"]] == ["class_ids"]
    all_binary = client.post(INFER, json={**request, "outputs": None, "parameters": {"binary_data_output": True}})
    header = json.loads(all_binary.content[:int(all_binary.headers["inference-header-content-length"])])
    assert all("data" not in o for o in header["outputs"])
    assert (_outputs(all_binary)["class_ids"] == split["class_ids"]).all()


def test_each_image_publishes_one_event_with_its_input_and_output(served):
    client, core, ports = served
    pngs = [png_bytes(seed=s, size=20) for s in (11, 12)]
    pixels = np.stack([_pixels(p) for p in pngs])
    body, length = v2.binary_request(pixels, request_id="req-uint8")
    r = client.post(INFER, content=body, headers={v2.HEADER_LENGTH: str(length)})
    assert r.status_code == 200
    events = _events(core, ports, r)
    ids = _outputs(r)["class_ids"]
    assert len(events) == 2 and len({e.event_id for e in events}) == 2
    for i, event in enumerate(events):
        assert event.inference_id == "req-uint8" and event.endpoint == "signwatch"
        assert event.input.content_type == "application/x-npy"
        assert np.array_equal(np.load(io.BytesIO(resolve_input(event.input, ports.store))), pixels[i])
        assert [p.class_id for p in event.output.predictions] == list(ids[i])
        assert event.response.data == event.output.model_dump_json()

    r = client.post(INFER, json=_json_request("image_bytes", "BYTES", [2], [_b64(p) for p in pngs], id="req-bytes"))
    events = _events(core, ports, r)
    assert [e.input.content_type for e in events] == ["image/png"] * 2
    assert [resolve_input(e.input, ports.store) for e in events] == pngs
    assert all(e.inference_id == "req-bytes" for e in events)


def _binary(header: dict, data: bytes, length: int | None = None) -> tuple[bytes, dict]:
    raw = json.dumps(header).encode()
    return raw + data, {v2.HEADER_LENGTH: str(len(raw) if length is None else length)}


PNG = png_bytes(seed=3)
TEXT_B64 = _b64(b"hello, not an image")
BAD_REQUESTS = {
    "malformed JSON": (b'{"inputs": [', {}, 400, "not valid JSON"),
    "not an object": (b"[1, 2]", {}, 400, "JSON object"),
    "no inputs": (json.dumps({"inputs": []}).encode(), {}, 400, "exactly one input"),
    "two inputs": (json.dumps({"inputs": [_json_request("image_bytes", "BYTES", [1], [_b64(PNG)])["inputs"][0]] * 2})
                   .encode(), {}, 400, "exactly one input"),
    "unknown input": (json.dumps(_json_request("pixels", "UINT8", [1, 1, 1, 3], [0, 0, 0])).encode(), {}, 400,
                      "unknown input"),
    "wrong datatype": (json.dumps(_json_request("images", "FP32", [1, 1, 1, 3], [0.1, 0.2, 0.3])).encode(), {},
                       400, "datatype"),
    "shape and data disagree": (json.dumps(_json_request("images", "UINT8", [1, 2, 2, 3], [0] * 11)).encode(), {},
                                400, "12 values"),
    "not [N,H,W,3]": (json.dumps(_json_request("images", "UINT8", [2, 2, 3], [0] * 12)).encode(), {}, 400,
                      "[N, H, W, 3]"),
    "values over 255": (json.dumps(_json_request("images", "UINT8", [1, 1, 1, 3], [0, 256, 0])).encode(), {}, 400,
                        "0 to 255"),
    "floats as UINT8": (json.dumps(_json_request("images", "UINT8", [1, 1, 1, 3], [0, 1.5, 0])).encode(), {}, 400,
                        "0 to 255"),
    "ragged data": (json.dumps(_json_request("images", "UINT8", [1, 1, 2, 3], [[0, 0, 0], [0, 0]])).encode(), {},
                    400, "list of integers"),
    "unknown output": (json.dumps(_json_request("image_bytes", "BYTES", [1], [_b64(PNG)],
                                                outputs=[{"name": "logits"}])).encode(), {}, 400, "unknown output"),
    "bad base64": (json.dumps(_json_request("image_bytes", "BYTES", [1], ["%%% not base64 %%%"])).encode(), {}, 400,
                   "base64"),
    "not an image": (json.dumps(_json_request("image_bytes", "BYTES", [1], [TEXT_B64])).encode(), {}, 400,
                     "not a PNG or JPEG"),
    "corrupt PNG": (json.dumps(_json_request("image_bytes", "BYTES", [1], [_b64(PNG[:90])])).encode(), {}, 400,
                    "corrupt or truncated"),
    "BYTES count differs from shape": (json.dumps(_json_request("image_bytes", "BYTES", [2], [_b64(PNG)])).encode(),
                                       {}, 400, "2"),
    "id over 64 characters": (json.dumps(_json_request("image_bytes", "BYTES", [1], [_b64(PNG)], id="x" * 65))
                              .encode(), {}, 400, "'id'"),
    "truncated binary": (*_binary({"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 4, 4, 3],
                                               "parameters": {"binary_data_size": 48}}]}, bytes(30)), 400,
                         "binary_data_size"),
    "binary size disagrees with shape": (*_binary({"inputs": [{"name": "images", "datatype": "UINT8",
                                                               "shape": [1, 4, 4, 3],
                                                               "parameters": {"binary_data_size": 30}}]}, bytes(30)),
                                         400, "48 UINT8 values"),
    "truncated BYTES element": (*_binary({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                                                      "parameters": {"binary_data_size": 4 + 50}}]},
                                         struct.pack("<I", len(PNG)) + PNG[:50]), 400, "claims"),
    "binary data nobody claims": (*_binary({"inputs": [_json_request("image_bytes", "BYTES", [1], [_b64(PNG)])
                                                       ["inputs"][0]]}, b"extra"), 400, "binary_data_size"),
    "header length not a number": (b"{}", {v2.HEADER_LENGTH: b"\xb2"}, 400, "Inference-Header-Content-Length"),
    "header length past the body": (*_binary({"inputs": []}, b"", length=10_000), 400,
                                     "Inference-Header-Content-Length"),
    "too many images": (json.dumps(_json_request("images", "UINT8", [MAX_IMAGES + 1, 1, 1, 3],
                                                 [0] * 3 * (MAX_IMAGES + 1))).encode(), {}, 413, "images"),
    "image over the side limit": (json.dumps(_json_request("images", "UINT8", [1, 5000, 10, 3], [0])).encode(), {},
                                  413, "px a side"),
    "body over the limit": (b'{"inputs": [], "pad": "' + b"x" * MAX_BODY + b'"}', {}, 413, "limit"),
    "compressed body": (b"{}", {"content-encoding": "gzip"}, 400, "Content-Encoding"),
}


@pytest.mark.parametrize("body, headers, status, words", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_a_bad_request_gets_its_status_and_a_v2_error_and_publishes_nothing(served, body, headers, status, words):
    client, core, ports = served
    before = len(published_events(core, ports))
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert isinstance(error, str) and words in error, error
    assert len(published_events(core, ports)) == before


def test_unknown_model_or_version_is_404_and_other_methods_405(served):
    client, core, _ = served
    request = _json_request("image_bytes", "BYTES", [1], [_b64(PNG)])
    assert client.post(f"/v2/models/signwatch/versions/{core.spec.version}/infer", json=request).status_code == 200
    for path in ("/v2/models/other/infer", "/v2/models/signwatch/versions/0/infer"):
        r = client.post(path, json=request)
        assert r.status_code == 404 and "unknown" in r.json()["error"]
    r = client.get(INFER)
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json() == {"error": "use POST"}


def test_a_full_model_queue_is_429(served):
    client, core, _ = served
    room = core.batcher.room
    core.batcher.room = lambda: 0
    try:
        r = client.post(INFER, json=_json_request("image_bytes", "BYTES", [1], [_b64(PNG)]))
    finally:
        core.batcher.room = room
    assert r.status_code == 429 and "retry" in r.json()["error"]


def test_a_tensor_in_json_is_parsed_off_the_event_loop_a_small_binary_request_on_it(served, monkeypatch):
    client, _, _ = served
    threads = []
    parse = v2.parse_infer_body

    def recorded(*args):
        threads.append(threading.current_thread().name)
        return parse(*args)

    monkeypatch.setattr(v2, "parse_infer_body", recorded)
    pixels = np.zeros((1, 64, 64, 3), np.uint8)  # 12,288 numbers in JSON
    r = client.post(INFER, json=_json_request("images", "UINT8", [1, 64, 64, 3], pixels.reshape(-1).tolist()))
    body, length = v2.binary_request([PNG])
    small = client.post(INFER, content=body, headers={v2.HEADER_LENGTH: str(length)})
    assert r.status_code == small.status_code == 200
    assert threads[0].startswith("decode") and not threads[1].startswith("decode"), threads


def test_top_k_is_bounded_by_the_models_classes(tmp_path, caplog):
    assert served_top_k(5, 43) == 5
    with caplog.at_level(logging.WARNING, logger="signwatch_services.inference.server"):
        assert served_top_k(50, 43) == 43
    assert any("50" in r.getMessage() and "43 classes" in r.getMessage() for r in caplog.records)
    core = build_core(Settings(bus_url=f"memory://topk-{uuid.uuid4().hex[:8]}", store_url=tmp_path.as_uri(),
                               state_url="memory://", top_k=100, forward_graph="eager"))
    try:
        with TestClient(create_app(core)) as client:
            meta = client.get("/v2/models/signwatch").json()
            assert {o["name"]: o["shape"] for o in meta["outputs"]}["class_ids"] == [-1, 43]
            r = client.post(INFER, json=_json_request("image_bytes", "BYTES", [1], [_b64(PNG)]))
            ids = _outputs(r)["class_ids"]
            assert ids.shape == (1, 43) and sorted(ids[0]) == list(range(43))
            assert len(client.post("/invocations", content=PNG, headers={"content-type": "image/png"})
                       .json()["predictions"]) == 43
    finally:
        core.close()


_scalars = st.none() | st.booleans() | st.integers(-2, 300) | st.floats(allow_nan=False) | st.text(max_size=8)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=3), max_leaves=12)
_tensor = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["images", "image_bytes", "other"]) | _json,
    "datatype": st.sampled_from(["UINT8", "BYTES", "FP32"]) | _json,
    "shape": st.lists(st.integers(-1, 5), max_size=5) | _json,
    "data": st.lists(st.integers(0, 255) | st.text(max_size=12), max_size=40) | _json,
    "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-1, 64) | _json}) | _json,
})
_request = st.fixed_dictionaries({}, optional={
    "id": st.text(max_size=70) | _json, "inputs": st.lists(_tensor, max_size=2) | _json,
    "outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(v2.OUTPUTS) | _json},
                                              optional={"parameters": _json}), max_size=3) | _json,
    "parameters": st.fixed_dictionaries({}, optional={"binary_data_output": st.booleans() | _json}) | _json,
})


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=_request | _json, binary=st.binary(max_size=64), cut=st.integers(0, 8))
def test_any_request_is_parsed_or_refused_with_a_serving_error(doc, binary, cut):
    """Whatever the JSON and the bytes after it, the parser returns images or raises ServingError
    (a 4xx), never anything else (a 500)."""
    header = json.dumps(doc).encode()
    limits = Settings(max_batch_images=4, max_image_side=64, max_image_pixels=4096)
    for body, length in ((header, len(header)), (header + binary, len(header)), (header + binary, len(header) - cut)):
        try:
            request = v2.parse_infer_body(body, max(length, 0), limits)
        except ServingError:
            continue
        assert 1 <= len(request.inference.images) <= 4

"""The Open Inference Protocol (V2) with the real, unmodified clients against a running server
(uvicorn on loopback): NVIDIA's ``tritonclient.http`` and KServe's ``InferenceRESTClient``, JSON
and binary tensors both ways, UINT8 pixels and BYTES files, and one event per image."""

from __future__ import annotations

import asyncio
import base64
import io
import uuid

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput
from PIL import Image
from tritonclient.utils import InferenceServerException

from signwatch.config import Settings
from signwatch.events import InferenceEvent
from signwatch.publishing import resolve_input
from signwatch.runtime import open_ports
from tests.integration.serving import live_server
from tests.unit.helpers import png_bytes, published_events

MODEL = "signs"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    settings = Settings(bus_url=f"memory://v2-clients-{uuid.uuid4().hex[:8]}",
                        store_url=tmp_path_factory.mktemp("v2").as_uri(), state_url="memory://",
                        endpoint=MODEL, inline_input_limit_bytes=1024)
    ports = open_ports(settings)
    with live_server(settings, ports) as (url, core):
        yield url, core, ports


@pytest.fixture(scope="module")
def images():
    """Two PNG files, their pixels, and what the SageMaker route answers for each."""
    pngs = [png_bytes(seed=21, size=36), png_bytes(seed=22, size=36)]
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(p)).convert("RGB")) for p in pngs])
    return pngs, pixels


def _sagemaker_answers(url: str, pngs: list[bytes]) -> list[list[dict]]:
    return [httpx.post(f"{url}/invocations", content=p, headers={"content-type": "image/png"}).json()["predictions"]
            for p in pngs]


def _events(core, ports, ids: list[str]) -> list[InferenceEvent]:
    """The events of these ids, in this order."""
    found = {e.event_id: e for e in published_events(core, ports)}
    return [found[i] for i in ids]


def _check_answers(probabilities: np.ndarray, class_ids: np.ndarray, expected: list[list[dict]]) -> None:
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(expected), 43)
    assert class_ids.dtype == np.int64 and class_ids.shape == (len(expected), 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    for probs, ids, answer in zip(probabilities, class_ids, expected):
        assert list(ids) == [p["class_id"] for p in answer]  # best first, as the SageMaker route says
        np.testing.assert_allclose(probs[ids], [p["probability"] for p in answer], rtol=1e-4, atol=1e-6)


def test_tritonclient_reads_health_and_metadata(endpoint):
    url, core, _ = endpoint
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, core.spec.version)
        assert not client.is_model_ready("other")
        server = client.get_server_metadata()
        assert server["name"] == "signwatch" and "binary_tensor_data" in server["extensions"]
        model = client.get_model_metadata(MODEL)
        assert model["versions"] == [core.spec.version]
        assert {o["name"] for o in model["outputs"]} == {"probabilities", "class_ids"}
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata(MODEL, "no-such-version")
        assert info.value.status() == "404" and "no-such-version" in info.value.message()
    finally:
        client.close()


@pytest.mark.parametrize("datatype", ["UINT8", "BYTES"])
@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_tritonclient_infers_and_each_image_publishes_one_event(endpoint, images, datatype, binary_in, binary_out):
    url, core, ports = endpoint
    pngs, pixels = images
    if datatype == "UINT8":
        tensor = triton.InferInput("images", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels, binary_data=binary_in)
    else:  # JSON carries BYTES as UTF-8 strings: the files go base64-encoded
        files = pngs if binary_in else [base64.b64encode(p) for p in pngs]
        tensor = triton.InferInput("image_bytes", [2], "BYTES")
        tensor.set_data_from_numpy(np.array(files, dtype=np.object_), binary_data=binary_in)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary_out) for name in ("probabilities", "class_ids")]
    request_id = f"triton-{uuid.uuid4().hex[:8]}"
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    try:
        result = client.infer(MODEL, [tensor], outputs=outputs, request_id=request_id)
    finally:
        client.close()
    response = result.get_response()
    assert response["id"] == request_id and response["model_version"] == core.spec.version
    assert all(("parameters" in o) == binary_out for o in response["outputs"])
    _check_answers(result.as_numpy("probabilities"), result.as_numpy("class_ids"), _sagemaker_answers(url, pngs))

    # tritonclient hands back no response headers: the events are found by their inference id
    events = [e for e in published_events(core, ports) if e.inference_id == request_id]
    assert len(events) == 2
    seen = set()
    for event in events:
        raw = resolve_input(event.input, ports.store)
        if datatype == "UINT8":
            assert event.input.content_type == "application/x-npy"
            [i] = [i for i in range(2) if np.array_equal(np.load(io.BytesIO(raw)), pixels[i])]
        else:
            assert event.input.content_type == "image/png"
            i = pngs.index(raw)
        seen.add(i)
        assert [p.class_id for p in event.output.predictions] == list(result.as_numpy("class_ids")[i])
    assert seen == {0, 1}


def test_tritonclient_without_outputs_gets_every_output_in_binary(endpoint, images):
    url, _, _ = endpoint
    pngs, pixels = images
    tensor = triton.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    try:
        result = client.infer(MODEL, [tensor])  # binary_data_output: true
        versioned = client.infer(MODEL, [tensor], model_version=_version(url))
    finally:
        client.close()
    assert all(o["parameters"]["binary_data_size"] > 0 for o in result.get_response()["outputs"])
    _check_answers(result.as_numpy("probabilities"), result.as_numpy("class_ids"), _sagemaker_answers(url, pngs))
    assert (versioned.as_numpy("class_ids") == result.as_numpy("class_ids")).all()


def _version(url: str) -> str:
    return httpx.get(f"{url}/v2/models/{MODEL}").json()["versions"][0]


def test_tritonclient_gets_the_servers_errors(endpoint, images):
    url, _, _ = endpoint
    pngs, pixels = images
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    good = triton.InferInput("images", list(pixels.shape), "UINT8")
    good.set_data_from_numpy(pixels)
    not_an_image = triton.InferInput("image_bytes", [1], "BYTES")
    not_an_image.set_data_from_numpy(np.array([b"GIF89a not a PNG"], dtype=np.object_))
    try:
        cases = [
            (lambda: client.infer("other", [good]), "404", "unknown model"),
            (lambda: client.infer(MODEL, [good], model_version="0"), "404", "unknown version"),
            (lambda: client.infer(MODEL, [not_an_image]), "400", "not a PNG or JPEG"),
            (lambda: client.infer(MODEL, [good], outputs=[triton.InferRequestedOutput("logits")]), "400",
             "unknown output"),
            (lambda: client.infer(MODEL, [good, good]), "400", "exactly one input"),
            (lambda: client.infer(MODEL, [good], request_id="x" * 65), "400", "'id'"),
        ]
        for call, status, words in cases:
            with pytest.raises(InferenceServerException) as info:
                call()
            assert info.value.status() == status and words in info.value.message(), info.value
    finally:
        client.close()


def test_kserve_rest_client_infers_in_json_and_binary(endpoint, images):
    url, core, ports = endpoint
    pngs, pixels = images
    expected = _sagemaker_answers(url, pngs)

    async def scenario():
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=1, timeout=30))
        try:
            assert await client.is_server_live(url) and await client.is_server_ready(url)
            assert await client.is_model_ready(url, MODEL) and not await client.is_model_ready(url, "other")
            files = InferInput(name="image_bytes", shape=[2], datatype="BYTES")
            files.set_data_from_numpy(np.array(pngs, dtype=np.object_), binary_data=True)
            headers: dict = {}
            binary = await client.infer(url, InferRequest(
                model_name=MODEL, infer_inputs=[files], request_id="kserve-binary",
                parameters={"binary_data_output": True}), model_name=MODEL, response_headers=headers)
            in_json = InferInput(name="images", shape=list(pixels.shape), datatype="UINT8")
            in_json.set_data_from_numpy(pixels, binary_data=False)
            json_answer = await client.infer(url, InferRequest(
                model_name=MODEL, infer_inputs=[in_json], request_id="kserve-json",
                request_outputs=[RequestedOutput("class_ids"), RequestedOutput("probabilities")]), model_name=MODEL)
            return binary, headers, json_answer
        finally:
            await client.close()

    binary, headers, json_answer = asyncio.run(scenario())
    for answer in (binary, json_answer):
        outputs = {o.name: o.as_numpy() for o in answer.outputs}
        _check_answers(outputs["probabilities"].astype(np.float32), outputs["class_ids"].astype(np.int64), expected)
    assert binary.id == "kserve-binary" and json_answer.id == "kserve-json"
    assert [o.name for o in json_answer.outputs] == ["class_ids", "probabilities"]
    events = _events(core, ports, headers["x-signwatch-event-id"].split(","))
    assert [resolve_input(e.input, ports.store) for e in events] == pngs
    assert all(e.inference_id == "kserve-binary" for e in events)

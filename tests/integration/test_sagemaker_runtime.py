"""The unmodified boto3 ``sagemaker-runtime`` client against a running server (uvicorn on loopback)."""

from __future__ import annotations

import io
import json

import boto3
import numpy as np
import pytest
from botocore.config import Config

from signwatch.config import Settings
from signwatch.events import InferenceEvent
from signwatch.runtime import open_ports
from tests.integration.serving import live_server
from tests.unit.helpers import png_bytes


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("sm")
    settings = Settings(bus_url="memory://sagemaker-runtime", store_url=root.as_uri(), state_url="memory://",
                        endpoint="signs", variant="AllTraffic", inline_input_limit_bytes=1024)
    ports = open_ports(settings)
    with live_server(settings, ports) as (url, core):
        client = boto3.client(
            "sagemaker-runtime", endpoint_url=url, region_name="us-east-1",
            aws_access_key_id="test", aws_secret_access_key="test",
            config=Config(retries={"max_attempts": 1}))
        yield client, core, ports


def _events(ports, group):
    return [InferenceEvent.model_validate_json(m.value)
            for m in ports.bus.consumer(["signwatch.inference"], group).poll(timeout_ms=200)]


def test_invoke_endpoint_answers_as_sagemaker_does(endpoint, unique):
    client, core, ports = endpoint
    body = png_bytes(size=48)
    r = client.invoke_endpoint(EndpointName="signs", Body=body, ContentType="application/octet-stream",
                               Accept="application/json", CustomAttributes="trace=7", InferenceId="req-42")
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert r["ContentType"] == "application/json"
    assert r["InvokedProductionVariant"] == "AllTraffic"
    assert r["CustomAttributes"] == "trace=7"
    raw = r["Body"].read()
    answer = json.loads(raw)
    assert len(answer["predictions"]) == 5 and answer["model_version"] == core.spec.version
    core.publisher.drain()
    [event] = _events(ports, f"g-{unique}")
    assert event.inference_id == "req-42" and event.custom_attributes == "trace=7"
    assert event.input.observed_content_type == "application/octet-stream"
    assert event.input.content_type == "image/png"
    assert event.response.data.encode() == raw  # the bytes the client got


def test_a_refused_image_is_a_model_error_with_the_original_status(endpoint):
    client, _, _ = endpoint
    with pytest.raises(client.exceptions.ModelError) as info:
        client.invoke_endpoint(EndpointName="signs", Body=b"not an image", ContentType="image/png")
    err = info.value.response
    assert err["Error"]["Code"] == "ModelError"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert err["OriginalStatusCode"] == 400
    assert "not a PNG" in err["OriginalMessage"] and "not a PNG" in err["Error"]["Message"]

    with pytest.raises(client.exceptions.ModelError) as info:
        client.invoke_endpoint(EndpointName="signs", Body=png_bytes(), ContentType="text/plain")
    assert info.value.response["OriginalStatusCode"] == 415


@pytest.mark.parametrize("kwargs, words", [
    ({"EndpointName": "other"}, "Endpoint other not found"),
    ({"InferenceId": "x" * 65}, "InferenceId"),
    ({"TargetVariant": "Canary"}, "TargetVariant Canary"),
    ({"Accept": "text/csv"}, "Accept"),
])
def test_bad_calls_are_validation_errors(endpoint, kwargs, words):
    client, _, _ = endpoint
    call = {"EndpointName": "signs", "Body": png_bytes(), "ContentType": "image/png", **kwargs}
    with pytest.raises(client.exceptions.ValidationError) as info:
        client.invoke_endpoint(**call)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert words in info.value.response["Error"]["Message"]


def test_an_npy_batch_gets_one_list_and_one_event_per_image(endpoint, unique):
    client, core, ports = endpoint
    images = np.random.default_rng(3).integers(0, 255, (5, 40, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    np.save(buf, images)
    r = client.invoke_endpoint(EndpointName="signs", Body=buf.getvalue(), ContentType="application/x-npy")
    answer = json.loads(r["Body"].read())
    assert len(answer["predictions"]) == 5 and all(len(p) == 5 for p in answer["predictions"])
    core.publisher.drain()
    events = [e for e in _events(ports, f"g-{unique}") if e.input.observed_content_type == "application/x-npy"]
    assert len(events) == 5 and len({e.event_id for e in events}) == 5
    assert sorted(r["ResponseMetadata"]["HTTPHeaders"]["x-signwatch-event-id"].split(",")) == sorted(
        e.event_id for e in events)
    # each event holds its own image (behind the claim check) and that image's predictions
    from signwatch.publishing import resolve_input
    seen = set()
    for event in events:
        image = np.load(io.BytesIO(resolve_input(event.input, ports.store)))
        [i] = [i for i in range(5) if np.array_equal(images[i], image)]
        seen.add(i)
        assert [p.model_dump() for p in event.output.predictions] == answer["predictions"][i]
    assert seen == set(range(5))

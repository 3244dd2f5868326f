"""V2 requests on the real stack (Kafka, S3): each image's event reaches data capture and is written
to S3 as SageMaker's capture record, like the SageMaker routes' events."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image

from signwatch.capture import read_capture_lines
from signwatch.config import Settings
from signwatch.ports import open_store
from signwatch.serving import v2
from signwatch_services.capture.server import build_loop as capture_loop
from tests.conftest import wait_until
from tests.integration.serving import live_server
from tests.unit.helpers import png_bytes

pytestmark = pytest.mark.stack


def _captured(store, prefix: str) -> dict[str, dict]:
    records = {}
    for key in store.list(prefix):
        lines, bad = read_capture_lines(store.get(key))
        assert bad == 0
        records.update((r["eventMetadata"]["eventId"], r) for r in lines)
    return records


def test_each_v2_image_is_captured_like_the_other_routes(stack, unique):
    s3 = stack["s3"]
    settings = Settings(
        bus_url=f"kafka://{stack['kafka']['bootstrap']}", store_url=f"s3://{s3['bucket']}?endpoint={s3['endpoint']}",
        state_url=stack["redis"]["url"], s3_access_key=s3["access_key"], s3_secret_key=s3["secret_key"],
        endpoint=f"v2-{unique}", inference_topic=f"v2-{unique}.inference", capture_group=f"v2-{unique}.capture",
        capture_prefix=f"v2-{unique}/datacapture", capture_sampling_percentage=100, capture_flush_seconds=1,
        inline_input_limit_bytes=1024)
    store = open_store(settings.store_url, s3["access_key"], s3["secret_key"])
    pngs = [png_bytes(seed=31, size=28), png_bytes(seed=32, size=28)]
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(p)).convert("RGB")) for p in pngs])
    capture = capture_loop(settings)
    thread = capture.start_thread()
    try:
        with live_server(settings) as (url, core):
            tensor = triton.InferInput("images", list(pixels.shape), "UINT8")
            tensor.set_data_from_numpy(pixels)
            client = triton.InferenceServerClient(url.removeprefix("http://"))
            try:
                result = client.infer(settings.endpoint, [tensor], request_id="v2-pixels")
            finally:
                client.close()
            body, length = v2.binary_request(pngs, request_id="v2-files", binary_outputs=False)
            r = httpx.post(f"{url}/v2/models/{settings.endpoint}/infer", content=body,
                           headers={v2.HEADER_LENGTH: str(length)}, timeout=30)
            assert r.status_code == 200, r.text
            sent = r.headers["x-signwatch-event-id"].split(",")
            assert len(sent) == 2
            core.publisher.drain(30)
            wait_until(lambda: len([c for c in _captured(store, settings.capture_prefix).values()
                                    if c["eventMetadata"].get("inferenceId") in ("v2-pixels", "v2-files")]) == 4,
                       90, interval_s=0.5, what="the four V2 images to be captured")
        records = list(_captured(store, settings.capture_prefix).values())
        files = {r["eventMetadata"]["eventId"]: r for r in records if r["eventMetadata"]["inferenceId"] == "v2-files"}
        assert set(files) == set(sent)  # one record per image, under the ids the answer named
        files_answer = r.json()["outputs"]
        class_ids = np.array(next(o for o in files_answer if o["name"] == "class_ids")["data"]).reshape(2, -1)
        for i, event_id in enumerate(sent):
            record = files[event_id]["captureData"]
            assert record["endpointInput"]["observedContentType"] == "image/png"
            assert base64.b64decode(record["endpointInput"]["data"]) == pngs[i]
            output = json.loads(record["endpointOutput"]["data"])
            assert [p["class_id"] for p in output["predictions"]] == list(class_ids[i])
        captured_pixels = [np.load(io.BytesIO(base64.b64decode(r["captureData"]["endpointInput"]["data"])))
                           for r in records if r["eventMetadata"]["inferenceId"] == "v2-pixels"]
        assert sorted(int(np.flatnonzero([np.array_equal(c, p) for p in pixels])[0]) for c in captured_pixels) == [0, 1]
        assert result.as_numpy("class_ids").shape == (2, 5)
    finally:
        capture.stop()
        thread.join(60)
        for key in store.list(f"v2-{unique}/"):
            store.delete(key)

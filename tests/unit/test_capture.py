from __future__ import annotations

import base64
import json

from signwatch.capture import CaptureBatcher, capture_record, read_capture_lines, should_sample
from signwatch.ports.bus import Message
from signwatch.ports.store_file import FileStore
from tests.unit.helpers import inference_event


def test_sampling_is_deterministic_and_close_to_the_percentage():
    ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(4000)]
    picked = [i for i in ids if should_sample(i, 30)]
    assert picked == [i for i in ids if should_sample(i, 30)]
    assert 0.27 < len(picked) / len(ids) < 0.33
    assert all(should_sample(i, 100) for i in ids[:50])
    assert not any(should_sample(i, 0) for i in ids[:50])


def test_record_has_exactly_sagemakers_schema():
    event = inference_event(inference_id="req-1")
    record = capture_record(event, b"raw")
    assert set(record) == {"captureData", "eventMetadata", "eventVersion"}
    assert set(record["captureData"]) == {"endpointInput", "endpointOutput"}
    assert record["captureData"]["endpointInput"] == {
        "observedContentType": "image/png", "mode": "INPUT",
        "data": base64.b64encode(b"raw").decode(), "encoding": "BASE64"}
    out = record["captureData"]["endpointOutput"]
    assert out["mode"] == "OUTPUT" and out["encoding"] == "JSON"
    assert json.loads(out["data"])["predictions"][0]["class_id"] == 3
    assert record["eventMetadata"]["eventId"] == event.event_id
    assert record["eventMetadata"]["inferenceId"] == "req-1"
    assert record["eventMetadata"]["inferenceTime"].endswith("Z")
    assert record["eventVersion"] == "0"


def test_record_carries_the_image_hash_when_the_event_does():
    """``eventMetadata.imageHash``: not SageMaker's (its readers ignore keys they do not know), the
    serving core's perceptual hash, so the scheduled job need not decode the image to fold frames."""
    event = inference_event()
    assert "imageHash" not in capture_record(event, b"raw")["eventMetadata"]  # an older producer's event
    hashed = capture_record(event.model_copy(update={"image_hash": "00ff00ff00ff00ff"}), b"raw")
    assert hashed["eventMetadata"]["imageHash"] == "00ff00ff00ff00ff"
    assert set(hashed) == {"captureData", "eventMetadata", "eventVersion"}


def _messages(events, partition=0, start=0):
    return [Message("t", partition, start + i, e.event_id, e.to_bytes(), 0) for i, e in enumerate(events)]


def test_files_are_named_by_partition_and_first_offset_and_a_replay_replaces(tmp_path):
    store = FileStore(tmp_path)
    events = [inference_event(class_id=i % 3) for i in range(10)]
    batcher = CaptureBatcher(store=store, prefix="cap")
    for m, e in zip(_messages(events, start=20), events):
        batcher.add(m, e)
    [key] = batcher.flush()
    t = events[0].time
    assert key == f"cap/ep/AllTraffic/{t:%Y/%m/%d/%H}/t-p000-o000000000020.jsonl"
    records, bad = read_capture_lines(store.get(key))
    assert bad == 0 and [r["eventMetadata"]["eventId"] for r in records] == [e.event_id for e in events]

    # A crash before the commit replays from offset 20 with a shorter batch: same name, replaced.
    replay = CaptureBatcher(store=store, prefix="cap")
    for m, e in list(zip(_messages(events, start=20), events))[:4]:
        replay.add(m, e)
    assert replay.flush() == [key]
    assert len(store.list("cap")) == 1
    assert len(read_capture_lines(store.get(key))[0]) == 4


def test_batcher_is_due_by_count_or_age(tmp_path):
    now = [0.0]
    batcher = CaptureBatcher(store=FileStore(tmp_path), max_records=3, max_age_s=5, clock=lambda: now[0])
    events = [inference_event() for _ in range(3)]
    msgs = _messages(events)
    assert not batcher.due()
    batcher.add(msgs[0], events[0])
    assert not batcher.due()
    now[0] = 6.0
    assert batcher.due()
    now[0] = 0.0
    batcher.flush()
    for m, e in zip(msgs, events):
        batcher.add(m, e)
    assert batcher.due()


def test_unreadable_lines_are_counted():
    good = json.dumps({"captureData": {"endpointOutput": {"data": "{}"}}})
    records, bad = read_capture_lines(f"{good}\nnot json\n{{}}\n".encode())
    assert len(records) == 1 and bad == 2


# The example record of SageMaker's data-capture docs ("Capture data from real-time endpoint",
# https://docs.aws.amazon.com/sagemaker/latest/dg/model-monitor-data-capture-endpoint.html), one line:
SAGEMAKER_EXAMPLE = json.loads(
    '{"captureData":{"endpointInput":{"observedContentType":"text/csv","mode":"INPUT",'
    '"data":"69,0,153.7,109,194.0,105,256.1,114,14.1,6,1,0,0,0,0\\n","encoding":"CSV"},'
    '"endpointOutput":{"observedContentType":"text/csv; charset=utf-8","mode":"OUTPUT",'
    '"data":"0.0254181120544672","encoding":"CSV"}},'
    '"eventMetadata":{"eventId":"aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee","inferenceTime":"2022-02-14T17:25:49Z"},'
    '"eventVersion":"0"}')


def test_a_record_matches_sagemakers_documented_record_field_by_field(tmp_path):
    """Served through the app: content type as sent, the response bytes as received, no inferenceId."""
    from fastapi.testclient import TestClient

    from signwatch.config import Settings
    from signwatch.events import InferenceEvent
    from signwatch.runtime import open_ports
    from signwatch_services.inference.server import build_core, create_app
    from tests.unit.helpers import png_bytes

    settings = Settings(bus_url="memory://capture-fidelity", store_url=tmp_path.as_uri(), state_url="memory://")
    ports = open_ports(settings)
    core = build_core(settings, ports)
    body = png_bytes(size=24)
    with TestClient(create_app(core)) as client:
        r = client.post("/invocations", content=body, headers={
            "content-type": "application/octet-stream", "X-Amzn-SageMaker-Custom-Attributes": "camera=7"})
        assert r.status_code == 200
        core.publisher.drain()
    core.close()
    [message] = ports.bus.consumer([settings.inference_topic], "fidelity").poll(timeout_ms=200)
    record = capture_record(InferenceEvent.model_validate_json(message.value), body)

    def shape(node):  # the keys at every level and the JSON type of every leaf
        return {k: shape(v) for k, v in node.items()} if isinstance(node, dict) else type(node).__name__

    ours, theirs = shape(record), shape(SAGEMAKER_EXAMPLE)
    theirs["eventMetadata"]["customAttributes"] = "str"  # present because the client sent some
    theirs["eventMetadata"]["imageHash"] = "str"  # signwatch's: the serving core's perceptual hash
    assert ours == theirs  # in particular no "inferenceId": the client gave none
    for side in ("endpointInput", "endpointOutput"):
        assert record["captureData"][side]["mode"] == SAGEMAKER_EXAMPLE["captureData"][side]["mode"]
    assert record["eventVersion"] == SAGEMAKER_EXAMPLE["eventVersion"]
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    from datetime import datetime
    datetime.strptime(SAGEMAKER_EXAMPLE["eventMetadata"]["inferenceTime"], fmt)
    datetime.strptime(record["eventMetadata"]["inferenceTime"], fmt)  # same format
    assert record["captureData"]["endpointInput"]["observedContentType"] == "application/octet-stream"
    assert base64.b64decode(record["captureData"]["endpointInput"]["data"]) == body
    assert record["captureData"]["endpointOutput"]["data"].encode() == r.content  # exactly the bytes sent back
    assert record["eventMetadata"]["customAttributes"] == "camera=7"
    # the hash the scheduled job folds by is the one it would take of the decoded pixels
    from signwatch.monitoring.reference import decoded_hash, recorded_hash
    assert recorded_hash(record) == record["eventMetadata"]["imageHash"] == decoded_hash(record) is not None
    assert record["eventMetadata"]["eventId"] == r.headers["X-Signwatch-Event-Id"]


def test_batches_are_due_by_bytes_too(tmp_path):
    store = FileStore(tmp_path)
    batcher = CaptureBatcher(store=store, max_records=1000, max_age_s=3600, max_bytes=4096)
    events = [inference_event() for _ in range(10)]
    for m, e in zip(_messages(events), events):
        batcher.add(m, e)
        if batcher.due():
            break
    assert batcher.due() and batcher._buffered < 10


def test_a_missing_claim_check_is_poison(tmp_path):
    import pytest

    from signwatch.events import PoisonMessage

    event = inference_event()
    event = event.model_copy(update={"input": event.input.model_copy(update={"data": None, "ref": "inputs/gone.png"})})
    with pytest.raises(PoisonMessage):
        CaptureBatcher(store=FileStore(tmp_path)).add(_messages([event])[0], event)

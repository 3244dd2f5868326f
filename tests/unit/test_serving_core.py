"""The inference core's bounds: a full model queue answers 429 at once, a stopped model 503, a full
event buffer drops (counted and logged), and claim checks wait for the store rather than vanish."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from signwatch.classifier import BatcherFull, BatcherStopped, MicroBatcher
from signwatch.config import Settings
from signwatch.ports.bus_memory import MemoryBus
from signwatch.ports.store_file import FileStore
from signwatch.publishing import EventPublisher, make_input_payload
from tests.conftest import wait_until
from tests.unit.helpers import inference_event, png_bytes


def test_a_full_batcher_refuses_at_once_and_a_stopped_one_says_so():
    release = threading.Event()

    def slow_predict(items):
        release.wait(10)
        return [f"r{i}" for i, _ in enumerate(items)]

    async def scenario():
        batcher = MicroBatcher(slow_predict, max_batch_size=2, max_wait_ms=0, max_queue=3)
        with pytest.raises(BatcherStopped):
            batcher.enqueue("x")
        await batcher.start()
        first = [batcher.enqueue(i) for i in range(2)]  # taken into the (blocked) forward
        await asyncio.sleep(0.05)
        queued = [batcher.enqueue(i) for i in range(3)]
        t0 = time.monotonic()
        with pytest.raises(BatcherFull):
            batcher.enqueue("one too many")
        assert time.monotonic() - t0 < 0.01 and batcher.room() == 0
        release.set()
        results = await asyncio.gather(*first, *queued)
        await batcher.stop()
        return results

    assert len(asyncio.run(scenario())) == 5


def test_the_app_answers_429_json_when_the_model_queue_is_full(tmp_path):
    from signwatch_services.inference.server import build_core, create_app

    settings = Settings(bus_url="memory://full-queue", store_url=tmp_path.as_uri(), state_url="memory://",
                        inference_queue_size=1)
    core = build_core(settings)
    with TestClient(create_app(core)) as client:
        core.batcher.room = lambda: 0  # as if 1 image were already waiting
        r = client.post("/invocations", content=png_bytes(), headers={"content-type": "image/png"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "busy"
        r = client.post("/endpoints/signwatch/invocations", content=png_bytes(), headers={"content-type": "image/png"})
        assert r.status_code == 429 and r.headers["x-amzn-ErrorType"].startswith("ModelNotReadyException")
        assert r.json()["message"]
    core.close()


def test_a_full_event_buffer_drops_counts_and_logs(tmp_path, caplog):
    class StuckBus(MemoryBus):
        def publish(self, *a, **k):
            raise ConnectionError("broker down")

    publisher = EventPublisher(StuckBus("stuck"), FileStore(tmp_path), "t", CollectorRegistry(),
                               max_events=3, backoff_s=0.01, max_backoff_s=0.01)
    with caplog.at_level(logging.ERROR, logger="signwatch.publishing"):
        accepted = [publisher.submit(inference_event()) for _ in range(5)]
    assert accepted == [True, True, True, False, False]
    assert publisher.outcomes.labels("dropped")._value.get() == 2
    assert publisher.buffered[0] == 3
    assert any("event buffer full" in r.getMessage() for r in caplog.records)
    publisher._closing.set()


def test_the_byte_bound_holds_too(tmp_path):
    publisher = EventPublisher(MemoryBus("bytes"), FileStore(tmp_path), "t", CollectorRegistry(), max_bytes=10_000)
    raw = b"x" * 20_000
    event = inference_event().model_copy(update={"input": make_input_payload(raw, "image/png", ref="inputs/x.png")})
    assert not publisher.submit(event, claim=raw)
    assert publisher.outcomes.labels("dropped")._value.get() == 1
    with pytest.raises(ValueError, match="no ref"):  # bytes with nowhere to go are a caller's mistake
        publisher.submit(inference_event(), claim=raw)
    publisher.close()


def test_a_claim_check_waits_for_the_store_then_the_event_flows(tmp_path):
    class FlakyStore(FileStore):
        down = True

        def put(self, key, data, content_type="application/octet-stream"):
            if self.down:
                raise ConnectionError("S3 down")
            return super().put(key, data, content_type)

    store, bus = FlakyStore(tmp_path), MemoryBus("claims")
    publisher = EventPublisher(bus, store, "t", CollectorRegistry(), backoff_s=0.01, max_backoff_s=0.02)
    raw = png_bytes(size=64)
    base = inference_event()
    event = base.model_copy(update={"input": make_input_payload(raw, "image/png", ref="inputs/x.png")})
    assert publisher.submit(event, claim=raw)
    wait_until(lambda: publisher.retries.labels("claim_check")._value.get() >= 3, 5, what="retries")
    assert bus.consumer(["t"], "g").poll(timeout_ms=50) == []  # never published before its bytes exist
    store.down = False
    assert publisher.drain(5)
    [message] = bus.consumer(["t"], "g2").poll(timeout_ms=200)
    assert message.key == event.event_id and store.get("inputs/x.png") == raw
    publisher.close()


def test_two_workers_run_two_forwards_at_once_and_split_what_is_queued():
    both_running = threading.Barrier(2, timeout=5)  # broken (and the test failed) if one waits alone
    sizes = []

    def predict(items):
        sizes.append(len(items))
        both_running.wait()
        return [f"r{i}" for i in items]

    async def scenario():
        batcher = MicroBatcher(predict, max_batch_size=32, max_wait_ms=1000, max_queue=16, workers=2)
        await batcher.start()
        results = await asyncio.gather(*[batcher.enqueue(i) for i in range(4)])
        await batcher.stop()
        return results

    assert asyncio.run(scenario()) == ["r0", "r1", "r2", "r3"]
    assert sizes == [2, 2]  # four queued, two free workers: two halves side by side, not 4 and 0


def test_a_lone_request_does_not_wait_for_company():
    async def scenario():
        batcher = MicroBatcher(lambda items: list(items), max_batch_size=32, max_wait_ms=5000, workers=2)
        await batcher.start()
        t0 = time.monotonic()
        result = await batcher.enqueue("alone")
        took = time.monotonic() - t0
        await batcher.stop()
        return result, took

    result, took = asyncio.run(scenario())
    assert result == "alone" and took < 1.0  # max_wait is 5 s: its share (1) was reached at once


def test_a_free_worker_waits_for_its_share_while_the_other_runs():
    release, sizes = threading.Event(), []

    def predict(items):
        sizes.append(len(items))
        if len(sizes) == 1:
            release.wait(10)  # the first batch holds its worker
        return list(items)

    async def scenario():
        batcher = MicroBatcher(predict, max_batch_size=32, max_wait_ms=2000, workers=2)
        await batcher.start()
        first = [batcher.enqueue(f"a{i}") for i in range(8)]  # split 4 + 4; hold the first 4
        await asyncio.sleep(0.2)
        # the second worker is free again; 3 arrive, then (within its wait) 1 more: it waits for 4,
        # the size of the batch running beside it, rather than leaving with the first arrival
        later = [batcher.enqueue(f"b{i}") for i in range(3)]
        await asyncio.sleep(0.2)
        later.append(batcher.enqueue("b3"))
        done = await asyncio.gather(*later)
        release.set()
        await asyncio.gather(*first)
        await batcher.stop()
        return done

    assert asyncio.run(scenario()) == ["b0", "b1", "b2", "b3"]
    assert sizes[:3] == [4, 4, 4]


def test_a_corrupt_image_in_a_batch_gets_its_400_and_the_others_their_answers(tmp_path):
    from signwatch_services.inference.server import build_core, create_app

    settings = Settings(bus_url="memory://corrupt-in-batch", store_url=tmp_path.as_uri(), state_url="memory://",
                        max_batch_wait_ms=200)
    core = build_core(settings)
    good = png_bytes()
    with TestClient(create_app(core)) as client:
        with ThreadPoolExecutor(4) as pool:  # sent together: they share a batch
            bodies = [good, good[:60], good, b"\x89PNG\r\n\x1a\n" + b"\x00" * 100]
            answers = list(pool.map(lambda b: client.post("/invocations", content=b,
                                                          headers={"content-type": "image/png"}), bodies))
        assert [r.status_code for r in answers] == [200, 400, 200, 400]
        assert answers[1].json()["error"]["code"] == "bad_image"
        assert answers[0].json()["predictions"] == answers[2].json()["predictions"]
        r = client.get("/invocations")
        assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"]["code"]
    core.close()


def test_a_plain_forward_runs_the_frozen_graph_and_a_recorded_one_the_eager_model():
    from signwatch.classifier import Classifier
    from signwatch.model.core import ModelSpec, build_model

    calls = []
    model = build_model(seed=2).eval()

    def frozen(batch):
        calls.append(len(batch))
        return model(batch)

    class Recording:
        enabled = False

        def forward(self, m, batch, ids):
            calls.append(("eager", m is model, ids))
            return m(batch)

    debugger = Recording()
    classifier = Classifier(model=model, spec=ModelSpec(), debugger=debugger, forward=frozen)
    image = np.zeros((64, 64, 3), np.uint8)
    classifier.predict([(image, "a"), (image, "b")])
    debugger.enabled = True
    classifier.predict([(image, "c")])
    assert calls == [2, ("eager", True, ["c"])]

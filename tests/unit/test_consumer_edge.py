"""Validation at the edge of every consumer (issue 16), on the in-memory bus: a bad event is
dead-lettered at once with its reason and the consumer's name in headers, and counted, while the
real events around it are counted; a flush that keeps failing on one message is isolated; a loop
that takes messages and never makes them durable is not live; the lag gauge counts what was taken
and not yet counted, also while the loop is stuck retrying."""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry

from signwatch.config import Settings
from signwatch.consuming import (
    DLQ_CONSUMER, DLQ_OFFSET, DLQ_PARTITION, DLQ_REASON, DLQ_TOPIC, MAX_ISOLATED_IN_A_ROW, ConsumerLoop, dlq_topic,
)
from signwatch.events import InferenceEvent, parse_event
from signwatch.model.core import load_spec
from signwatch.ports.bus_memory import MemoryBus
from signwatch.runtime import open_ports
from tests.conftest import wait_until
from tests.unit.helpers import MONITOR_ONLY, bad_inference_events, inference_event

SPEC = load_spec()


def _interleave(bus, topic: str, real: list[InferenceEvent], bad: dict[str, bytes]) -> dict[int, str]:
    """Publish the real and the bad events in turn, on one partition (one key), so that every bad
    one sits between real ones; returns the bad ones' offsets by name."""
    offsets, queue, bad_items = {}, list(real), list(bad.items())
    n = 0
    while queue or bad_items:
        if queue:
            bus.publish(topic, "k", queue.pop(0).to_bytes())
            n += 1
        if bad_items:
            name, value = bad_items.pop(0)
            bus.publish(topic, "k", value)
            offsets[n] = name
            n += 1
    return offsets


def _dead_letters(bus, topic: str) -> list:
    return bus.consumer([dlq_topic(topic)], "inspect").poll(timeout_ms=100, max_records=10_000)


def test_the_monitor_dead_letters_every_bad_event_at_once_and_counts_the_real_ones(tmp_path, unique):
    settings = Settings(bus_url=f"memory://edge-{unique}", state_url="memory://", store_url=tmp_path.as_uri(),
                        endpoint="ep", monitor_min_predictions=10_000, monitor_min_drift=10_000)  # counting only
    ports = open_ports(settings)
    ports.bus.ensure_topics([settings.inference_topic], 1)
    registry = CollectorRegistry()
    from signwatch_services.monitor.server import build_loop

    loop = build_loop(settings, SPEC, ports=ports, registry=registry)
    bad = bad_inference_events("ep", SPEC.num_classes)
    real = [inference_event(class_id=i % 7, probability=0.9) for i in range(40)]
    offsets = _interleave(ports.bus, settings.inference_topic, real, bad)
    calls = []
    process = loop.handler.process
    loop.handler.process = lambda m: (calls.append(m.offset), process(m))[1]

    started = time.monotonic()
    while loop.processed < len(real) + len(bad) or not loop.handler.idle:
        loop.run_once()
    elapsed = time.monotonic() - started

    windows = loop.handler.monitor.windows.time_window(time.time() + 1)
    assert windows.total == len(real), "every real event is counted, none of the bad ones"
    assert sorted(calls) == list(range(len(real) + len(bad))), "each message handled once: no retries"
    assert elapsed < 10, f"bad events cost no backoff ({elapsed:.1f} s)"
    refused = {o: n for o, n in offsets.items() if n != "class_out_of_range"}
    dead = _dead_letters(ports.bus, settings.inference_topic)
    assert {int(m.header(DLQ_OFFSET)) for m in dead} == set(refused)
    for m in dead:
        name = refused[int(m.header(DLQ_OFFSET))]
        assert m.value == bad[name], name
        assert m.header(DLQ_CONSUMER) == settings.monitor_group.encode(), name
        assert m.header(DLQ_TOPIC) == settings.inference_topic.encode() and m.header(DLQ_PARTITION) == b"0"
        assert m.header(DLQ_REASON), name
    by_name = {refused[int(m.header(DLQ_OFFSET))]: m.header(DLQ_REASON).decode() for m in dead}
    assert "less than or equal to 1" in by_name["top1_1e308"]
    assert "44 predictions for a model of 43 classes" in by_name["more_predictions_than_classes"]
    assert "ahead of this monitor's clock" in by_name["time_next_year"]
    assert loop.messages.labels(loop.group, "dead_lettered")._value.get() == len(refused)
    # every bad event, refused or out of the model's range, is seen by the completeness check
    assert windows.unreadable == len(bad)
    unreadable = registry.get_sample_value("signwatch_monitor_unreadable_total",
                                           {"endpoint": "ep", "reason": "class_out_of_range"})
    assert unreadable == 1


def test_capture_dead_letters_the_bad_events_with_its_own_name_and_writes_the_real_ones(tmp_path, unique):
    from signwatch_services.capture.server import build_loop

    settings = Settings(bus_url=f"memory://edge-{unique}", state_url="memory://", store_url=tmp_path.as_uri(),
                        endpoint="ep", capture_batch_records=1000)
    ports = open_ports(settings)
    ports.bus.ensure_topics([settings.inference_topic], 1)
    loop = build_loop(settings, ports=ports)
    bad = bad_inference_events("ep", SPEC.num_classes)
    # capture knows no model: what only the model facts refuse is a real record to it
    schema_bad = {k: v for k, v in bad.items() if k not in MONITOR_ONLY}
    real = [inference_event(endpoint="ep") for _ in range(10)]
    offsets = _interleave(ports.bus, settings.inference_topic, real, schema_bad)
    while loop.run_once():
        pass
    loop._commit()
    assert loop.handler.batcher.records_written == len(real)
    dead = _dead_letters(ports.bus, settings.inference_topic)
    assert {int(m.header(DLQ_OFFSET)): m.header(DLQ_CONSUMER) for m in dead} == {
        o: settings.capture_group.encode() for o in offsets}


def test_the_explainer_refuses_bad_violations_before_explaining_anything(unique):
    import json

    from signwatch.events import ViolationCheck, ViolationEvent, ViolationSample
    from signwatch_services.explainer.server import ExplainerHandler

    class NeverCalled:
        def explain(self, violation):
            raise AssertionError(f"{violation.violation_id} reached the explainer")

    bus = MemoryBus(unique)
    sample = ViolationSample(event_id="e-1", ref="inputs/ep/x.png", sha256="0" * 64, size=3,
                             content_type="image/png", predicted_class=14, probability=0.9)
    good = ViolationEvent(endpoint="ep", variant="AllTraffic", count=1, total=1, window_seconds=60,
                          samples=[sample], check=ViolationCheck(feature_name="PredictedClass",
                                                                 constraint_check_type="baseline_drift_check",
                                                                 description="d"))
    base = json.loads(good.to_bytes())

    def changed(**kw):
        v = json.loads(json.dumps(base)) | kw
        return json.dumps(v).encode()

    bad = [changed(samples=[dict(base["samples"][0], probability=1e308)]),
           changed(samples=[dict(base["samples"][0], ref="../../etc/passwd")]),
           changed(samples=[dict(base["samples"][0], predicted_class="14")]),
           changed(violation_id="../../explanations/other"),
           changed(samples=[base["samples"][0]] * 65),
           b"not json"]
    for value in bad:
        bus.publish("violations", "k", value)
    loop = ConsumerLoop(bus, ["violations"], "signwatch-explainer",
                        ExplainerHandler(NeverCalled(), bus, "explanations"), poll_timeout_ms=50)
    while loop.run_once():
        pass
    dead = _dead_letters(bus, "violations")
    assert sorted(m.value for m in dead) == sorted(bad)
    assert all(m.header(DLQ_CONSUMER) == b"signwatch-explainer" and m.header(DLQ_REASON) for m in dead)


class Buffering:
    """Buffers message values; flush makes them durable, and fails (a bug, not an outage) while
    a value in ``bad`` is in the buffer, or always with ``always``."""

    def __init__(self, bad=(), always: Exception | None = None, due_every: int = 1000) -> None:
        self.buffer, self.durable, self.bad, self.always, self.due_every = [], [], set(bad), always, due_every
        self.flushes = 0

    def process(self, message):
        self.buffer.append(message.value)

    def due(self):
        return len(self.buffer) >= self.due_every

    def flush(self):
        self.flushes += 1
        if self.always is not None:
            raise self.always
        if self.bad & set(self.buffer):
            raise OverflowError("cannot convert float infinity to integer")
        self.durable += self.buffer
        self.buffer = []

    def discard(self):
        self.buffer = []


def _fast_loop(bus, handler, **kw):
    return ConsumerLoop(bus, ["in"], "g", handler, poll_timeout_ms=20, backoff_s=0.001, max_backoff_s=0.001,
                        max_attempts=3, **kw)


def test_a_flush_that_fails_on_one_message_is_isolated_and_the_rest_made_durable(unique):
    bus = MemoryBus(unique)
    values = [b"a", b"b", b"poison", b"c", b"d"]
    for v in values:
        bus.publish("in", "k", v)
    handler = Buffering(bad={b"poison"})
    loop = _fast_loop(bus, handler)
    loop.run_once()
    loop._commit()  # the end of a batch: what the loop does when the handler is due
    assert sorted(handler.durable) == [b"a", b"b", b"c", b"d"]
    [dead] = _dead_letters(bus, "in")
    assert dead.value == b"poison" and b"OverflowError" in dead.header(DLQ_REASON)
    assert dead.header(DLQ_CONSUMER) == b"g" and dead.header(DLQ_OFFSET) == b"2"
    again = Buffering()
    _fast_loop(bus, again).run_once()
    assert again.buffer == [], "everything was committed: the stream goes on"
    assert loop.live()


def test_a_flush_that_fails_whatever_the_message_stops_the_loop_being_live_rather_than_empty_the_stream(unique):
    bus = MemoryBus(unique)
    for i in range(10):
        bus.publish("in", "k", str(i).encode())
    handler = Buffering(always=ValueError("a bug"))
    loop = _fast_loop(bus, handler)
    loop.run_once()
    loop._commit()
    assert len(_dead_letters(bus, "in")) == MAX_ISOLATED_IN_A_ROW - 1, "a few at most, then it stops"
    assert not loop.live(), "a loop that cannot make anything durable is restarted"
    loop._commit()
    assert handler.durable == [] and handler.buffer == []
    fresh = Buffering()
    _fast_loop(bus, fresh).run_once()
    assert len(fresh.buffer) == 10, "nothing was committed: a restarted loop replays it all"


def test_taking_messages_without_making_them_durable_is_no_progress(unique):
    bus = MemoryBus(unique)
    handler = Buffering(always=ConnectionError("redis is away"), due_every=1)
    loop = _fast_loop(bus, Buffering(), stall_s=0.3)
    loop.run_once()
    time.sleep(0.4)  # idle for longer than stall_s: waiting for messages is not a stall
    loop.run_once()
    assert loop.live()
    loop = _fast_loop(bus, handler, stall_s=0.3)
    thread = loop.start_thread()
    try:
        bus.publish("in", "k", b"x")
        wait_until(lambda: handler.flushes >= 3, 10, what="the flush to be retried")
        wait_until(lambda: not thread.is_alive(), 10, what="the stuck loop to fail liveness")
    finally:
        loop.stop()
        thread.join(10)


def test_the_lag_gauge_counts_what_was_taken_and_not_counted_also_while_stuck_retrying(unique):
    bus = MemoryBus(unique)
    down = threading.Event()
    down.set()

    class Outage(Buffering):
        def flush(self):
            if down.is_set():
                self.flushes += 1
                raise ConnectionError("redis hung")
            super().flush()

    handler = Outage(due_every=1)
    registry = CollectorRegistry()
    loop = ConsumerLoop(bus, ["in"], "lagging", handler, registry=registry, poll_timeout_ms=20, backoff_s=0.01,
                        max_backoff_s=0.05)

    def lag():
        return registry.get_sample_value("signwatch_consumer_lag_messages", {"group": "lagging"})

    thread = loop.start_thread()
    try:
        for i in range(30):
            bus.publish("in", "k", str(i).encode())
        wait_until(lambda: handler.flushes >= 2, 10, what="the loop to be stuck in flush")
        # 1 processed and uncommitted, 29 taken and waiting behind it
        wait_until(lambda: lag() == 30, 10, what="the gauge to count the taken messages while stuck")
        bus.publish("in", "k", b"late")  # arrives while the loop retries: behind the partition's end
        wait_until(lambda: lag() == 31, 10, what="the gauge to count the new message while stuck")
        assert loop.live()
        down.clear()
        wait_until(lambda: len(handler.durable) == 31, 10, what="everything counted once the server is back")
        wait_until(lambda: lag() == 0, 10, what="the gauge back to 0")
    finally:
        loop.stop()
        thread.join(10)


def test_parse_event_refuses_what_the_issue_found_with_a_reason():
    bad = bad_inference_events("ep")
    for name, value in bad.items():
        if name in MONITOR_ONLY:
            parse_event(value, InferenceEvent)  # only the monitor, knowing the model, can tell
            continue
        try:
            parse_event(value, InferenceEvent)
        except ValueError as exc:
            assert str(exc), name
        else:
            raise AssertionError(f"{name} passed the schema")

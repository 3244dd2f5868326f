from __future__ import annotations

from signwatch.consuming import ConsumerLoop
from signwatch.events import InferenceEvent, PoisonMessage, parse_event
from signwatch.ports.bus_memory import MemoryBus
from tests.unit.helpers import inference_event


class Recorder:
    """Buffers processed events and makes them durable only on flush."""

    def __init__(self, fail_times: int = 0, flush_every: int = 1) -> None:
        self.buffer, self.durable = [], []
        self.fail_times = fail_times
        self.flush_every = flush_every

    def process(self, message):
        event = parse_event(message.value, InferenceEvent)
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("server went away")
        self.buffer.append(event.event_id)

    def due(self):
        return len(self.buffer) >= self.flush_every

    def flush(self):
        self.durable.extend(self.buffer)
        self.buffer.clear()


def _loop(bus, handler, group="g"):
    return ConsumerLoop(bus, ["in"], group, handler, poll_timeout_ms=50, backoff_s=0.001)


def test_poison_messages_go_to_the_dead_letter_topic_and_the_stream_goes_on(unique):
    bus = MemoryBus(unique)
    good = [inference_event() for _ in range(3)]
    bus.publish("in", "a", good[0].to_bytes())
    bus.publish("in", "b", b"not json at all")
    bus.publish("in", "c", b'{"schema": "signwatch.unknown/v9"}')
    bus.publish("in", "d", good[1].to_bytes())
    bus.publish("in", "e", good[2].to_bytes())
    handler = Recorder()
    loop = _loop(bus, handler)
    while loop.run_once():
        pass
    assert sorted(handler.durable) == sorted(e.event_id for e in good)
    dlq = bus.consumer(["in.dlq"], "inspect").poll(timeout_ms=100)
    assert sorted(m.value for m in dlq) == sorted([b"not json at all", b'{"schema": "signwatch.unknown/v9"}'])
    assert loop.messages.labels("g", "dead_lettered")._value.get() == 2


def test_transient_failures_are_retried_without_loss(unique):
    bus = MemoryBus(unique)
    event = inference_event()
    bus.publish("in", "k", event.to_bytes())
    handler = Recorder(fail_times=3)
    loop = _loop(bus, handler)
    loop.run_once()
    assert handler.durable == [event.event_id]


def test_offsets_are_committed_only_after_flush(unique):
    bus = MemoryBus(unique)
    events = [inference_event() for _ in range(3)]
    for e in events:
        bus.publish("in", "same-key", e.to_bytes())
    handler = Recorder(flush_every=10)  # never due: nothing becomes durable
    loop = _loop(bus, handler)
    loop.run_once()
    loop._consumer.close()  # the worker dies without a clean stop
    again = Recorder()
    second = _loop(bus, again)
    second.run_once()
    assert again.durable == [e.event_id for e in events], "everything not durable is replayed"
    third = Recorder()
    _loop(bus, third).run_once()
    assert third.durable == [], "what was made durable and committed is not replayed"


def test_a_clean_stop_flushes_and_commits_the_tail(unique):
    bus = MemoryBus(unique)
    event = inference_event()
    bus.publish("in", "k", event.to_bytes())
    handler = Recorder(flush_every=100)
    loop = _loop(bus, handler)
    thread = loop.start_thread()
    from tests.conftest import wait_until

    wait_until(lambda: handler.buffer, 5, what="the event to be processed")
    loop.stop()
    thread.join(5)
    assert handler.durable == [event.event_id]
    assert Recorder().durable == []
    after = Recorder()
    _loop(bus, after).run_once()
    assert after.durable == []


def test_parse_event_rejects_wrong_schema_as_poison():
    import pytest

    with pytest.raises(PoisonMessage):
        parse_event(b'{"schema": "signwatch.violation/v1"}', InferenceEvent)


class AlwaysFailing(Recorder):
    def __init__(self, error):
        super().__init__()
        self.error = error
        self.calls = 0

    def process(self, message):
        self.calls += 1
        raise self.error


def test_a_bug_is_dead_lettered_after_max_attempts_but_an_outage_never_is(unique):
    bus = MemoryBus(unique)
    bus.publish("in", "k", inference_event().to_bytes())
    buggy = AlwaysFailing(ValueError("bug"))
    loop = _loop(bus, buggy)
    loop.run_once()
    assert buggy.calls == loop.max_attempts
    assert len(bus.consumer(["in.dlq"], "inspect").poll(timeout_ms=100)) == 1


def test_stopping_during_an_outage_leaves_the_message_for_the_next_consumer(unique):
    import threading

    from tests.conftest import wait_until

    bus = MemoryBus(unique)
    event = inference_event()
    bus.publish("in", "k", event.to_bytes())
    down = AlwaysFailing(ConnectionError("redis is down"))
    loop = _loop(bus, down)
    thread = threading.Thread(target=loop.run)
    thread.start()
    wait_until(lambda: down.calls > loop.max_attempts, 10, what="retries beyond max_attempts")
    loop.stop()
    thread.join(10)
    assert bus.consumer(["in.dlq"], "inspect").poll(timeout_ms=100) == [], "an outage is not poison"
    back = Recorder()
    _loop(bus, back).run_once()
    assert back.durable == [event.event_id], "the server came back: nothing was lost"

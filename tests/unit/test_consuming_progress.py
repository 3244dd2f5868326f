"""A message that can never be published is an error, not an outage; a stuck consumer is not live."""

from __future__ import annotations

from signwatch.consuming import ConsumerLoop, is_transient
from signwatch.ports.bus import MessageTooLarge, PublishError
from signwatch.ports.bus_memory import MemoryBus
from tests.conftest import wait_until
from tests.unit.helpers import inference_event


class Failing:
    def __init__(self, exc: Exception) -> None:
        self.exc, self.calls = exc, 0

    def process(self, message):
        self.calls += 1
        raise self.exc

    def due(self):
        return True

    def flush(self):
        return None


def test_too_large_is_permanent_and_an_unreachable_broker_transient():
    assert not is_transient(MessageTooLarge("1.6 MB over the limit"))
    try:
        raise PublishError("not delivered") from MessageTooLarge("too large")
    except PublishError as exc:
        assert not is_transient(exc)
    assert is_transient(PublishError("broker went away")) and is_transient(ConnectionError())


def test_a_message_that_can_never_be_published_is_dead_lettered_not_retried_forever(unique):
    bus = MemoryBus(unique)
    bus.publish("in", "k", inference_event().to_bytes())
    handler = Failing(MessageTooLarge("violation of 1.6 MB"))
    loop = ConsumerLoop(bus, ["in"], "g", handler, poll_timeout_ms=20, backoff_s=0.001, max_attempts=3)
    loop.run_once()
    assert handler.calls == 3
    assert [m.value for m in bus.consumer(["in.dlq"], "inspect").poll(timeout_ms=100)]


def test_a_consumer_stuck_on_an_outage_fails_its_liveness_check(unique):
    bus = MemoryBus(unique)
    bus.publish("in", "k", inference_event().to_bytes())
    loop = ConsumerLoop(bus, ["in"], "g", Failing(ConnectionError("redis is gone")), poll_timeout_ms=20,
                        backoff_s=0.01, max_backoff_s=0.01, stall_s=0.5)
    thread = loop.start_thread()
    try:
        assert thread.is_alive()
        wait_until(lambda: not thread.is_alive(), 10, what="the stalled loop to fail liveness")
        assert not loop.live()
    finally:
        loop.stop()
        thread.join(10)

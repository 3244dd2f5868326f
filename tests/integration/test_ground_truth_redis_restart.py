"""The label join survives a Redis that is killed and restarted, as deploy/k8s runs it (append-only
file): no matched label is lost, none is counted again, and what waited still joins."""

from __future__ import annotations

import time

from signwatch.monitoring.labels import LabelJoin
from signwatch.ports.state_redis import RedisState
from tests.integration.redis_server import RedisServer
from tests.unit.helpers import inference_event


def test_a_killed_and_restarted_redis_loses_no_matched_label(tmp_path):
    server = RedisServer(tmp_path / "redis", persistent=True).start()
    try:
        events = [inference_event(class_id=i % 7, probability=0.9) for i in range(400)]
        state = RedisState(server.url)
        join = LabelJoin(state, "ep", 10, 7 * 86_400, 3600, 300, 1000, shard_chars=2)
        join.record_predictions(events, time.time())
        assert set(join.add_labels([(e.event_id, 3) for e in events[:250]], time.time())) == {"matched"}
        assert set(join.add_labels([("early-label", 2)], time.time())) == {"waiting"}
        before = join.stats(time.time())
        state.close()

        server.kill()
        server.start()
        state = RedisState(server.url)
        join = LabelJoin(state, "ep", 10, 7 * 86_400, 3600, 300, 1000, shard_chars=2)
        assert join.stats(time.time()) == before == {"matched": 250, "duplicates": 0, "predictions_pending": 150,
                                                     "labels_waiting": 1}
        # the labels given again after the restart are duplicates; the rest join
        outcomes = join.add_labels([(e.event_id, 3) for e in events], time.time())
        assert outcomes.count("duplicate") == 250 and outcomes.count("matched") == 150
        assert join.stats(time.time()) == {"matched": 400, "duplicates": 250, "predictions_pending": 0,
                                           "labels_waiting": 1}
        assert join.window(time.time()).total == 400, "the pairs counted before the kill are still counted"
        state.close()
    finally:
        server.stop()

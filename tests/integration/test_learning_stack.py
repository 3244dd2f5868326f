"""A monitor started without a baseline learns one from its first traffic on the real Kafka,
Redis and S3, writes it to S3 in SageMaker's shapes and announces it on the baselines topic."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np
import pytest
from kafka import KafkaConsumer

from signwatch.config import Settings
from signwatch.events import BaselineEvent, InferenceOutput, Prediction
from signwatch.model import ModelSpec
from signwatch.monitoring import baseline as bl
from signwatch.monitoring.learning import learned
from signwatch.ports import open_bus
from signwatch.runtime import open_ports
from signwatch_services.monitor.server import build_loop
from tests.conftest import wait_until
from tests.unit.helpers import inference_event

pytestmark = pytest.mark.stack
SEVEN = ModelSpec(architecture="resnet18", input_size=32, class_names=tuple(f"sign-{i}" for i in range(7)),
                  version="v7")
UNEVEN = np.array([0.34, 0.24, 0.16, 0.11, 0.08, 0.05, 0.02])


def _events(endpoint: str, n: int, start: float, step: float):
    rng = np.random.default_rng(3)
    out = []
    for i, c in enumerate(rng.choice(7, n, p=UNEVEN)):
        c = int(c)
        preds = [Prediction(class_id=c, label=f"sign-{c}", probability=0.97),
                 Prediction(class_id=(c + 1) % 7, label="y", probability=0.02)]
        e = inference_event(class_id=c, endpoint=endpoint, time=datetime.fromtimestamp(start + i * step, timezone.utc))
        out.append(e.model_copy(update={"output": InferenceOutput(predictions=preds, model_version="v7"),
                                        "model_version": "v7"}))
    return out


def test_a_monitor_without_a_baseline_learns_one_and_announces_it(stack, unique):
    s3 = stack["s3"]
    name = f"learn-{unique}"
    s = Settings(bus_url=f"kafka://{stack['kafka']['bootstrap']}", state_url=stack["redis"]["url"],
                 store_url=f"s3://{s3['bucket']}?endpoint={s3['endpoint']}", s3_access_key=s3["access_key"],
                 s3_secret_key=s3["secret_key"], inference_topic=f"{name}.inference",
                 violations_topic=f"{name}.violations", baselines_topic=f"{name}.baselines", endpoint=name,
                 topic_partitions=1, monitor_group=name, monitor_learn_baseline_seconds=20,
                 monitor_learn_baseline_min_count=100)
    ports = open_ports(s)
    loop = build_loop(s, SEVEN, ports=ports)  # creates the topics, the baselines topic among them
    monitor = loop.handler.monitor
    assert monitor.baseline_source == "none" and monitor.baseline_status.startswith("learning: 0 of 100")
    events = _events(name, 150, time.time() - 30, 0.2)  # 150 predictions over 30 s of event time
    bus = open_bus(s.bus_url)
    try:
        for e in events:
            bus.publish(s.inference_topic, e.event_id, e.to_bytes())
        bus.flush(30)
    finally:
        bus.close()
    consumer = KafkaConsumer(s.baselines_topic, bootstrap_servers=stack["kafka"]["bootstrap"], group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False)
    thread = loop.start_thread()
    announced: list[BaselineEvent] = []
    try:
        def arrived():
            for records in consumer.poll(timeout_ms=200).values():
                announced.extend(BaselineEvent.model_validate_json(r.value) for r in records)
            return announced

        wait_until(arrived, 20, interval_s=0, what="the learned baseline's event on the baselines topic")
        wait_until(lambda: loop.processed >= len(events) and loop.handler.idle, 20, interval_s=0.1,
                   what="every event counted")
    finally:
        loop.stop()
        thread.join(30)
        consumer.close()
    [event] = announced
    assert monitor.baseline_source == "learned" and monitor.judge_classes
    assert event.endpoint == name and event.previous == "none" and event.model_version == "v7"
    assert 100 <= event.item_count <= 150 and (event.learned_to - event.learned_from).total_seconds() >= 20
    files = bl.read_store(ports.store, bl.store_prefix(name))
    assert files is not None and learned(files[0]) and bl.baseline_id(*files) == event.baseline_id
    baseline = bl.load(*files, n_classes=7)
    assert baseline.item_count == event.item_count and baseline.model == {"version": "v7", "num_classes": 7}
    assert not ports.state.outbox(monitor.baseline_outbox.key), "published, so out of the outbox"
    ports.close()

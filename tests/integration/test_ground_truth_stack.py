"""Issue 18 on the real Kafka, Redis and S3: ground-truth labels through all three ways in (label
files in the store, the topic, ``POST /ground-truth``) joined by two ``signwatch serve monitor``
processes, out of order, duplicated, for unknown ids; the model-quality check raising one
violation across the replicas; a replica killed (SIGKILL) while it joins labels losing none.

Every count is checked exactly against what the test sent: the join is the state store's
(``LabelJoin.stats``), each process's label outcomes its ``/metrics``.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from signwatch.config import Settings
from signwatch.events import ViolationEvent
from signwatch.model.core import load_spec
from signwatch.model.published import publish_manifest
from signwatch.monitoring import baseline as bl
from signwatch.monitoring import quality
from signwatch.monitoring.groundtruth import label_line, write_labels
from signwatch.monitoring.labels import LabelJoin
from signwatch.ports import open_bus
from signwatch.runtime import open_ports
from signwatch_services.monitor.labels import GROUP_SUFFIX
from tests.conftest import PROJECT, stop_processes, wait_until
from tests.integration.serving import endpoint_env, free_port
from tests.unit.helpers import inference_event

pytestmark = pytest.mark.stack
SPEC = load_spec()
TOKEN = "ground-truth-admin-token"
WAYS = ("file", "topic", "http")


# -- the stack and the processes ----------------------------------------------------------------
def _settings(name: str, **extra) -> Settings:
    """The test's view of the endpoint (the same environment as its monitor processes)."""
    env = endpoint_env(name, 0, **_extra(name, 0) | extra)
    return Settings(**{k[len("SIGNWATCH_"):].lower(): v for k, v in env.items()
                       if k.startswith("SIGNWATCH_") and k != "SIGNWATCH_PORT"})


def _extra(name: str, monitor_port: int) -> dict:
    return {"monitor_port": monitor_port, "monitor_group": name, "ground_truth_topic": f"{name}.ground-truth",
            "admin_token": TOKEN, "ground_truth_poll_seconds": 0.5, "topic_partitions": 3,
            # counting and joining only: no drift check (their incidents are not what is tested)
            "monitor_min_predictions": 100_000, "monitor_min_drift": 100_000}


class Monitors:
    """``signwatch serve monitor`` processes of one endpoint (one consumer group), each on its own port."""

    def __init__(self, name: str, tmp_path: Path, **settings) -> None:
        self.name, self.tmp_path, self.settings = name, tmp_path, settings
        self.procs: dict[int, subprocess.Popen] = {}  # by monitor port
        self._logs: list = []

    def start(self, n: int = 1) -> list[int]:
        ports = []
        for _ in range(n):
            port = free_port()
            env = endpoint_env(self.name, free_port(), **_extra(self.name, port) | self.settings)
            log = (self.tmp_path / f"monitor-{port}.log").open("w")
            self._logs.append(log)
            self.procs[port] = subprocess.Popen([sys.executable, "-m", "signwatch_services.cli", "serve", "monitor"],
                                                env=env, cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT)
            ports.append(port)
        wait_until(lambda: all(self._ready(p) for p in ports), 90, 0.2, f"{n} monitor process(es) ready")
        return ports

    def _ready(self, port: int) -> bool:
        proc = self.procs[port]
        assert proc.poll() is None, f"monitor on {port} exited: {self.log(port)[-3000:]}"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self, port: int) -> str:
        return (self.tmp_path / f"monitor-{port}.log").read_text()

    def kill(self, port: int) -> None:
        proc = self.procs.pop(port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def metrics(self, port: int) -> dict[tuple[str, tuple], float]:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def stop(self) -> None:
        stop_processes(*self.procs.values(), grace_s=30)
        self.procs.clear()
        for log in self._logs:
            log.close()


@contextlib.contextmanager
def monitors(name: str, tmp_path: Path, n: int, **settings):
    m = Monitors(name, tmp_path, **settings)
    try:
        m.start(n)
        yield m
    finally:
        m.stop()


def _prepare(s: Settings) -> None:
    """The endpoint's topics, and the served model's manifest in the store (as its inference
    service publishes it: the monitor reads labels by its classes)."""
    bus = open_bus(s.bus_url)
    try:
        bus.ensure_topics([s.inference_topic, s.violations_topic, s.ground_truth_topic, s.baselines_topic], 3)
    finally:
        bus.close()
    ports = open_ports(s)
    try:
        publish_manifest(ports.store, s.endpoint, SPEC)
    finally:
        ports.close()


def _groups_stable(s: Settings, members: int) -> bool:
    """Both loops' groups (the monitor's, the labels') hold ``members`` members each with a share of
    the partitions: no rebalance is due that could replay a batch while the test counts."""
    admin = KafkaAdminClient(bootstrap_servers=s.bus_url.removeprefix("kafka://"))
    try:
        groups = admin.describe_groups([s.monitor_group, s.monitor_group + GROUP_SUFFIX]).values()
        return all(g["group_state"] == "Stable" and len(g["members"]) == members
                   and all(any(a["partitions"] for a in (m["member_assignment"] or {}).get("assigned_partitions", []))
                           for m in g["members"]) for g in groups)
    finally:
        admin.close()


def _join(s: Settings) -> LabelJoin:
    from signwatch.ports import open_state

    return LabelJoin(open_state(s.state_url), s.endpoint, SPEC.num_classes, s.ground_truth_retention_seconds,
                     s.monitor_quality_window_seconds, max(1, s.monitor_quality_window_seconds // 12),
                     s.monitor_quality_last_labels, s.ground_truth_shard_chars)


def _read_violations(s: Settings) -> list[ViolationEvent]:
    """Everything on the violations topic now, up to its end offsets."""
    consumer = KafkaConsumer(bootstrap_servers=s.bus_url.removeprefix("kafka://"), group_id=None,
                             enable_auto_commit=False)
    try:
        parts = [TopicPartition(s.violations_topic, p) for p in (consumer.partitions_for_topic(s.violations_topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends, out = consumer.end_offsets(parts), []

        def done():
            for records in consumer.poll(timeout_ms=200).values():
                out.extend(ViolationEvent.model_validate_json(r.value) for r in records)
            return all(consumer.position(tp) >= ends[tp] for tp in parts)

        wait_until(done, 30, 0, f"the whole of {s.violations_topic}")
        return out
    finally:
        consumer.close()


# -- the three ways in ----------------------------------------------------------------------------
class Senders:
    """Labels ``(id, class)`` into the endpoint by one of the three ways."""

    def __init__(self, s: Settings, http_ports: list[int]) -> None:
        self.s, self.http_ports = s, http_ports
        self.bus = open_bus(s.bus_url)
        self.ports = open_ports(s)
        self.http = httpx.Client(timeout=30, headers={"Authorization": f"Bearer {TOKEN}"})
        self.calls = 0

    def send(self, way: str, labels: list[tuple[str, int]]) -> None:
        if not labels:
            return
        if way == "topic":  # SageMaker records, keyed by the id
            for i, c in labels:
                self.bus.publish(self.s.ground_truth_topic, i, label_line(i, c).encode())
            self.bus.flush(30)
        elif way == "file":  # a few files in SageMaker's layout (an hour folder of today)
            for part in np.array_split(np.arange(len(labels)), max(1, min(3, len(labels) // 100))):
                write_labels(self.ports.store, self.s.endpoint, [labels[k] for k in part], datetime.now(timezone.utc),
                             prefix=self.s.ground_truth_prefix)
        else:  # POST /ground-truth, compact records, to the replicas in turn
            for start in range(0, len(labels), 500):
                port = self.http_ports[self.calls % len(self.http_ports)]
                self.calls += 1
                body = [{"id": i, "label": c} for i, c in labels[start:start + 500]]
                r = self.http.post(f"http://127.0.0.1:{port}/ground-truth", json=body)
                assert r.status_code == 202, r.text
                assert r.json()["published"] == len(body) and not r.json()["rejected"], r.text

    def close(self) -> None:
        self.http.close()
        self.bus.close()
        self.ports.close()


def _publish_events(s: Settings, events) -> None:
    bus = open_bus(s.bus_url)
    try:
        for e in events:
            bus.publish(s.inference_topic, e.event_id, e.to_bytes())
        bus.flush(60)
    finally:
        bus.close()


def _label_outcomes(m: Monitors, endpoint: str, ports: list[int] | None = None) -> dict[str, float]:
    total: dict[str, float] = {}
    for port in ports or list(m.procs):
        for (name, labels), v in m.metrics(port).items():
            if name == "signwatch_ground_truth_labels_total" and dict(labels).get("endpoint") == endpoint:
                outcome = dict(labels)["outcome"]
                total[outcome] = total.get(outcome, 0) + v
    return total


# -- 1. three ways, out of order, duplicated, unknown: counted exactly once ---------------------------
def test_labels_by_files_topic_and_http_join_exactly_once_across_two_monitor_processes(stack, unique, tmp_path):
    started = time.monotonic()
    s = _settings(f"gt-{unique}")
    _prepare(s)
    rng = random.Random(18)
    n = 5000
    events = [inference_event(class_id=i % SPEC.num_classes, probability=0.9, endpoint=s.endpoint,
                              inference_id=f"req-{unique}-{i}" if i % 2 == 0 else None) for i in range(n)]
    labelled = rng.sample(range(n), 4500)  # 500 predictions never labelled
    with_client_id = [k for k in labelled if events[k].inference_id]
    early = set(rng.sample(with_client_id, 450))  # ~10%: before their predictions, by the client's id

    def label_of(k: int) -> tuple[str, int]:
        e = events[k]
        by_client = k in early or (e.inference_id is not None and rng.random() < 0.5)
        right = rng.random() < 0.8
        c = e.output.predictions[0].class_id
        return (e.inference_id if by_client else e.event_id), c if right else (c + 1) % SPEC.num_classes

    label = {k: label_of(k) for k in labelled}
    way = {k: WAYS[j % 3] for j, k in enumerate(rng.sample(labelled, len(labelled)))}
    # ~5% again through another way, by the same id or by the prediction's other id; 50 of them
    # before their predictions too, by both ids (one pair, one duplicate, nothing left waiting)
    duplicated = rng.sample(labelled, 225)
    both_early = set(rng.sample(sorted(early), 50))
    duplicated = [k for k in duplicated if k not in early] + sorted(both_early)

    def again(k: int) -> tuple[str, int]:
        e, (i, c) = events[k], label[k]
        if k in both_early or (e.inference_id is not None and rng.random() < 0.5):
            return (e.event_id if i == e.inference_id else e.inference_id), c
        return i, c
    unknown = [(f"ghost-{unique}-{j}", j % SPEC.num_classes) for j in range(100)]

    later: dict[str, list[tuple[str, int]]] = {w: [] for w in WAYS}
    first: dict[str, list[tuple[str, int]]] = {w: [] for w in WAYS}
    for k in labelled:
        (first if k in early else later)[way[k]].append(label[k])
    again_sent = [again(k) for k in duplicated]
    for k, item in zip(duplicated, again_sent):
        (first if k in both_early else later)[WAYS[(WAYS.index(way[k]) + 1) % 3]].append(item)
    for j, item in enumerate(unknown):
        later[WAYS[j % 3]].append(item)
    for w in WAYS:
        rng.shuffle(later[w])

    join = _join(s)
    with monitors(s.endpoint, tmp_path, 2) as m:
        ready = time.monotonic()
        wait_until(lambda: _groups_stable(s, 2), 30, 0.3, "both replicas in both groups")
        senders = Senders(s, list(m.procs))
        try:
            for w in WAYS:
                senders.send(w, first[w])
            wait_until(lambda: join.stats(time.time())["labels_waiting"] == len(early) + len(both_early), 30, 0.2,
                       f"the {len(early) + len(both_early)} early labels waiting for their predictions")
            order = events[:]
            rng.shuffle(order)
            _publish_events(s, order)
            for w in ("topic", "http", "file"):  # while the replicas count the predictions
                senders.send(w, later[w])
        finally:
            senders.close()
        sent = time.monotonic()
        want = {"matched": len(labelled), "duplicates": len(duplicated), "labels_waiting": len(unknown),
                "predictions_pending": n - len(labelled)}
        try:
            wait_until(lambda: join.stats(time.time()) == want, 45, 0.2, f"the join to hold exactly {want}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: it holds {join.stats(time.time())}") from None
        joined = time.monotonic()
        # Each label taken once by one replica: the outcomes of both processes add up to the labels
        # sent, the early ones waited (and their predictions completed the pairs), none was taken twice.
        total_sent = len(labelled) + len(duplicated) + len(unknown)
        wait_until(lambda: sum(_label_outcomes(m, s.endpoint).values()) >= total_sent, 30, 0.3,
                   "both processes' label outcomes to add up")
        time.sleep(1.0)  # a label taken twice would show now
        outcomes = _label_outcomes(m, s.endpoint)
        assert sum(outcomes.values()) == total_sent, outcomes
        # A label again by the same id is a duplicate when it is taken; by the other id, when it came
        # first of the two its prediction finds both waiting and counts the second a duplicate then.
        same_id = sum(1 for k, (i, _) in zip(duplicated, again_sent) if i == label[k][0])
        assert same_id <= outcomes.get("duplicate", 0) <= len(duplicated) - len(both_early), outcomes
        assert outcomes.get("waiting", 0) >= len(early) + len(both_early) + len(unknown), outcomes
        assert not outcomes.get("unknown_class") and not outcomes.get("other_endpoint"), outcomes
        # each label file published once, by one replica
        store_ports = open_ports(s)
        try:
            assert len(list(store_ports.store.list(f"{s.ground_truth_prefix}/{s.endpoint}/"))) >= 4, "a few files"
        finally:
            store_ports.close()
        assert join.stats(time.time()) == want  # and nothing moved since
    print(f"\n{n} predictions, {total_sent} labels (3 ways, 2 replicas): replicas ready in {ready - started:.1f} s, "
          f"all sent {sent - ready:.1f} s later, joined exactly {joined - sent:.1f} s after; "
          f"label outcomes {outcomes}")


# -- 2. the model-quality check: accuracy falls, one violation across the replicas ---------------------
def test_falling_accuracy_raises_one_model_quality_violation_across_two_replicas(stack, unique, tmp_path):
    started = time.monotonic()
    q = {"monitor_quality_min_labels": 100, "monitor_quality_last_labels": 100,
         "monitor_check_interval_seconds": 0.5}
    s = _settings(f"mq-{unique}", **q)
    _prepare(s)
    rng = np.random.default_rng(7)
    # Constraints from good metrics (95% right), with a 0.1 tolerance: accuracy under ~0.85 violates.
    t = rng.integers(0, SPEC.num_classes, 2000)
    p = np.where(rng.random(2000) < 0.95, t, (t + 1) % SPEC.num_classes)
    constraints = quality.quality_constraints(quality.multiclass_metrics(t, p, SPEC.num_classes), tolerance=0.1)
    ports = open_ports(s)
    ports.store.put(quality.constraints_key(bl.store_prefix(s.endpoint)), json.dumps(constraints).encode(),
                    "application/json")
    ports.close()
    good, bad = 300, 300
    events = [inference_event(class_id=i % SPEC.num_classes, probability=0.9, endpoint=s.endpoint)
              for i in range(good + bad)]

    def labels(part, share_right: float) -> list[tuple[str, int]]:
        out = []
        for e in part:
            c = e.output.predictions[0].class_id
            out.append((e.event_id, c if rng.random() < share_right else (c + 5) % SPEC.num_classes))
        return out

    join = _join(s)
    with monitors(s.endpoint, tmp_path, 2, **q) as m:
        wait_until(lambda: _groups_stable(s, 2), 30, 0.3, "both replicas in both groups")
        senders = Senders(s, list(m.procs))
        try:
            _publish_events(s, events)
            wait_until(lambda: join.stats(time.time())["predictions_pending"] == len(events), 30, 0.2,
                       "every prediction recorded")
            senders.send("topic", labels(events[:good], 0.95))
            wait_until(lambda: join.stats(time.time())["matched"] == good, 30, 0.2, "the good labels joined")
            # judged (both windows hold >= 100 pairs) and clear: the gauges of the replica that judged
            wait_until(lambda: any(
                m.metrics(port).get(("signwatch_monitor_quality_labels",
                                     (("endpoint", s.endpoint), ("window", "count")))) == 100 for port in m.procs),
                20, 0.3, "a replica to judge the good labels")
            assert [v for v in _read_violations(s) if v.check_name == "model_quality"] == []
            falling = time.monotonic()
            senders.send("http", labels(events[good:], 0.60))  # to both replicas in turn
            wait_until(lambda: join.stats(time.time())["matched"] == good + bad, 30, 0.2, "the bad labels joined")
            wait_until(lambda: [v for v in _read_violations(s) if v.check_name == "model_quality"], 20, 0.3,
                       "a model_quality violation")
            raised = time.monotonic()
            time.sleep(3)  # both replicas judge again (every 0.5 s): a second one would be on the topic now
        finally:
            senders.close()
    violations = [v for v in _read_violations(s) if "model_quality" in v.checks or v.check_name == "model_quality"]
    assert len(violations) == 1, [(v.state, v.check.description) for v in violations]
    [v] = violations
    assert v.state == "open" and v.check_name == "model_quality" and v.checks == ["model_quality"]
    assert v.check.feature_name in quality.METRICS and v.check.constraint_check_type == "LessThanThreshold"
    assert v.check.feature_name in v.check.description
    print(f"\nmodel_quality violation ({v.check.feature_name}: {v.check.description[:90]}...) "
          f"{raised - falling:.1f} s after the falling labels were sent; test {time.monotonic() - started:.1f} s")


# -- 3. a replica killed while it joins: no label lost, none counted twice ------------------------------
def test_a_replica_killed_while_joining_labels_loses_none(stack, unique, tmp_path):
    started = time.monotonic()
    s = _settings(f"gk-{unique}")
    _prepare(s)
    n = 3000
    events = [inference_event(class_id=i % SPEC.num_classes, probability=0.9, endpoint=s.endpoint) for i in range(n)]
    join = _join(s)
    with monitors(s.endpoint, tmp_path, 2) as m:
        wait_until(lambda: _groups_stable(s, 2), 30, 0.3, "both replicas in both groups")
        _publish_events(s, events)
        wait_until(lambda: join.stats(time.time())["predictions_pending"] == n, 30, 0.2, "every prediction recorded")
        victim = next(iter(m.procs))
        bus = open_bus(s.bus_url)
        killed_at = None
        try:
            for start in range(0, n, 100):  # a stream of labels, 100 every 50 ms
                for e in events[start:start + 100]:
                    bus.publish(s.ground_truth_topic, e.event_id,
                                label_line(e.event_id, e.output.predictions[0].class_id).encode())
                bus.flush(30)
                if killed_at is None and join.stats(time.time())["matched"] >= 300 and _label_outcomes(
                        m, s.endpoint, [victim]).get("matched", 0) > 0:  # the victim joins labels
                    m.kill(victim)  # SIGKILL: its batch joined and not committed is taken again by another
                    killed_at = join.stats(time.time())["matched"]
                    m.start(1)
                time.sleep(0.05)
        finally:
            bus.close()
        assert killed_at is not None and killed_at < n, "killed mid-stream"
        try:
            wait_until(lambda: join.stats(time.time())["matched"] == n and join.stats(time.time())[
                "predictions_pending"] == 0, 45, 0.2, f"all {n} labels matched")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: the join holds {join.stats(time.time())}") from None
        time.sleep(1.0)
        stats = join.stats(time.time())
    assert stats["matched"] == n and stats["predictions_pending"] == 0 and stats["labels_waiting"] == 0, stats
    # every duplicate is a label the killed replica had joined and not committed
    print(f"\nkilled a replica at {killed_at} of {n} labels matched; the join holds {stats} "
          f"(replays counted as duplicates); test {time.monotonic() - started:.1f} s")


def test_labels_joined_and_never_committed_are_taken_again_as_duplicates_never_counted_twice(stack, unique):
    """The crash in the narrowest place, made certain: a label loop joins labels and stops before
    its offsets are committed (its commits do nothing, then it closes); the next member of its
    group takes every one of them again, and the join counts each once (the replays as duplicates)."""
    from prometheus_client import CollectorRegistry

    from signwatch_services.monitor.server import build_label_loop, build_loop

    s = _settings(f"gc-{unique}")
    _prepare(s)
    n = 1000
    events = [inference_event(class_id=i % SPEC.num_classes, endpoint=s.endpoint) for i in range(n)]
    ports = open_ports(s)
    join = _join(s)
    threads = []
    try:
        monitor = build_loop(s, SPEC, ports=ports)
        threads.append((monitor, monitor.start_thread()))
        _publish_events(s, events)
        wait_until(lambda: join.stats(time.time())["predictions_pending"] == n, 30, 0.2, "every prediction recorded")
        bus = open_bus(s.bus_url)

        def send_labels(part) -> None:
            for e in part:
                bus.publish(s.ground_truth_topic, e.event_id,
                            label_line(e.event_id, e.output.predictions[0].class_id).encode())
            bus.flush(30)

        send_labels(events[:n // 2])

        crashing_registry = CollectorRegistry()
        crashing = build_label_loop(s, monitor, ports, crashing_registry)
        crashing._consumer = crashing.bus.consumer(crashing.topics, crashing.group)
        crashing._consumer.commit = lambda messages: None  # joined, and the offsets never reach the broker

        def joined_by_crashing() -> float:
            return crashing_registry.get_sample_value("signwatch_ground_truth_labels_total",
                                                      {"endpoint": s.endpoint, "outcome": "matched"}) or 0

        wait_until(lambda: crashing.run_once() is not None and joined_by_crashing() == n // 2, 30, 0,
                   "the crashing loop to join the first half of the labels")
        taken = joined_by_crashing()
        crashing._consumer.close()  # leaves the group with nothing committed
        assert join.stats(time.time())["matched"] == taken
        send_labels(events[n // 2:])
        bus.close()

        after = build_label_loop(s, monitor, ports, CollectorRegistry())
        threads.append((after, after.start_thread()))
        want = {"matched": n, "duplicates": taken, "predictions_pending": 0, "labels_waiting": 0}
        try:
            wait_until(lambda: join.stats(time.time()) == want, 30, 0.2, "every label taken again and joined")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: the join holds {join.stats(time.time())}") from None
        time.sleep(0.5)
        stats = join.stats(time.time())
        assert after.processed == n, "the next member took every label: none was committed"
    finally:
        for loop, thread in threads:
            loop.stop()
            thread.join(30)
        ports.close()
    assert stats == want, stats
    print(f"\n{taken:.0f} labels joined and never committed, taken again: {stats}")

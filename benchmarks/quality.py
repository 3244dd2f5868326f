"""Model quality from labels (issue 18), on the real stack: how fast labels are joined, what a
pending prediction costs in Redis, how soon a label that tips a metric becomes a violation, and
how far the label-free estimate lies from the realised accuracy per stream.

    .venv/bin/python benchmarks/quality.py --json [--labels 50000] [--cache /tmp/pools.npz]

Each figure is printed beside a baseline run side by side in the same run:
- ``join``: labels joined per second by the monitor's Redis join (``LabelJoin.add_labels``, 1,000
  a round trip) against a bare redis-py pipeline that only writes as many hash fields;
- ``label_loop``: labels per second through the real path (the topic, the monitor's label loop,
  the join, the commit) against a bare kafka-python loop that only reads the same messages;
- ``bytes_per_pending_prediction``: Redis ``used_memory`` grown per prediction waiting for its
  label, sharded (``ground_truth_shard_chars`` 3, the default) and in one hash a day (0), beside
  the bytes of the inference event it stands for;
- ``seconds_to_violation``: from publishing the label batch that tips accuracy below its
  constraint to the ``model_quality`` violation on the violations topic (monitor and label loops
  running in threads on the real Kafka and Redis), per trial;
- ``estimate_abs_error``: |label-free estimate - realised accuracy| per stream, the shipped
  estimator on the matched pairs' confidence bins (benchmarks/estimators.py compares estimators).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.unit.helpers: the events the unit tests use


def _classes() -> int:
    """The shipped model's class count (its manifest), which these streams are drawn from."""
    from signwatch.model.core import load_spec

    return load_spec().num_classes


def _stack():
    from signwatch.config import Settings
    from signwatch.stack import status

    data = status(ROOT).model_dump()
    if not all(data[k]["up"] for k in ("kafka", "redis", "s3")):
        raise SystemExit("the local stack is not running: .venv/bin/signwatch stack up")
    s3, name = data["s3"], f"bench-q-{uuid.uuid4().hex[:8]}"
    return Settings(bus_url=f"kafka://{data['kafka']['bootstrap']}", state_url=data["redis"]["url"],
                    store_url=f"s3://{s3['bucket']}?endpoint={s3['endpoint']}", s3_access_key=s3["access_key"],
                    s3_secret_key=s3["secret_key"], endpoint=name, inference_topic=f"{name}.inference",
                    violations_topic=f"{name}.violations", ground_truth_topic=f"{name}.ground-truth",
                    baselines_topic=f"{name}.baselines", monitor_group=name)


def _events(n: int, rng, right_share: float = 0.9):
    """``n`` inference events with their true classes (a share right), and one as a template."""
    from tests.unit.helpers import inference_event

    template = inference_event()
    k = _classes()
    out = []
    for _ in range(n):
        true = int(rng.integers(0, k))
        pred = true if rng.random() < right_share else int((true + 1 + rng.integers(0, k - 1)) % k)
        top = template.output.predictions[0].model_copy(update={"class_id": pred,
                                                                 "probability": float(rng.uniform(0.3, 1))})
        out.append((template.model_copy(update={"event_id": str(uuid.uuid4()), "time": datetime.now(timezone.utc),
                                                "output": template.output.model_copy(update={"predictions": [top]})}),
                    true))
    return out


def _cleanup(r, endpoint: str) -> None:
    for key in r.scan_iter(f"signwatch:*{endpoint}*", count=10_000):
        r.delete(key)


def join_rate(s, n: int) -> dict:
    import redis

    from signwatch.monitoring.labels import LabelJoin
    from signwatch.ports.state_redis import RedisState

    r = redis.Redis.from_url(s.state_url)
    state = RedisState(s.state_url)
    join = LabelJoin(state, s.endpoint, _classes(), 7 * 86_400, 3600, 300, 1000, shard_chars=3)
    events = _events(n, np.random.default_rng(1))
    for i in range(0, n, 1000):
        join.record_predictions([e for e, _ in events[i:i + 1000]], time.time())
    labels = [(e.event_id, t) for e, t in events]
    t0 = time.perf_counter()
    for i in range(0, n, 1000):
        join.add_labels(labels[i:i + 1000], time.time())
    ours = n / (time.perf_counter() - t0)
    assert join.stats(time.time())["matched"] == n, join.stats(time.time())
    key = f"bench:bare:{s.endpoint}"
    t0 = time.perf_counter()
    for i in range(0, n, 1000):
        pipe = r.pipeline(transaction=False)
        for lid, t in labels[i:i + 1000]:
            pipe.hset(key, lid, t)
        pipe.execute()
    bare = n / (time.perf_counter() - t0)
    r.delete(key)
    _cleanup(r, s.endpoint)
    return {"labels_per_s": round(ours), "bare_hset_pipeline_per_s": round(bare), "ratio": round(ours / bare, 3)}


def bytes_per_pending(s, n: int) -> dict:
    import redis

    from signwatch.monitoring.labels import LabelJoin
    from signwatch.ports.state_redis import RedisState

    r = redis.Redis.from_url(s.state_url)
    events = [e for e, _ in _events(n, np.random.default_rng(2))]
    out = {"event_bytes": len(events[0].to_bytes())}
    for shards in (3, 0):
        endpoint = f"{s.endpoint}-m{shards}"
        join = LabelJoin(RedisState(s.state_url), endpoint, _classes(), 7 * 86_400, 3600, 300, 1000, shard_chars=shards)
        r.execute_command("MEMORY", "PURGE")
        before = r.info("memory")["used_memory"]
        for i in range(0, n, 2000):
            join.record_predictions(events[i:i + 2000], time.time())
        out[f"shard_chars_{shards}"] = round((r.info("memory")["used_memory"] - before) / n, 1)
        _cleanup(r, endpoint)
    out["ratio_to_event"] = round(out["shard_chars_3"] / out["event_bytes"], 4)
    return out


def label_loop_rate(s, n: int) -> dict:
    from kafka import KafkaConsumer

    from signwatch.model.core import load_spec
    from signwatch.monitoring.groundtruth import label_line
    from signwatch.ports import open_bus
    from signwatch.runtime import open_ports
    from signwatch_services.monitor.server import build_label_loop, build_loop

    bus = open_bus(s.bus_url)
    bus.ensure_topics([s.ground_truth_topic, s.inference_topic, s.violations_topic, s.baselines_topic], 3)
    ports = open_ports(s)
    loop = build_loop(s, load_spec(), ports=ports)
    labels = build_label_loop(s, loop, ports)
    events = _events(n, np.random.default_rng(3))
    for i in range(0, n, 2000):
        loop.handler.monitor.labels.record_predictions([e for e, _ in events[i:i + 2000]], time.time())
    for e, t in events:
        bus.publish(s.ground_truth_topic, e.event_id, label_line(e.event_id, t).encode())
    bus.flush(60)
    labels.run_once()  # join the group before the clock starts
    t0 = time.perf_counter()
    while loop.handler.monitor.labels.stats(time.time())["matched"] < n and time.perf_counter() - t0 < 300:
        labels.run_once()
    ours = n / (time.perf_counter() - t0)
    matched = loop.handler.monitor.labels.stats(time.time())["matched"]
    labels.stop()
    bootstrap = s.bus_url.removeprefix("kafka://")
    consumer = KafkaConsumer(s.ground_truth_topic, bootstrap_servers=bootstrap, group_id=f"{s.endpoint}-bare",
                             auto_offset_reset="earliest", enable_auto_commit=False)
    consumer.poll(timeout_ms=1000, max_records=1)
    consumer.seek_to_beginning()
    seen, t0 = 0, time.perf_counter()
    while seen < n and time.perf_counter() - t0 < 120:
        seen += sum(len(v) for v in consumer.poll(timeout_ms=500, max_records=2000).values())
    bare = seen / (time.perf_counter() - t0)
    consumer.close()
    ports.close()
    bus.close()
    return {"labels_per_s": round(ours), "matched": matched, "bare_kafka_read_per_s": round(bare),
            "ratio": round(ours / bare, 3)}


def seconds_to_violation(s, trials: int) -> list[float]:
    from kafka import KafkaConsumer

    from signwatch.events import ViolationEvent
    from signwatch.model.core import load_spec
    from signwatch.monitoring import quality
    from signwatch.monitoring.groundtruth import label_line
    from signwatch.ports import open_bus
    from signwatch.runtime import open_ports
    from signwatch_services.monitor.server import build_label_loop, build_loop

    out = []
    for trial in range(trials):
        t = s.model_copy(update={k: f"{getattr(s, k)}-{trial}" for k in (
            "endpoint", "inference_topic", "violations_topic", "ground_truth_topic", "baselines_topic",
            "monitor_group")} | {"monitor_quality_min_labels": 200, "monitor_quality_last_labels": 300})
        bus = open_bus(t.bus_url)
        bus.ensure_topics([t.ground_truth_topic, t.inference_topic, t.violations_topic, t.baselines_topic], 3)
        ports = open_ports(t)
        loop = build_loop(t, load_spec(), ports=ports)
        monitor = loop.handler.monitor
        good, bad = _events(400, np.random.default_rng(10 + trial), 0.95), _events(400, np.random.default_rng(20 + trial), 0.5)
        y = [(e.output.predictions[0].class_id, tr) for e, tr in good]
        constraints = quality.quality_constraints(
            quality.multiclass_metrics([tr for _, tr in y], [p for p, _ in y], _classes()), tolerance=0.1)
        ports.store.put(quality.constraints_key(monitor.baseline_prefix), json.dumps(constraints).encode(),
                        "application/json")
        monitor.labels.record_predictions([e for e, _ in good + bad], time.time())
        monitor.labels.add_labels([(e.event_id, tr) for e, tr in good], time.time())
        labels = build_label_loop(t, loop, ports)
        threads = [loop.start_thread(), labels.start_thread()]
        watcher = KafkaConsumer(t.violations_topic, bootstrap_servers=t.bus_url.removeprefix("kafka://"),
                                group_id=f"{t.endpoint}-watch", auto_offset_reset="earliest")
        watcher.poll(timeout_ms=1000)
        time.sleep(1.5)  # the good labels judged clear first (constraints read, no incident)
        t0 = time.perf_counter()
        for e, tr in bad:  # the batch that tips accuracy (to ~0.72 over the last 300) below ~0.85
            bus.publish(t.ground_truth_topic, e.event_id, label_line(e.event_id, tr).encode())
        bus.flush(30)
        took = None
        while took is None and time.perf_counter() - t0 < 60:
            for records in watcher.poll(timeout_ms=200).values():
                for r in records:
                    v = ViolationEvent.model_validate_json(r.value)
                    if v.check_name == "model_quality" and v.state == "open":
                        took = time.perf_counter() - t0
        out.append(round(took, 2) if took is not None else None)
        labels.stop()
        loop.stop()
        for th in threads:
            th.join(30)
        watcher.close()
        ports.close()
        bus.close()
    return out


def estimate_errors(cache: Path | None) -> dict:
    """|estimate - realised| per stream, the shipped estimator over the pairs' confidence bins."""
    from signwatch.monitoring import baseline as bl
    from signwatch.monitoring.features import N_BINS, bin_of
    from signwatch.monitoring.labels import LabelledWindow
    from signwatch.monitoring.model_quality import estimate_from_bins

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from estimators import load_pools  # beside this file: the same streams, cached alike

    pools, _ = load_pools(cache, progress=True)
    k = _classes()
    baseline = bl.load(*bl.shipped_files(), n_classes=k)
    out = {}
    for stream, (ids, probs, truth) in pools.items():
        pred = ids[:, 0]
        confusion = np.zeros((k, k), dtype=np.int64)
        np.add.at(confusion, (truth, pred), 1)
        bins = np.bincount([bin_of(float(p)) for p in probs[:, 0]], minlength=N_BINS)
        right = np.bincount([bin_of(float(p)) for p, ok in zip(probs[:, 0], pred == truth) if ok], minlength=N_BINS)
        w = LabelledWindow(confusion, bins, right)
        est = estimate_from_bins(w, baseline)
        out[stream] = {"realised": round(w.accuracy, 4), "estimate": round(est, 4),
                       "abs_error": round(abs(est - w.accuracy), 4)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--labels", type=int, default=50_000, help="labels joined for the rates")
    ap.add_argument("--trials", type=int, default=3, help="trials of seconds_to_violation")
    ap.add_argument("--cache", type=Path, help="the streams' model outputs (benchmarks/estimators.py's cache)")
    args = ap.parse_args(argv)
    if args.labels < 1000 or args.trials < 1:
        ap.error("--labels must be >= 1000 and --trials >= 1")
    s = _stack()
    figures = {
        "join": join_rate(s, args.labels),
        "label_loop": label_loop_rate(s, min(args.labels, 20_000)),
        "bytes_per_pending_prediction": bytes_per_pending(s, 100_000),
        "seconds_to_violation": seconds_to_violation(s, args.trials),
        "estimate_abs_error": estimate_errors(args.cache),
    }
    print(json.dumps(figures, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How fast the monitor is and how soon it notices, one run, figures against their bars:

(a) events per second from Kafka through the checks (the monitor service's loop on the real
    Kafka, Redis and S3), against the inference peak measured in the same run (bare PyTorch
    batch-32 forward passes of the shipped model on ready tensors: an upper bound of what the
    inference service can serve, so the ratio is conservative);
(b) on a simulated clock (in-memory state, the production check cadence): after one hour of
    clean traffic at 1 request per second, the seconds from the start of a shift to its first
    violation (attacked: 96% of requests attacked into Stop; snow, night, fog: every image), and
    the false alarms during 24 simulated hours of clean traffic; beside them the label-free
    accuracy estimate against the true accuracy of each shift;
(c) on the real stack, the latency from the event that tips a check (the violation's
    ``tipped_at``: a Stop prediction on a fresh endpoint state at 10 requests per second) to the
    violation arriving on the topic (p50, p95).

(d) the sequential checks (benchmarks/monitor_sequential.py) on streams with GTSRB's own class
    mix: predictions to detect each shift against its information limit, beside Frouros' CUSUM
    and the window checks on the same streams, and their false alarms in 24 clean hours at 1
    and 2 requests a second (``sequential`` in the output; ``--sequential-only`` runs just that).

(e) what people reading the alerts see (benchmarks/monitor_incidents.py), on the same simulated
    clock and class mix, with the default config and ``sequential=True``: the violations that one
    hour-long partial shift opens (``violations_per_incident``, goal 1) and those that bursts of
    200 frames of one sign in 10 s open on a quiet endpoint, beside the same count of attacked
    images of different signs, which must be caught (``burst_false_alarms``, goal 0);
    ``--incidents-only`` runs just these two (a few minutes on two cores).

    .venv/bin/python benchmarks/monitor.py [--json] [--hours 24] [--trials 15] [--events 5000]
                                           [--sequential-trials 5] [--sequential-only]
                                           [--incident-trials 1] [--incidents-only] [--cache F]

``--cache F`` keeps the model's outputs (the pools, and the bursts' predictions and image hashes)
in one .npz between runs; what it lacks is computed and added.

Streams resample the shipped model's real outputs on rendered test images (signwatch.monitoring.streams).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
try:
    import signwatch  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "shared"))

from tqdm import tqdm  # noqa: E402

from signwatch.model.core import load_spec  # noqa: E402
from signwatch.monitoring import Monitor, MonitorConfig  # noqa: E402
from signwatch.monitoring import baseline as bl  # noqa: E402
from signwatch.monitoring.streams import event_from, model_pools  # noqa: E402
from signwatch.ports.state_memory import MemoryState  # noqa: E402
from signwatch.ports.store_file import FileStore  # noqa: E402
from signwatch.publishing import make_input_payload  # noqa: E402

SPEC = load_spec()  # the shipped model's manifest: the pools are its outputs
NAMES = SPEC.class_names
SHIFTS = ("attacked", "snow", "night", "fog")


def _payload():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return make_input_payload(buf.getvalue(), "image/png")


class SimClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _sim_monitor(tmp: Path, clock: SimClock) -> Monitor:
    # The pools are rendered signs with uniform classes: what the shipped baseline describes, so it
    # may judge their class shares too (on a road's traffic it never does unless asked).
    config = MonitorConfig(endpoint="bench", snapshot_interval_s=60.0, shipped_class_checks=True)
    return Monitor(MemoryState(clock=clock), FileStore(tmp), config, NAMES, clock=clock)


def _draw(pools, shift, rng):
    kind = shift
    if shift == "attacked" and rng.random() >= 0.96:
        kind = "clean"
    return pools[kind], int(rng.integers(len(pools[kind][0])))


def seconds_to_detect(pools, tmp: Path, payload, seed: int = 0, warmup_s: int = 3600, limit_s: int = 600) -> dict:
    out = {}
    for k, shift in enumerate(SHIFTS):
        clock = SimClock(1_800_000_000.0)
        m = _sim_monitor(tmp / f"detect-{shift}", clock)
        rng = np.random.default_rng(seed + k)
        false = 0
        for _ in tqdm(range(warmup_s), desc=f"1 h clean before {shift}", leave=False):
            clock.t += 1
            false += len(m.observe(event_from(*_draw(pools, "clean", rng), "bench", clock.t, payload)))
        start, found = clock.t, None
        for _ in range(limit_s):
            clock.t += 1
            raised = m.observe(event_from(*_draw(pools, shift, rng), "bench", clock.t, payload))
            if raised:
                found = {"seconds": round(clock.t - start, 1), "check": raised[0].check_name,
                         "description": raised[0].check.description, "false_alarms_in_warmup": false}
                break
        out[shift] = found or {"seconds": None, "false_alarms_in_warmup": false}
    return out


def false_alarms(pools, tmp: Path, payload, hours: float, seed: int = 99) -> tuple[int, list[str]]:
    clock = SimClock(1_800_000_000.0)
    m = _sim_monitor(tmp / "false", clock)
    rng = np.random.default_rng(seed)
    raised = []
    for _ in tqdm(range(int(hours * 3600)), desc=f"{hours:g} h of clean traffic", unit="event"):
        clock.t += 1
        raised += [v for v in m.observe(event_from(*_draw(pools, "clean", rng), "bench", clock.t, payload))
                   if v.state == "open"]
    return len(raised), [v.check.description for v in raised[:5]]


def accuracy_estimates(pools) -> dict:
    """The true accuracy per stream beside the estimate the monitor reports (the shipped
    baseline's calibration table: ``estimate.from_bins``), ATC alone and the mean confidence."""
    from signwatch.monitoring import estimate
    from signwatch.monitoring.features import N_BINS, bin_of

    b = bl.load(*bl.shipped_files(), n_classes=len(NAMES))
    out = {}
    for shift, (ids, probs, labels) in pools.items():
        bins = np.bincount([bin_of(float(p)) for p in probs[:, 0]], minlength=N_BINS)
        out[shift] = {"true_accuracy": round(float((ids[:, 0] == labels).mean()), 4),
                      "estimate": round(estimate.from_bins(bins, b.bin_accuracy, b.atc_bin), 4),
                      "atc_estimate": round(estimate.from_bins(bins, None, b.atc_bin), 4),
                      "average_confidence": round(float(probs[:, 0].mean()), 4)}
    return out


def inference_peak(seconds: float = 5.0) -> float:
    import torch

    from signwatch.model import load_model

    model, spec = load_model()
    x = torch.randn(32, 3, spec.input_size, spec.input_size)
    n, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        model(x)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model(x)
            n += len(x)
    return n / (time.perf_counter() - t0)


def _stack_settings(tag: str):
    from signwatch.config import Settings
    from signwatch.stack import status

    st = status(ROOT)
    data = st.model_dump() if hasattr(st, "model_dump") else st
    if not all(data[k]["up"] for k in ("kafka", "redis", "s3")):
        return None
    s3 = data["s3"]
    name = f"bench-{tag}-{uuid.uuid4().hex[:8]}"
    return Settings(bus_url=f"kafka://{data['kafka']['bootstrap']}", state_url=data["redis"]["url"],
                    store_url=f"s3://{s3['bucket']}?endpoint={s3['endpoint']}", s3_access_key=s3["access_key"],
                    s3_secret_key=s3["secret_key"], inference_topic=f"{name}.inference",
                    violations_topic=f"{name}.violations", endpoint=name, monitor_group=name)


def monitor_events_per_s(pools, payload, n: int) -> float | None:
    from signwatch.ports import open_bus
    from signwatch.runtime import open_ports
    from signwatch_services.monitor.server import build_loop

    s = _stack_settings("rate")
    if s is None:
        return None
    rng = np.random.default_rng(1)
    now = time.time()
    bus = open_bus(s.bus_url)
    bus.ensure_topics([s.inference_topic, s.violations_topic], 3)
    for i in range(n):
        e = event_from(*_draw(pools, "clean", rng), s.endpoint, now - n / 20 + i / 20, payload)
        bus.publish(s.inference_topic, e.event_id, e.to_bytes())
    bus.flush(60)
    bus.close()
    ports = open_ports(s)
    loop = build_loop(s, SPEC, ports=ports)
    loop.run_once()  # join the group and take the first batch before the clock starts
    first = loop.processed
    t0 = time.perf_counter()
    while loop.processed < n and time.perf_counter() - t0 < 300:
        loop.run_once()
    rate = (loop.processed - first) / (time.perf_counter() - t0)
    loop.stop()
    ports.close()
    return rate


def _opened(consumer) -> list:
    from signwatch.events import ViolationEvent

    got = [ViolationEvent.model_validate_json(r.value) for rs in consumer.poll(timeout_ms=100).values() for r in rs]
    return [v for v in got if v.state == "open"]


def detection_latency(pools, payload, trials: int) -> list[float] | None:
    import redis
    from kafka import KafkaConsumer

    from signwatch.events import ViolationEvent
    from signwatch.ports import open_bus
    from signwatch.runtime import open_ports
    from signwatch_services.monitor.server import build_loop

    s = _stack_settings("latency")
    if s is None:
        return None
    bus = open_bus(s.bus_url)
    bus.ensure_topics([s.inference_topic, s.violations_topic], 3)
    ports = open_ports(s)
    loop = build_loop(s, SPEC, ports=ports)
    thread = loop.start_thread()
    consumer = KafkaConsumer(s.violations_topic, bootstrap_servers=s.bus_url[len("kafka://"):], group_id=None,
                             auto_offset_reset="latest", enable_auto_commit=False)
    consumer.poll(timeout_ms=2000)
    warm = event_from(pools["clean"], 0, "someone-else", time.time(), payload)  # wait for the group to form
    bus.publish(s.inference_topic, warm.event_id, warm.to_bytes())
    bus.flush(10)
    deadline = time.time() + 60
    while loop.processed < 1 and time.time() < deadline:
        time.sleep(0.1)
    rds = redis.Redis.from_url(s.state_url)
    stop_pool = (np.array([[14, 1, 2, 3, 4]]), np.array([[0.99, 0.004, 0.003, 0.002, 0.001]]))
    latencies = []
    try:
        for _ in tqdm(range(trials), desc="tip -> violation on the topic", leave=False):
            for key in rds.scan_iter(f"signwatch:*:{s.endpoint}*"):  # a fresh endpoint state each trial
                if b":alive:" not in key:
                    rds.delete(key)
            loop.handler.monitor._last_check = float("-inf")
            hit: list[ViolationEvent] = []
            for i in range(25):  # at most: the sequential checks tip well before over-prediction's 20th
                e = event_from(stop_pool, 0, s.endpoint, time.time(), payload)
                bus.publish(s.inference_topic, e.event_id, e.to_bytes())
                bus.flush(10)
                time.sleep(0.1)
                hit = _opened(consumer)
                if hit:
                    break
            deadline = time.time() + 20
            while not hit and time.time() < deadline:
                hit = _opened(consumer)
            if hit:  # from the tipping event's time (its creation, here) to the violation's arrival
                latencies.append(time.time() - hit[0].tipped_at.timestamp())
    finally:
        loop.stop()
        thread.join(30)
        consumer.close()
        ports.close()
        bus.close()
    return latencies


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--hours", type=float, default=24.0, help="simulated hours of clean traffic")
    ap.add_argument("--trials", type=int, default=15)
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--cache", type=Path, help="keep the model's output pools in this .npz between runs")
    ap.add_argument("--sequential-trials", type=int, default=5,
                    help="streams per shift for the sequential checks and their peer (monitor_sequential.py)")
    ap.add_argument("--baseline-hours", type=float, default=1.0,
                    help="clean hours the sequential checks' baseline is suggested from (3: what the monitor "
                         "learns by itself, SIGNWATCH_MONITOR_LEARN_BASELINE_SECONDS)")
    ap.add_argument("--sequential-only", action="store_true",
                    help="only the sequential checks, their information limits and the Frouros CUSUM peer")
    ap.add_argument("--incident-trials", type=int, default=1,
                    help="streams per hour-long partial shift for violations_per_incident (monitor_incidents.py)")
    ap.add_argument("--incidents-only", action="store_true",
                    help="only violations_per_incident and burst_false_alarms")
    args = ap.parse_args(argv)
    if args.hours <= 0 or args.trials < 1 or args.events < 100 or args.incident_trials < 1 or args.baseline_hours <= 0:
        ap.error("--hours and --baseline-hours must be > 0, --trials >= 1, --events >= 100, --incident-trials >= 1")
    import tempfile

    from monitor_incidents import burst_inputs, incident_figures  # benchmarks/, beside this file
    from monitor_sequential import sequential_figures

    payload = _payload()
    cached = dict(np.load(args.cache)) if args.cache and args.cache.exists() else {}
    fresh = {}
    if not all(f"{k}_{n}" in cached for k in ("clean", *SHIFTS) for n in ("ids", "probs", "labels")):
        pools = model_pools({"clean": 2000, "attacked": 64, "snow": 500, "night": 500, "fog": 500},
                            progress=not args.json)
        fresh |= {f"{k}_{n}": a for k, p in pools.items() for n, a in zip(("ids", "probs", "labels"), p)}
    bursts = {k: a for k, a in cached.items() if k.startswith("burst")}
    if not bursts and not args.sequential_only:
        bursts = burst_inputs(progress=not args.json)
        fresh |= bursts
    if args.cache and fresh:
        np.savez(args.cache, **(cached | fresh))
    z = cached | fresh
    pools = {k: (z[f"{k}_ids"], z[f"{k}_probs"], z[f"{k}_labels"]) for k in ("clean", *SHIFTS)}

    if args.incidents_only:
        with tempfile.TemporaryDirectory() as tmp:
            result = incident_figures(pools, NAMES, bursts, payload, Path(tmp), args.incident_trials,
                                      progress=not args.json)
        print(json.dumps(result) if args.json else json.dumps(result, indent=1))
        return 0
    if args.sequential_only:
        with tempfile.TemporaryDirectory() as tmp:
            result = {"sequential": sequential_figures(pools, args.sequential_trials, args.hours, payload=payload,
                                                       tmp=Path(tmp), progress=not args.json,
                                                       baseline_s=args.baseline_hours * 3600)}
        print(json.dumps(result) if args.json else json.dumps(result, indent=1))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        sequential = sequential_figures(pools, args.sequential_trials, args.hours, payload=payload,
                                        tmp=Path(tmp) / "sequential", progress=not args.json,
                                        baseline_s=args.baseline_hours * 3600)
        peak = inference_peak()
        rate = monitor_events_per_s(pools, payload, args.events)
        detect = seconds_to_detect(pools, Path(tmp), payload)
        alarms, examples = false_alarms(pools, Path(tmp), payload, args.hours)
        latencies = detection_latency(pools, payload, args.trials)
        incidents = incident_figures(pools, NAMES, bursts, payload, Path(tmp) / "incidents", args.incident_trials,
                                     progress=not args.json)
    lat = sorted(latencies or [])
    result = {
        "inference_peak_images_per_s": round(peak, 1),
        "monitor_events_per_s": round(rate, 1) if rate else None,
        "monitor_vs_inference_ratio": round(rate / peak, 2) if rate else None,
        "seconds_to_detect": {k: v["seconds"] for k, v in detect.items()},
        "detected_by": {k: v.get("check") for k, v in detect.items()},
        "false_alarms_24h": alarms if args.hours == 24 else round(alarms * 24 / args.hours, 2),
        "false_alarm_examples": examples,
        "simulated_hours": args.hours,
        "detection_latency_p50_s": round(statistics.median(lat), 3) if lat else None,
        "detection_latency_p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3) if lat else None,
        "latency_trials": len(lat),
        "accuracy_estimates": accuracy_estimates(pools),
        "sequential": sequential,
        "violations_per_incident": incidents["violations_per_incident"],
        "burst_false_alarms": incidents["burst_false_alarms"],
        "bars": {"attacked_s": 30, "drift_s": 120, "false_alarms_24h": 0, "ratio": 5, "latency_p95_s": 2},
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>30}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

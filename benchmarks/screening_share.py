"""Requests until the monitor's ``adversarial_share`` check fires, and its false alarms (issue 20).

    .venv/bin/python benchmarks/screening_share.py [--trials 20] [--days 1] [--json]

Simulated screened streams through the real ``Monitor`` (``add_screening`` and ``tick`` on a
simulated clock, one request a second): each request's score is drawn from the shipped model's
measured scores per condition (``benchmarks/data/screening_scores.json``: score / threshold of 400
renders a condition, and of 120 attacked images per attack, every one, successful or not).

- ``requests_to_detect``: after one hour of clean traffic, requests from the start of an attack
  (a share of PGD 16/255 images among clean ones) to the check's first violation, median over
  ``--trials`` streams (and each trial's figure);
- ``false_alarms``: the sequential view's alarms in ``--days`` simulated days of clean traffic,
  and of weather (a day alternating clean, snow, night and fog by the hour, and a day of night
  alone after an hour of clean), the detector on its own (the monitor's windows add nothing to a
  day of events but time). The window view's alpha is the one the other window tests use.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
try:
    import signwatch  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "shared"))

from signwatch.events import ScreeningEvent  # noqa: E402
from signwatch.model import ModelSpec  # noqa: E402
from signwatch.monitoring import Monitor, MonitorConfig, registry  # noqa: E402
from signwatch.monitoring.screening_sequential import SEQUENTIAL_PART, ScreeningDetector  # noqa: E402
from signwatch.ports.state_memory import MemoryState  # noqa: E402
from signwatch.ports.store_file import FileStore  # noqa: E402

SCORES = json.loads((ROOT / "benchmarks" / "data" / "screening_scores.json").read_text())
T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def event(i: int, ratio: float, t: float, fpr: float = 0.01) -> ScreeningEvent:
    when = datetime.fromtimestamp(t, timezone.utc)
    return ScreeningEvent(event_id=f"e{i}", inference_time=when, time=when, endpoint="ep", variant="AllTraffic",
                          model_version="sim", score=ratio, flagged=ratio >= 1.0, threshold=1.0, fpr=fpr,
                          squeezer="shift:1", signal="margin_drop", predicted_class=14, probability=0.9)


def draw(rng, mix: dict[str, float]) -> float:
    pool = rng.choice(list(mix), p=list(mix.values()))
    return float(rng.choice(SCORES[pool]))


def requests_to_detect(share: float, seed: int, clean_s: int = 3600, limit: int = 2000,
                       attack: str = "pgd_16") -> int | None:
    clock, rng = Clock(), np.random.default_rng(seed)
    monitor = Monitor(MemoryState(clock=clock), FileStore(Path(tempfile.mkdtemp(prefix="sw-share-"))), MonitorConfig(endpoint="ep", learn_baseline_s=0),
                      ModelSpec().class_names, clock=clock, wall_clock=clock)
    for i in range(clean_s + limit):
        clock.t += 1
        attacked = i >= clean_s
        mix = {"clean": 1 - share, attack: share} if attacked else {"clean": 1.0}
        monitor.add_screening([event(i, draw(rng, mix), clock.t)])
        if [v for v in monitor.tick() if v.check_name == "adversarial_share"]:
            if not attacked:
                raise AssertionError(f"false alarm in the clean hour (seed {seed})")
            return i - clean_s + 1
    return None


def alarms(hours: list[dict[str, float]], seed: int) -> int:
    """The sequential view's alarms over ``hours`` (one mix an hour, one request a second)."""
    share = registry.shares(("window", "sequential", "screening"))["adversarial_share"] * SEQUENTIAL_PART
    d, rng, t, n = ScreeningDetector(0.01, share), np.random.default_rng(seed), T0, 0
    for mix in hours:
        for ratio in (draw(rng, mix) for _ in range(3600)):
            t += 1
            d.update(ratio, 1.0, t)
            n += d.alarmed
            d.alarmed = False
    return n


def run(trials: int, days: int) -> dict:
    out = {"requests_to_detect": {}, "requests_to_detect_trials": {}, "attack": "pgd_16 (every attacked image)",
           "clean_history_s": 3600, "requests_per_second": 1.0}
    for share in (0.10, 0.25):
        found = [requests_to_detect(share, seed) for seed in range(trials)]
        out["requests_to_detect_trials"][str(share)] = found
        hit = [f for f in found if f is not None]
        out["requests_to_detect"][str(share)] = statistics.median(hit) if len(hit) == len(found) else None
    found = [requests_to_detect(0.10, seed, attack="pgd_8") for seed in range(trials)]
    out["requests_to_detect_pgd_8_0.1"] = statistics.median(f for f in found if f is not None)
    clean = [{"clean": 1.0}] * 24
    weather = [{"clean": 1.0}] + [{c: 1.0} for c in ("snow", "night", "fog", "clean")] * 6 + [{"clean": 1.0}] * 0
    night = [{"clean": 1.0}] + [{"night": 1.0}] * 23
    out["false_alarms"] = {name: sum(alarms(h, 100 + d) for d in range(days)) for name, h in
                           (("clean", clean), ("weather_by_hour", weather[:24]), ("night_after_clean", night))}
    out["days"] = days
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    out = run(args.trials, args.days)
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

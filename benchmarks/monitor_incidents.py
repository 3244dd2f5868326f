"""Alert storms and correlated frames, for benchmarks/monitor.py (issue 17: what people reading the
alerts see). On the simulated clock (in-memory state), on streams with GTSRB's own uneven class mix
(``monitor_sequential.Pools``), the Monitor given a baseline suggested from an hour of that clean
traffic (``monitor_sequential.suggested_baseline``), with the default config (window and
sequential checks) and with the window checks alone (``MonitorConfig(sequential=False)``):

- ``violations_per_incident``: at 1 request a second, one hour of clean traffic, then an hour-long
  partial shift (10% attacked, 25% snowy, foggy or night images), then 30 minutes of clean
  traffic. Per shift: the violations opened from the shift's start to its end (one incident: the
  goal is 1) and their checks (a violation's ``checks``, when it names several, else its
  ``check_name``), those opened in the 30 clean minutes after, and ``resolved_after_shift_s``: the
  seconds from the shift's end to the resolution of the last of the shift's violations (negative:
  all of them resolved before the shift ended; null: one was still open 30 minutes after it).
- ``burst_false_alarms``: a quiet endpoint (0.2 clean requests a second for 30 minutes), then a
  burst of one sign as a passing car sends it: 200 frames in 10 s of one rendered scene
  (``data.burst.passing_frames``), each classified by the shipped model and hashed as the serving
  core hashes the pixels it decoded (``imaging.perceptual_hash``), so the monitor's track folding
  applies; the clean traffic goes on through the burst and 5 minutes after it. The violations
  opened from the burst's start to then (goal 0), beside the same count of attacked images of
  different signs (the streams' attacked recipe: targeted PGD into Stop on 200 rendered test
  images, whose first 64 are the attacked pool's), sent at the same rate with their own hashes:
  they must be caught (``attacked_events_to_detect``: attacked events sent when the first
  violation opened). A control runs the bursts with track folding off (``control_tracks_off``):
  what they raise when every frame counts, so that a 0 above shows the folding, not a lull.

The clean traffic's events carry no image hash (the pools keep predictions, not images): they are
never folded, as distinct images would not be.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from monitor_sequential import T0, Pools, pick_pool, suggested_baseline
from signwatch.monitoring import Monitor, MonitorConfig
from signwatch.monitoring.streams import ATTACK_EPS, ATTACK_STEPS, event_from
from signwatch.ports.state_memory import MemoryState
from signwatch.ports.store_file import FileStore

PARTIAL_SHIFTS: dict[str, dict[str, float]] = {
    "attack_10pct": {"attacked": 0.10}, "snow_25pct": {"snow": 0.25},
    "fog_25pct": {"fog": 0.25}, "night_25pct": {"night": 0.25},
}
CONFIGS: dict[str, dict] = {"default": {}, "window_only": {"sequential": False}}
TRACKS_OFF = {"track_window_s": 0.0}  # the bursts' control: every frame counts, as before track folding
WARMUP_S, SHIFT_S, AFTER_S = 3600, 3600, 1800
# Bursts: signs as a passing car sends them, on a quiet endpoint
BURST_CLASSES = (38, 14, 2, 13, 12)  # Keep right, Stop, Speed limit (50km/h), Yield, Priority road
BURST_FRAMES, BURST_S, QUIET_RATE, QUIET_S, BURST_AFTER_S = 200, 10.0, 0.2, 1800, 300
ATTACK_SEED = 4242  # streams.model_pools' seed: the attacked pool's images are the first 64 of these


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _monitor(tmp: Path, clock: _Clock, baseline, names: tuple[str, ...], config: dict) -> Monitor:
    cfg = MonitorConfig(endpoint="bench", snapshot_interval_s=60.0, **config)
    return Monitor(MemoryState(clock=clock), FileStore(tmp), cfg, names, baseline=baseline, clock=clock)


def _checks_of(v) -> str:
    """A violation's checks: the list an incident names (``checks``, when the event has one), else its check."""
    many = getattr(v, "checks", None)
    if not many:
        return v.check_name
    return "+".join(str(getattr(c, "check_name", None) or getattr(c, "name", None) or c) for c in many)


# -- violations per incident -------------------------------------------------------------------
def _phases(p: Pools, plan: dict[str, float], seed: int, rate: float = 1.0) -> list[tuple[str, int, float]]:
    """[(pool, index, event time)]: WARMUP_S clean, SHIFT_S of ``plan``, AFTER_S clean."""
    rng = np.random.default_rng(seed)
    n_warm, n_shift, n_after = (int(s * rate) for s in (WARMUP_S, SHIFT_S, AFTER_S))
    kinds = ["clean"] * n_warm
    kinds += [pick_pool(plan, rng.random()) for _ in range(n_shift)]
    kinds += ["clean"] * n_after
    # sorted: a set's order of strings changes from process to process, the draws must not
    index = {k: iter(p.draw(k, rng, kinds.count(k))) for k in sorted(set(kinds))}
    return [(k, int(next(index[k])), T0 + (n + 1) / rate) for n, k in enumerate(kinds)]


def incident_run(p: Pools, baseline, names, plan: dict[str, float], config: dict, seed: int, tmp: Path,
                 payload) -> dict:
    rows = _phases(p, plan, seed)
    start, end = T0 + WARMUP_S, T0 + WARMUP_S + SHIFT_S
    clock = _Clock(T0)
    m = _monitor(tmp, clock, baseline, names, config)
    opened: dict[str, str] = {}     # violation id -> checks, opened during the shift
    resolved: dict[str, float] = {}  # violation id -> when it resolved
    warmup = after = 0
    for kind, i, ts in rows:
        clock.t = ts
        for v in m.observe(event_from(p.raw[kind], i, "bench", ts, payload)):
            if v.state == "open":
                if ts <= start:
                    warmup += 1
                elif ts <= end:
                    opened[v.violation_id] = _checks_of(v)
                else:
                    after += 1
            elif v.violation_id in opened:
                resolved[v.violation_id] = ts
    last = max(resolved.values()) - end if opened and len(resolved) == len(opened) else None
    return {"violations": len(opened), "checks": list(opened.values()),
            "resolved_after_shift_s": round(last, 1) if last is not None else None,
            "violations_after_shift": after, "false_alarms_in_warmup": warmup}


def violations_per_incident(p: Pools, baseline, names, payload, tmp: Path, trials: int = 1,
                            progress: bool = False) -> dict:
    t0 = time.perf_counter()
    out: dict = {}
    bar = _bar(len(CONFIGS) * len(PARTIAL_SHIFTS) * trials, "hour-long partial shifts", progress)
    for cname, config in CONFIGS.items():
        out[cname] = {}
        for number, (shift, plan) in enumerate(PARTIAL_SHIFTS.items()):
            runs = []
            for trial in range(trials):
                runs.append(incident_run(p, baseline, names, plan, config, 500 + 1000 * trial + number,
                                         tmp / f"incident-{cname}-{shift}-{trial}", payload))
                bar.update(1)
            out[cname][shift] = runs[0] | (
                {"violations_each": [r["violations"] for r in runs],
                 "violations_median": statistics.median(r["violations"] for r in runs)} if trials > 1 else {})
    bar.close()
    return out | {"requests_per_s": 1.0, "warmup_s": WARMUP_S, "shift_s": SHIFT_S, "after_s": AFTER_S,
                  "trials": trials, "goal": 1, "wall_s": round(time.perf_counter() - t0, 1)}


# -- bursts of one-object frames -------------------------------------------------------------
def burst_inputs(progress: bool = False) -> dict[str, np.ndarray]:
    """The shipped model's top-5 and the perceptual hashes of each burst's frames and of the
    attacked images: ``burst{class}_ids/_probs/_hashes``, ``burstattacked_ids/_probs/_hashes``."""
    import torch

    from signwatch.attacks import pgd
    from signwatch.data.burst import passing_frames
    from signwatch.data.render import render_array
    from signwatch.imaging import perceptual_hash
    from signwatch.model import load_model
    from signwatch.model.core import to_unit_tensor
    from signwatch.monitoring.reference import predict_top

    model, spec = load_model()
    sets = {str(c): passing_frames(c, BURST_FRAMES, seed=c, size=spec.input_size) for c in BURST_CLASSES}
    images, _ = render_array(BURST_FRAMES, seed=ATTACK_SEED + 1, split="test", size=spec.input_size,
                             progress=progress)
    with torch.enable_grad():
        result = pgd(model, spec, to_unit_tensor(list(images), spec.input_size), target=14, eps=ATTACK_EPS,
                     steps=ATTACK_STEPS, seed=ATTACK_SEED, batch_size=64, quantize_result=True, progress=progress)
    sets["attacked"] = (result.adversarial.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    out = {}
    for name, frames in sets.items():
        ids, probs = predict_top(model, spec, frames)
        out |= {f"burst{name}_ids": ids, f"burst{name}_probs": probs,
                f"burst{name}_hashes": np.array([perceptual_hash(f) for f in frames])}
    return out


def burst_run(p: Pools, baseline, names, frames: tuple[np.ndarray, np.ndarray, np.ndarray], config: dict,
              seed: int, tmp: Path, payload) -> dict:
    """A quiet endpoint, then ``frames`` (top-5 ids, probabilities, hashes) within BURST_S."""
    rng = np.random.default_rng(seed)
    n_quiet = int((QUIET_S + BURST_S + BURST_AFTER_S) * QUIET_RATE)
    start = T0 + QUIET_S
    rows = [(T0 + (k + 1) / QUIET_RATE, "clean", int(i)) for k, i in enumerate(p.draw("clean", rng, n_quiet))]
    rows += [(start + j * BURST_S / len(frames[0]), "burst", j) for j in range(len(frames[0]))]
    rows.sort(key=lambda r: r[0])
    clock = _Clock(T0)
    m = _monitor(tmp, clock, baseline, names, config)
    folded = [0]
    m.on_folded = lambda by, n: folded.__setitem__(0, folded[0] + n)
    raised: list[str] = []
    quiet, sent, first = 0, 0, None
    for ts, kind, i in rows:
        clock.t = ts
        if kind == "burst":
            event = event_from(frames, i, "bench", ts, payload).model_copy(update={"image_hash": str(frames[2][i])})
            sent += 1
        else:
            event = event_from(p.raw["clean"], i, "bench", ts, payload)
        for v in m.observe(event):
            if v.state != "open":
                continue
            if ts < start:
                quiet += 1
                continue
            raised.append(_checks_of(v))
            first = sent if first is None else first
    return {"violations": len(raised), "checks": raised, "events_to_first": first, "folded": folded[0],
            "false_alarms_before": quiet}


def burst_false_alarms(p: Pools, baseline, names, inputs: dict[str, np.ndarray], payload, tmp: Path,
                       progress: bool = False) -> dict:
    t0 = time.perf_counter()
    out: dict = {}
    bar = _bar((len(CONFIGS) + 1) * (len(BURST_CLASSES) + 1) - 1, "bursts on a quiet endpoint", progress)

    def frames(name: str):
        return tuple(inputs[f"burst{name}_{k}"] for k in ("ids", "probs", "hashes"))

    for cname, config in CONFIGS.items():
        by_class = {}
        for c in BURST_CLASSES:
            ids = frames(str(c))[0]
            r = burst_run(p, baseline, names, frames(str(c)), config, 700 + c, tmp / f"burst-{cname}-{c}", payload)
            by_class[names[c]] = {"violations": r["violations"], "checks": r["checks"], "folded": r["folded"],
                                  "predicted": {names[k]: int(n) for k, n in
                                                zip(*np.unique(ids[:, 0], return_counts=True))},
                                  "false_alarms_before": r["false_alarms_before"]}
            bar.update(1)
        a = burst_run(p, baseline, names, frames("attacked"), config, 799, tmp / f"burst-{cname}-attacked", payload)
        bar.update(1)
        a_ids, a_hashes = frames("attacked")[0], frames("attacked")[2]
        out[cname] = {"burst_violations": sum(r["violations"] for r in by_class.values()),
                      "attacked_detected": a["violations"] > 0, "attacked_events_to_detect": a["events_to_first"],
                      "attacked_checks": a["checks"], "attacked_folded": a["folded"],
                      "attacked_into_stop": round(float((a_ids[:, 0] == 14).mean()), 3),
                      "attacked_distinct_hashes": len(set(a_hashes.tolist())), "by_class": by_class}
    control = {}
    for c in BURST_CLASSES:
        r = burst_run(p, baseline, names, frames(str(c)), TRACKS_OFF, 700 + c, tmp / f"burst-off-{c}", payload)
        control[names[c]] = r["violations"]
        bar.update(1)
    out["control_tracks_off"] = {"burst_violations": sum(control.values()), "by_class": control}
    bar.close()
    return out | {"frames": BURST_FRAMES, "burst_s": BURST_S, "quiet_requests_per_s": QUIET_RATE, "quiet_s": QUIET_S,
                  "after_s": BURST_AFTER_S, "goal_burst_violations": 0, "wall_s": round(time.perf_counter() - t0, 1)}


def incident_figures(pools: dict, names: tuple[str, ...], burst: dict[str, np.ndarray], payload, tmp: Path,
                     trials: int = 1, progress: bool = False) -> dict:
    p = Pools(pools)
    b = suggested_baseline(p)
    return {"violations_per_incident": violations_per_incident(p, b, names, payload, tmp, trials, progress),
            "burst_false_alarms": burst_false_alarms(p, b, names, burst, payload, tmp, progress)}


def _bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False)

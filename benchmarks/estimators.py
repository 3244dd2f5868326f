"""Label-free accuracy estimates side by side: how far each is from the true accuracy of the
shipped model on the clean, snow, night and fog test streams of the rendered (look-alike) signs.

Every estimator sees only what the monitor has: a window's counts (top-1 confidence bins, margin
bins, the sum of confidences) and what a baseline can store, learned on the labelled calibration
data: the shipped baseline's own reference set (rendered clean signs, split val, seed 2026,
4,300 images) and, for the estimators that learn under shift, 1,000 snowy, night and foggy renders
of the same split and seed (what ``signwatch baseline suggest`` renders beside it). The test
streams (split test, seed 4242) are never calibrated on; the ``_loo`` rows also leave the
evaluated stream's own weather out of the calibration, the honest figure for a shift never seen.

    .venv/bin/python benchmarks/estimators.py [--json] [--cache F]

``--cache F`` keeps the model's outputs (the test pools under monitor.py's keys, so its cache
serves, and the calibration set under ``calib_*``) in one .npz; what it lacks is computed and added.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
try:
    import signwatch  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "shared"))

from signwatch.monitoring import estimate as est  # noqa: E402
from signwatch.monitoring.checks import estimated_accuracy  # noqa: E402
from signwatch.monitoring.features import N_BINS, bin_of  # noqa: E402

STREAMS = ("clean", "snow", "night", "fog")
POOL_SIZES = {"clean": 2000, "snow": 500, "night": 500, "fog": 500}  # as benchmarks/monitor.py
# the shipped baseline's reference set (``signwatch baseline suggest``'s defaults)
CALIB_COUNT, CALIB_SEED, CALIB_SPLIT = 4300, 2026, "val"
WEATHER, WEATHER_COUNT = ("snow", "night", "fog"), 1000
FIELDS = ("ids", "probs", "labels")


def calibration_pools(progress: bool, variants: tuple[str, ...]) -> dict[str, tuple]:
    from signwatch.data.render import render_array
    from signwatch.model import load_model
    from signwatch.monitoring.reference import predict_top

    model, spec = load_model()
    out = {}
    for v in variants:
        n = CALIB_COUNT if v == "clean" else WEATHER_COUNT
        images, labels = render_array(n, seed=CALIB_SEED, split=CALIB_SPLIT, size=spec.input_size, variant=v,
                                      progress=progress)
        out[v] = (*predict_top(model, spec, images, progress=progress), labels)
    return out


def _calib_key(v: str, field: str) -> str:
    return f"calib_{field}" if v == "clean" else f"calib_{v}_{field}"


def load_pools(cache: Path | None, progress: bool) -> tuple[dict, dict]:
    """(test pools by stream, calibration pools by variant), from the cache where it has them."""
    from signwatch.monitoring.streams import model_pools

    cached = dict(np.load(cache)) if cache and cache.exists() else {}
    fresh = {}
    if not all(f"{k}_{n}" in cached for k in STREAMS for n in FIELDS):
        pools = model_pools(POOL_SIZES, progress=progress)
        fresh |= {f"{k}_{n}": a for k, p in pools.items() for n, a in zip(FIELDS, p)}
    missing = tuple(v for v in ("clean", *WEATHER) if not all(_calib_key(v, n) in cached for n in FIELDS))
    if missing:
        fresh |= {_calib_key(v, n): a for v, p in calibration_pools(progress, missing).items()
                  for n, a in zip(FIELDS, p)}
    if cache and fresh:
        np.savez(cache, **(cached | fresh))
    z = cached | fresh
    return ({k: tuple(z[f"{k}_{n}"] for n in FIELDS) for k in STREAMS},
            {v: tuple(z[_calib_key(v, n)] for n in FIELDS) for v in ("clean", *WEATHER)})


class Counts:
    """What the monitor keeps of a set of predictions (and, for calibration, whether each was right)."""

    def __init__(self, ids: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> None:
        self.conf_bins = np.array([bin_of(p) for p in probs[:, 0]])
        self.margin_bins = np.array([bin_of(p) for p in probs[:, 0] - probs[:, 1]])
        self.right = ids[:, 0] == labels
        self.confidence_counts = np.bincount(self.conf_bins, minlength=N_BINS)
        self.margin_counts = np.bincount(self.margin_bins, minlength=N_BINS)
        self.confidence_sum = float(probs[:, 0].sum())
        self.n = len(labels)

    @property
    def accuracy(self) -> float:
        return float(self.right.mean())

    @property
    def mean_confidence(self) -> float:
        return self.confidence_sum / self.n


def _atc_bin(sets: list[Counts]) -> int:
    """ATC's threshold bin over calibration sets weighing the same: the share at or above it
    equals their accuracy (baseline._atc_bin, for several sets)."""
    accuracy = np.mean([s.accuracy for s in sets])
    shares = np.mean([np.cumsum(s.confidence_counts[::-1])[::-1] / s.n for s in sets], axis=0)
    return int(np.argmin(np.abs(shares - accuracy)))


def estimators(calib: dict[str, Counts], held_out: str | None) -> dict:
    """Every estimator, each a function of a window's Counts, learned on ``calib`` (the clean
    reference, and weather sets except ``held_out``)."""
    ref = calib["clean"]
    shifted = [calib["clean"]] + [calib[v] for v in WEATHER if v != held_out]
    binned_clean = est.bin_accuracy([(ref.conf_bins, ref.right)])
    margin_clean = est.bin_accuracy([(ref.margin_bins, ref.right)])
    binned_shifted = est.bin_accuracy([(s.conf_bins, s.right) for s in shifted])
    atc_clean, atc_shifted = _atc_bin([ref]), _atc_bin(shifted)
    return {
        "atc": lambda w: est.from_bins(w.confidence_counts, None, atc_clean),
        "average_confidence": lambda w: w.mean_confidence,
        "doc": lambda w: ref.accuracy - (ref.mean_confidence - w.mean_confidence),
        "binned_clean": lambda w: est.from_bins(w.confidence_counts, binned_clean, None),
        "binned_margin_clean": lambda w: est.from_bins(w.margin_counts, margin_clean, None),
        "atc_shifted": lambda w: est.from_bins(w.confidence_counts, None, atc_shifted),
        "binned_shifted": lambda w: est.from_bins(w.confidence_counts, binned_shifted, None),
    }


LEAVE_ONE_OUT = ("atc_shifted", "binned_shifted")  # learned on weather: also measured without the stream's own


def shipped_estimate(w: Counts) -> float | None:
    """What the monitor reports for this window with the shipped baseline (checks.estimated_accuracy)."""
    from signwatch.model.core import load_spec
    from signwatch.monitoring import baseline as bl
    from signwatch.monitoring.checks import WindowCounts

    n_classes = load_spec().num_classes  # the shipped model's: the pools are its outputs
    b = bl.load(*bl.shipped_files(), n_classes=n_classes)
    window = WindowCounts("time", w.n, np.zeros(n_classes), w.confidence_counts, w.margin_counts, 0,
                          w.confidence_sum)
    return estimated_accuracy(window, b)


def measure(pools: dict, calib_pools: dict) -> dict:
    calib = {v: Counts(*p) for v, p in calib_pools.items()}
    every = estimators(calib, None) | {"shipped": shipped_estimate}
    out = {}
    for stream in STREAMS:
        w = Counts(*pools[stream])
        row = {"true_accuracy": round(w.accuracy, 4), "n": w.n}
        for name, f in every.items():
            row[name] = round(f(w), 4)
        if stream in WEATHER:
            loo = estimators(calib, stream)
            for name in LEAVE_ONE_OUT:
                row[f"{name}_loo"] = round(loo[name](w), 4)
        else:
            for name in LEAVE_ONE_OUT:
                row[f"{name}_loo"] = row[name]
        out[stream] = row
    names = [k for k in out["clean"] if k not in ("true_accuracy", "n")]
    worst = {k: round(max(abs(out[s][k] - out[s]["true_accuracy"]) for s in STREAMS), 4) for k in names}
    return {"streams": out, "max_abs_error": worst, "within_5_points": [k for k, v in worst.items() if v <= 0.05],
            "atc_bin": _atc_bin([calib["clean"]])}


def print_table(result: dict) -> None:
    streams = result["streams"]
    names = list(result["max_abs_error"])
    print(f"{'estimate':<22}" + "".join(f"{s:>16}" for s in STREAMS) + f"{'max |error|':>13}")
    print(f"{'true accuracy':<22}" + "".join(f"{streams[s]['true_accuracy']:>16.3f}" for s in STREAMS))
    for k in names:
        cells = "".join(f"{streams[s][k]:>8.3f} ({streams[s][k] - streams[s]['true_accuracy']:+.3f})"
                        for s in STREAMS)
        print(f"{k:<22}{cells}{result['max_abs_error'][k]:>13.3f}")
    print(f"within 5 points on all four: {result['within_5_points'] or 'none'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--cache", type=Path, help="keep the model's outputs in this .npz between runs")
    args = ap.parse_args(argv)
    pools, calib_pools = load_pools(args.cache, progress=not args.json)
    result = measure(pools, calib_pools)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

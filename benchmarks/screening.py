"""How well does screening tell adversarial images from clean ones, and what does it cost?

    .venv/bin/python benchmarks/screening.py [--images 100] [--reference 200] [--seed 11] [--json]

Shipped model, look-alike renders at the model's input size. The thresholds are chosen on
``--reference`` clean images of the ``val`` split (at 1% and 5% false positives); everything else
is ``--images`` images of the ``test`` split: clean, snow, night and fog for the false positive
rates, and the clean ones attacked (target Stop, 8-bit rounded as the service sees them; images
whose true class is Stop left out): PGD 8/255 and 16/255 (20 steps), FGSM 8/255, DeepFool (L2,
minimal; another family than the L-infinity sign methods) and the adaptive attacker (PGD 16/255
through the input and the detector's squeezed copies, He et al. 2017). Detection rates are
among the attacked images that reach Stop (``detection_rate_at_1pct_fpr``) and among all attacked
images (``..._all``); ROC AUC is the successful attacked images against the clean reference
(sklearn.metrics.roc_auc_score). Two detectors side by side: ``margin_drop`` (shipped) and Xu et
al.'s ``feature_squeezing`` (softmax L1 under 5-bit depth, 2x2 and 3x3 median). The cost is one
screened batch against one bare forward of the same batch (eager model, batch 64). Figures in
docs/attacks.md, "Screening".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
try:
    import signwatch  # noqa: F401
except ImportError:  # running from a checkout that was not pip-installed
    sys.path.insert(0, str(ROOT / "shared"))

try:
    from sklearn.metrics import roc_auc_score
    AUC_METHOD = "sklearn.metrics.roc_auc_score"
except ImportError:  # scikit-learn is not a dependency of signwatch: the same figure from ranks
    AUC_METHOD = "numpy (Mann-Whitney U over ranks, ties halved)"

    def roc_auc_score(y_true, y_score) -> float:
        y_true, y_score = np.asarray(y_true, bool), np.asarray(y_score, float)
        pos, neg = y_score[y_true], y_score[~y_true]
        greater = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
        return float(greater / (len(pos) * len(neg)))

from signwatch.attacks import deepfool, fgsm, pgd  # noqa: E402
from signwatch.data import render  # noqa: E402
from signwatch.data.variants import VARIANTS  # noqa: E402
from signwatch.model import load_model, normalize  # noqa: E402
from signwatch.model.core import to_unit_tensor  # noqa: E402
from signwatch.screening import DEFAULT_SQUEEZERS, XU_SQUEEZERS, Screener, calibrate  # noqa: E402
from signwatch.screening.adaptive import adaptive_pgd  # noqa: E402
from signwatch.screening.detector import raw_signal  # noqa: E402

DETECTORS = {"margin_drop": ("margin_drop", DEFAULT_SQUEEZERS), "feature_squeezing": ("softmax_l1", XU_SQUEEZERS)}
SHIPPED = "margin_drop"
STOP = 14


def rendered(count: int, seed: int, split: str, variant: str, size: int) -> tuple[torch.Tensor, np.ndarray]:
    images, labels = render.render_array(count, seed=seed, split=split, size=size, variant=variant, workers=2,
                                         progress=False)
    return to_unit_tensor(images, size), labels


def attacks(model, spec, x: torch.Tensor, steps: int) -> dict:
    return {
        "pgd_8": lambda: pgd(model, spec, x, eps=8 / 255, steps=steps, quantize_result=True),
        "pgd_16": lambda: pgd(model, spec, x, eps=16 / 255, steps=steps, quantize_result=True),
        "fgsm_8": lambda: fgsm(model, spec, x, eps=8 / 255, quantize_result=True),
        "deepfool_l2": lambda: deepfool(model, spec, x, quantize_result=True),
        "adaptive_pgd_16": lambda: adaptive_pgd(model, spec, x, DEFAULT_SQUEEZERS, eps=16 / 255, steps=steps),
    }


class Scorer:
    """Every detector's raw signals from one measurement per image set (the squeezers' union)."""

    def __init__(self, model, spec) -> None:
        names = tuple(dict.fromkeys(DEFAULT_SQUEEZERS + XU_SQUEEZERS))
        self.screener = Screener(model, spec, squeezers=names)
        self.index = {n: i for i, n in enumerate(names)}

    def raw(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        signals = [self.screener.measure(x[i:i + 256]) for i in range(0, len(x), 256)]
        out = {}
        for detector, (signal, squeezers) in DETECTORS.items():
            rows = [self.index[n] for n in squeezers]
            out[detector] = np.concatenate([raw_signal(s, signal).cpu().numpy()[rows] for s in signals], axis=1)
        return out


def rate(flags: np.ndarray) -> float | None:
    return round(float(flags.mean()), 4) if len(flags) else None


def cost_ratio(model, spec, batch: torch.Tensor, repeats: int = 5) -> dict:
    screener = Screener(model, spec)
    calibration = screener.calibrate(batch)
    bare, screened = [], []
    with torch.inference_mode():
        model(normalize(batch, spec))  # warm-up
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.inference_mode():
            model(normalize(batch, spec).contiguous(memory_format=torch.channels_last))
        bare.append(time.perf_counter() - start)
        start = time.perf_counter()
        screener.screen(batch, calibration)
        screened.append(time.perf_counter() - start)
    b, s = statistics.median(bare), statistics.median(screened)
    return {"batch": len(batch), "bare_forward_ms_per_image": round(1000 * b / len(batch), 3),
            "screened_ms_per_image": round(1000 * s / len(batch), 3), "ratio": round(s / b, 2)}


def run(args) -> dict:
    model, spec = load_model()
    model = model.float().eval()
    size = spec.input_size
    scorer = Scorer(model, spec)
    reference, _ = rendered(args.reference, args.seed, "val", "clean", size)
    ref_raw = scorer.raw(reference)
    calibrations = {d: {fpr: calibrate(ref_raw[d], *DETECTORS[d], fpr=fpr, model_version=spec.version)
                        for fpr in (0.01, 0.05)} for d in DETECTORS}
    ref_scores = {d: calibrations[d][0.01].score(ref_raw[d]) for d in DETECTORS}

    conditions, clean, labels = {}, None, None
    for variant in VARIANTS:
        x, y = rendered(args.images, args.seed, "test", variant, size)
        conditions[variant] = scorer.raw(x)
        if variant == "clean":
            clean, labels = x, y
    keep = labels != STOP  # a Stop sign "attacked" towards Stop is no attack
    x_attack = clean[torch.from_numpy(keep)]

    out = {"model": spec.version, "images": args.images, "reference": args.reference, "seed": args.seed,
           "steps": args.steps, "device": "cpu", "threads": torch.get_num_threads(),
           "shipped_detector": SHIPPED, "auc_method": AUC_METHOD,
           "calibration": calibrations[SHIPPED][0.01].to_json(), "detectors": {}}
    per = {d: {"detection_rate_at_1pct_fpr": {}, "detection_rate_at_5pct_fpr": {},
               "detection_rate_at_1pct_fpr_all": {}, "detection_rate_at_5pct_fpr_all": {}, "roc_auc": {},
               "false_positive_rate": {}, "false_positive_rate_at_5pct": {}} for d in DETECTORS}
    for d in DETECTORS:
        for variant, raw in conditions.items():
            for fpr, key in ((0.01, "false_positive_rate"), (0.05, "false_positive_rate_at_5pct")):
                cal = calibrations[d][fpr]
                per[d][key][variant] = rate(cal.flag(cal.score(raw[d])))
    success_rates, timings = {}, {}
    for name, attack in attacks(model, spec, x_attack, args.steps).items():
        started = time.perf_counter()
        result = attack()
        timings[name] = round(time.perf_counter() - started, 1)
        success = result.success.cpu().numpy()
        success_rates[name] = {"success_rate": rate(success), "attacked": int(len(success))}
        raw = scorer.raw(result.adversarial)
        for d in DETECTORS:
            for fpr, key in ((0.01, "1pct"), (0.05, "5pct")):
                cal = calibrations[d][fpr]
                flags = cal.flag(cal.score(raw[d]))
                per[d][f"detection_rate_at_{key}_fpr"][name] = rate(flags[success])
                per[d][f"detection_rate_at_{key}_fpr_all"][name] = rate(flags)
            scores = calibrations[d][0.01].score(raw[d])[success]
            per[d]["roc_auc"][name] = (round(float(roc_auc_score(
                np.r_[np.zeros(len(ref_scores[d])), np.ones(len(scores))], np.r_[ref_scores[d], scores])), 4)
                if len(scores) else None)
    for d in DETECTORS:
        per[d]["adaptive_detection_rate"] = per[d]["detection_rate_at_1pct_fpr"].pop("adaptive_pgd_16")
        for key in ("detection_rate_at_5pct_fpr", "detection_rate_at_1pct_fpr_all", "detection_rate_at_5pct_fpr_all",
                    "roc_auc"):
            per[d][f"adaptive_{key}"] = per[d][key].pop("adaptive_pgd_16")
    out["detectors"] = per
    out |= {key: per[SHIPPED][key] for key in ("detection_rate_at_1pct_fpr", "detection_rate_at_5pct_fpr",
                                                  "roc_auc", "false_positive_rate", "adaptive_detection_rate")}
    out["attacks"] = success_rates
    out["attack_seconds"] = timings
    out["cost"] = cost_ratio(model, spec, clean[:64])
    out["cost_ratio"] = out["cost"]["ratio"]
    # the requests until the monitor's adversarial_share check fires at 10% and 25% attacked traffic
    # after an hour of clean history (benchmarks/screening_share.py: simulated streams through the
    # real Monitor, scores drawn from the shipped model's measured ones per condition)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from screening_share import run as share_run
    out["requests_to_detect"] = share_run(trials=10, days=0)["requests_to_detect"]
    return out


def describe(out: dict) -> str:
    lines = [f"model {out['model']}, {out['images']} test images per set, {out['reference']} clean reference"]
    for d, per in out["detectors"].items():
        lines.append(f"{d}:")
        lines.append("  false positives at the 1% threshold: " + ", ".join(
            f"{k} {v:.1%}" for k, v in per["false_positive_rate"].items()))
        for name, r in per["detection_rate_at_1pct_fpr"].items():
            if r is None:
                lines.append(f"  {name:<12} no attacked image reached Stop")
                continue
            lines.append(f"  {name:<12} flagged {r:.1%} at 1% FPR, "
                         f"{per['detection_rate_at_5pct_fpr'][name]:.1%} at 5%; AUC {per['roc_auc'][name]}")
        lines.append(f"  adaptive PGD 16/255 flagged: {per['adaptive_detection_rate']}")
    lines.append(f"attack success: {json.dumps(out['attacks'])}")
    lines.append(f"cost: {out['cost']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="test images per condition (attacked: the clean ones)")
    parser.add_argument("--reference", type=int, default=None, help="clean reference images (default 2x --images)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--steps", type=int, default=20, help="PGD steps (plain and adaptive)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    args.reference = args.reference or 2 * args.images
    if min(args.images, args.reference, args.steps) < 1 or args.reference < 100:
        parser.error("--images and --steps must be at least 1, --reference at least 100 (a 1% quantile)")
    torch.set_num_threads(2)
    out = run(args)
    print(json.dumps(out) if args.json else describe(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

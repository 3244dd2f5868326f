"""How hard is it to make the model say "Stop"? Targeted PGD success against the L-infinity budget,
and what in the training recipe moves it.

    .venv/bin/python benchmarks/attack_robustness.py curve [--eps 8 10 12 14 16] [--count 300] [--json]
    .venv/bin/python benchmarks/attack_robustness.py lever --size 64 --camera full|pristine [--json]

``curve`` attacks the shipped model (rendered test images, targeted PGD, 20 steps, 8-bit rounded
as the service sees them) at each budget (in grey levels, eps = N/255) and prints the success rate
among the images it classified correctly (true class other than Stop).

``lever`` trains a ResNet18 from scratch with the project's recipe (AdamW, one-cycle, shift/scale
jitter) on a small rendered pool (``--pool`` images, ``--epochs``), at ``--size`` pixels, with the
road camera's effects on (``full``: low resolution, defocus, sensor noise, JPEG, as the shipped
model saw them) or off (``pristine``), then reports its clean accuracy and the same PGD success at
8/255. Run it twice with one setting changed to see that setting's effect side by side; each run
is 7 minutes (64 px) to 23 minutes (128 px) on two CPU cores. Figures in docs/attacks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
try:
    import signwatch  # noqa: F401
except ImportError:  # running from a checkout that was not pip-installed
    sys.path.insert(0, str(ROOT / "shared"))

from signwatch.attacks import pgd  # noqa: E402
from signwatch.data import render, scene  # noqa: E402
from signwatch.model import ModelSpec, load_model, normalize  # noqa: E402
from signwatch.model.core import build_model, to_unit_tensor  # noqa: E402
from signwatch.model.train import jitter, to_batch  # noqa: E402

STOP = 14
TEST_SEED = 4242  # never used in training


def test_images(count: int, seed: int, size: int) -> tuple[torch.Tensor, np.ndarray]:
    arr, labels = render.render_array(count, seed=seed, split="test", size=size, workers=2, progress=False)
    return to_unit_tensor(arr, size), labels


def predict(model: torch.nn.Module, spec: ModelSpec, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(normalize(x[i:i + 250], spec)).argmax(1) for i in range(0, len(x), 250)]).numpy()


def success_on_correct(model, spec, x, labels, eps: float, steps: int) -> tuple[float, int]:
    """PGD success among the images the model got right whose true class is not already Stop
    (0.0 of 0 when it got none right: an untrained model)."""
    ok = (predict(model, spec, x) == labels) & (labels != STOP)
    if not ok.any():
        return 0.0, 0
    result = pgd(model, spec, x, target=STOP, eps=eps, steps=steps, quantize_result=True)
    return float(result.success.numpy()[ok].mean()), int(ok.sum())


def curve(args) -> dict:
    model, spec = load_model()
    model = model.float()
    x, labels = test_images(args.count, args.seed, spec.input_size)
    rows = []
    for levels in args.eps:
        rate, n = success_on_correct(model, spec, x, labels, levels / 255, args.steps)
        rows.append({"eps_levels": levels, "success_rate_on_correct": round(rate, 4), "correct": n})
        if not args.json:
            print(f"eps {levels:>2}/255, PGD {args.steps} steps: {rate:6.1%} of {n} correctly classified images reach Stop")
    return {"model": spec.version, "steps": args.steps, "count": args.count, "seed": args.seed, "rows": rows}


@contextlib.contextmanager
def camera_effects_off():
    """Renders inside this block skip every camera effect (low resolution, blur, motion, noise,
    JPEG) while drawing the same random numbers. The render workers fork from this process, so
    they inherit the patch; the training-pool cache is not used here, so nothing stale is saved."""
    sample = scene.sample_camera

    def pristine(rng: np.random.Generator, n: int) -> scene.Camera:
        return dataclasses.replace(sample(rng, n), lowres=1.0, blur=0.0, motion=(0.0, 0.0), noise=0.0, jpeg=0)

    scene.sample_camera = pristine
    try:
        yield
    finally:
        scene.sample_camera = sample


def lever(args) -> dict:
    torch.manual_seed(0)
    spec = ModelSpec(input_size=args.size)
    with camera_effects_off() if args.camera == "pristine" else contextlib.nullcontext():
        images, labels = render.render_array(args.pool, seed=123, split="train", size=args.size, workers=2,
                                             progress=not args.json)
    # The project's recipe (signwatch.model.train), inlined: train() would cache a pristine pool
    # under the name of the normal one.
    model = build_model(spec.num_classes, seed=0).train()
    steps = math.ceil(args.pool / 128) * args.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    gen, order_rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    started = time.time()
    for epoch in range(args.epochs):
        order = order_rng.permutation(args.pool)
        for i in range(0, args.pool, 128):
            idx = order[i:i + 128]
            loss = F.cross_entropy(model(jitter(to_batch(images[idx], spec, torch.device("cpu")), gen)),
                                   torch.from_numpy(labels[idx]).long())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if not args.json:
            print(f"epoch {epoch + 1}/{args.epochs}: loss {float(loss.detach()):.3f}", flush=True)
    model.eval()
    x, y = test_images(args.count, TEST_SEED, args.size)
    accuracy = float((predict(model, spec, x) == y).mean())
    attacked = min(args.count, 300)
    rate, n = success_on_correct(model, spec, x[:attacked], y[:attacked], 8 / 255, 20)
    out = {"size": args.size, "camera": args.camera, "pool": args.pool, "epochs": args.epochs,
           "train_seconds": round(time.time() - started, 1), "clean_accuracy": round(accuracy, 4),
           "pgd8_success_rate_on_correct": round(rate, 4), "correct": n}
    if not args.json:
        print(f"{args.size} px, camera {args.camera}: accuracy {accuracy:.1%}, "
              f"PGD 8/255 reaches Stop on {rate:.1%} of {n}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("curve", help="success against the budget, shipped model")
    c.add_argument("--eps", type=int, nargs="+", default=[8, 10, 12, 14, 16], help="budgets in grey levels")
    c.add_argument("--count", type=int, default=300)
    c.add_argument("--seed", type=int, default=11)
    c.add_argument("--steps", type=int, default=20)
    lv = sub.add_parser("lever", help="train a small model with one setting changed, then attack it")
    lv.add_argument("--size", type=int, default=64)
    lv.add_argument("--camera", choices=["full", "pristine"], default="full")
    lv.add_argument("--pool", type=int, default=8000)
    lv.add_argument("--epochs", type=int, default=4)
    lv.add_argument("--count", type=int, default=1000, help="test images for accuracy (the first 300 are attacked)")
    for p in (c, lv):
        p.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if min([args.count, getattr(args, "pool", 1), getattr(args, "epochs", 1)]) < 1:
        parser.error("--count, --pool and --epochs must be at least 1")
    if not 32 <= getattr(args, "size", 64) <= 512:
        parser.error("--size must be between 32 and 512 pixels")
    if args.command == "curve" and not all(1 <= e <= 255 for e in args.eps):
        parser.error("--eps takes budgets in grey levels, whole numbers from 1 to 255")
    torch.set_num_threads(2)
    result = curve(args) if args.command == "curve" else lever(args)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

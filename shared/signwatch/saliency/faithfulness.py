"""How faithful is a saliency map? Pixel-perturbation tests (Srinivas & Fleuret 2019, sec. 5.1;
Petsiuk et al.'s deletion curve), comparing methods on the same images and targets.

- remove the *least* salient k% of pixels: a faithful map barely changes the target score
  (``least_removed_change``, lower is better);
- remove the *most* salient k%: a faithful map makes the score fall (``most_removed_drop``,
  higher is better);
- delete the most salient pixels step by step and integrate the target probability over the
  fraction deleted (``deletion_auc``, lower is better).

"Removing" a pixel replaces it, in all channels, by the image's mean colour, so the replaced
region carries no edge or texture. Ties (a flat random map, Grad-CAM's upsampled blocks) are
broken at random so that every method removes exactly k% of the pixels.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from signwatch.saliency.fullgrad import fullgrad
from signwatch.saliency.gradcam import gradcam
from signwatch.saliency.gradients import input_x_gradient

Method = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
FRACTIONS = (0.05, 0.1, 0.2, 0.3)
DELETION_STEPS = 20


def random_map(model: torch.nn.Module, images: torch.Tensor, target: torch.Tensor,
               seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((images.shape[0], 1, *images.shape[-2:]), generator=gen).to(images.device)


METHODS: dict[str, Method] = {
    "fullgrad": lambda m, x, t: fullgrad(m, x, t, check_completeness=False).maps,
    "input_x_gradient": input_x_gradient,
    "gradcam": gradcam,
    "random": random_map,
}


def _ranks(maps: torch.Tensor, seed: int) -> torch.Tensor:
    """Pixel order per sample, most salient first, ties broken at random."""
    flat = maps.flatten(1).double()
    gen = torch.Generator().manual_seed(seed)
    jitter = torch.rand(flat.shape, generator=gen, dtype=torch.float64).to(flat.device) * 1e-9
    return (flat + jitter * flat.abs().amax(1, keepdim=True).clamp_min(1e-12)).argsort(1, descending=True)


def _remove(images: torch.Tensor, order: torch.Tensor, count: int) -> torch.Tensor:
    b, c, h, w = images.shape
    mask = torch.zeros((b, h * w), dtype=torch.bool, device=images.device)
    if count:
        mask.scatter_(1, order[:, :count], True)
    mask = mask.view(b, 1, h, w)
    fill = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    return torch.where(mask, fill, images)


@torch.no_grad()
def _prob(model: torch.nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model(images), 1).gather(1, target[:, None])[:, 0]


def evaluate_maps(model: torch.nn.Module, images: torch.Tensor, target: torch.Tensor,
                  maps: torch.Tensor, seed: int = 0) -> dict:
    model.eval()
    n_pixels = images.shape[-1] * images.shape[-2]
    before = _prob(model, images, target)
    order = _ranks(maps, seed)
    least, most = {}, {}
    for k in FRACTIONS:
        count = int(round(k * n_pixels))
        after_least = _prob(model, _remove(images, order.flip(1), count), target)
        after_most = _prob(model, _remove(images, order, count), target)
        least[str(k)] = float(((after_least - before).abs() / before).mean())
        most[str(k)] = float(((before - after_most) / before).mean())
    curve = [float(before.mean())]
    for step in range(1, DELETION_STEPS + 1):
        count = int(round(step / DELETION_STEPS * n_pixels))
        curve.append(float(_prob(model, _remove(images, order, count), target).mean()))
    auc = float(np.trapezoid(curve, dx=1 / DELETION_STEPS))
    return {"least_removed_change": least, "most_removed_drop": most, "deletion_auc": round(auc, 4),
            "deletion_curve": [round(v, 4) for v in curve]}


def compare(model: torch.nn.Module, images: torch.Tensor, target: torch.Tensor | None = None,
            methods: dict[str, Method] | None = None, batch_size: int = 32, seed: int = 0) -> dict:
    """The table: one row per method, averaged over batches of ``images`` (normalised input)."""
    methods = methods or METHODS
    model.eval()
    if target is None:
        with torch.no_grad():
            target = torch.cat([model(images[i:i + batch_size]).argmax(1)
                                for i in range(0, len(images), batch_size)])
    table = {}
    for name, method in methods.items():
        parts = []
        for i in range(0, len(images), batch_size):
            x, t = images[i:i + batch_size], target[i:i + batch_size]
            parts.append((len(x), evaluate_maps(model, x, t, method(model, x, t).detach(), seed + i)))
        table[name] = _weighted_mean(parts)
    return table


def _weighted_mean(parts: list[tuple[int, dict]]) -> dict:
    total = sum(n for n, _ in parts)

    def avg(getter):
        return round(sum(n * getter(r) for n, r in parts) / total, 4)

    first = parts[0][1]
    return {
        "least_removed_change": {k: avg(lambda r, k=k: r["least_removed_change"][k]) for k in first["least_removed_change"]},
        "most_removed_drop": {k: avg(lambda r, k=k: r["most_removed_drop"][k]) for k in first["most_removed_drop"]},
        "deletion_auc": avg(lambda r: r["deletion_auc"]),
        "deletion_curve": [avg(lambda r, j=j: r["deletion_curve"][j]) for j in range(len(first["deletion_curve"]))],
    }

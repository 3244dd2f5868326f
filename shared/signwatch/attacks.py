"""Targeted adversarial images: make the model say a chosen class (Stop, 14, by default).

Attacks work on images in [0, 1] with the model's normalisation inside the graph, so the
perturbation budget ``eps`` is in pixel units (8/255 is invisible to most people).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from signwatch.model import ModelSpec, normalize


@dataclass
class AttackResult:
    adversarial: torch.Tensor  # (B, 3, H, W) in [0, 1]
    predicted: torch.Tensor  # (B,) class after the attack
    success: torch.Tensor  # (B,) bool: predicted == target

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if len(self.success) else 0.0


def targeted_pgd(
    model: torch.nn.Module,
    spec: ModelSpec,
    images01: torch.Tensor,
    target: int = 14,
    eps: float = 8 / 255,
    step: float = 2 / 255,
    steps: int = 10,
    seed: int = 0,
) -> AttackResult:
    """Projected gradient descent on the target's cross-entropy, from a random start in the ball."""
    model.eval()
    x = images01.detach()
    goal = torch.full((x.shape[0],), target, dtype=torch.long, device=x.device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    delta = (torch.rand(x.shape, generator=gen) * 2 - 1).to(x.device) * eps
    adv = (x + delta).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(normalize(adv, spec)), goal)
        (grad,) = torch.autograd.grad(loss, adv)
        with torch.no_grad():
            adv = adv - step * grad.sign()  # descend: towards the target class
            adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    with torch.no_grad():
        predicted = model(normalize(adv, spec)).argmax(1)
    return AttackResult(adv.detach(), predicted, predicted == goal)

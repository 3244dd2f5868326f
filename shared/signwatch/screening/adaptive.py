"""The adaptive attacker of He et al. (2017, "Adversarial example defenses: ensembles of weak
defenses are not strong"): targeted PGD whose loss covers the input and every squeezed copy, so
that the adversarial image reads as the target both ways and squeezing no longer moves it.

Bit-depth reduction has no useful gradient (a staircase); it is passed through as the identity on
the backward pass (BPDA, Athalye et al. 2018). The median filter, the shift and the down-sampling
are differentiable as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from signwatch.attacks.methods import AttackResult, _finish, check_eps, check_target, quantize
from signwatch.model import ModelSpec, normalize
from signwatch.screening.squeezers import squeezer


def _differentiable(name: str):
    sq = squeezer(name)
    if name.startswith("bits:"):
        return lambda x: x + (sq(x) - x).detach()  # straight-through
    return sq


def adaptive_pgd(model: torch.nn.Module, spec: ModelSpec, images01: torch.Tensor, squeezers: Sequence[str],
                 target: int | str | None = None, eps: float = 16 / 255, steps: int = 20, seed: int = 0,
                 batch_size: int = 64, quantize_result: bool = True) -> AttackResult:
    """PGD (L-infinity, random start, step 2.5 * eps / steps) on the summed cross-entropy of the
    target on the input and on each squeezed copy."""
    target, eps = check_target(target, spec), check_eps(eps)
    fns = [_differentiable(name) for name in squeezers]
    step = 2.5 * eps / steps
    model.eval()
    x_all = images01.detach().float()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = torch.empty_like(x_all)
    for start in range(0, len(x_all), batch_size):
        x = x_all[start:start + batch_size]
        adv = (x + (torch.rand(x.shape, generator=gen) * 2 - 1).to(x.device) * eps).clamp(0, 1)
        goal = torch.full((len(x),), target, dtype=torch.long, device=x.device)
        for _ in range(steps):
            adv.requires_grad_(True)
            copies = torch.cat([adv] + [fn(adv) for fn in fns])
            logits = model(normalize(copies, spec))
            loss = F.cross_entropy(logits, goal.repeat(1 + len(fns)), reduction="sum")
            (grad,) = torch.autograd.grad(loss, adv)
            with torch.no_grad():
                adv = adv - step * grad.sign()
                adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
        out[start:start + batch_size] = quantize(adv, x, eps) if quantize_result else adv.detach()
    return _finish(model, spec, out, target, "adaptive_pgd")


__all__ = ["adaptive_pgd"]

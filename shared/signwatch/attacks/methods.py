"""Targeted evasion attacks on the classifier, in [0, 1] pixel space.

Every method takes images in [0, 1] (B, 3, H, W) and puts the model's normalisation inside the
graph (``normalize(x, spec)``), so budgets and norms are in pixel units: ``eps = 8/255`` means no
pixel channel moves by more than 8 grey levels. Inputs are split into batches of ``batch_size``
with a tqdm bar over the batches; the result keeps the input order.

Methods (all targeted: they push every image towards ``target``, a class id or a label of the
model, resolved by ``signwatch.attacks.targets.resolve_target``; by default the class labelled
"Stop" where the model has one):

- ``pgd``: projected gradient descent in the L-infinity ball (Madry et al. 2018) on the
  cross-entropy of the target class, from a uniform random start in the ball.
- ``fgsm``: one signed-gradient step of size ``eps`` (Goodfellow et al. 2015), targeted.
- ``deepfool``: the smallest L2 step across the linearised boundary between the current class
  and the target (Moosavi-Dezfooli et al. 2016, here in its targeted form), repeated until the
  target wins, with overshoot; ``eps`` does not apply.

We implement these ourselves rather than through IBM's adversarial-robustness-toolbox (ART 1.20.1).
Measured on 64 rendered test images (64 px, eps 8/255, 10 steps): without a random start ART's
targeted ProjectedGradientDescentPyTorch and FastGradientMethod give exactly our pixels
(max |difference| 0.0, same success rate), so ART would be correct; but it took 1.4-1.6x our time
for PGD on CPU, it adds scipy + scikit-learn (~175 MB) to every
image, its random start comes from numpy's global state, and its DeepFool is untargeted only.
``tests/unit/test_attacks_art.py`` repeats the comparison where ART is installed; figures in
docs/attacks.md.

``quantize_result=True`` rounds the result to the 8-bit grid (what a PNG, a ``.npy`` of uint8 and the
inference service carry) without leaving the eps-ball, and predicts on the rounded images, so
that the success reported is the success the service will see.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from signwatch.attacks.defaults import DEFAULT_EPS, DEFAULT_OVERSHOOT, DEFAULT_STEPS, METHODS
from signwatch.attacks.targets import resolve_target
from signwatch.model import ModelSpec, normalize

__all__ = ["METHODS", "AttackResult", "deepfool", "fgsm", "pgd", "predict_probabilities", "quantize",
           "run_attack", "targeted_pgd"]


@dataclass
class AttackResult:
    """What an attack returns: the adversarial images and the model's answer on them."""

    adversarial: torch.Tensor  # (B, 3, H, W) in [0, 1]
    predicted: torch.Tensor  # (B,) class after the attack
    success: torch.Tensor  # (B,) bool: predicted == target
    target: int  # the class id
    method: str = "pgd"
    probabilities: torch.Tensor | None = None  # (B, classes) softmax on the adversarial images

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if len(self.success) else 0.0


def check_target(target: int | str | None, spec: ModelSpec) -> int:
    """The class id of ``target`` (an id, a label, or None for "Stop"); ValueError when it names none."""
    return resolve_target(spec, target)


def check_eps(eps: float) -> float:
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and 0 < eps <= 1):
        raise ValueError(f"eps must be in (0, 1] (pixel units; 8/255 = 0.0314); got {eps!r}")
    return float(eps)


def _check_images(images01: torch.Tensor) -> torch.Tensor:
    if not isinstance(images01, torch.Tensor) or images01.ndim != 4 or images01.shape[1] != 3:
        shape = tuple(images01.shape) if isinstance(images01, torch.Tensor) else type(images01).__name__
        raise ValueError(f"images must be a (B, 3, H, W) tensor in [0, 1]; got {shape}")
    if images01.numel() and (images01.min() < 0 or images01.max() > 1):
        raise ValueError("images must lie in [0, 1]")
    return images01.detach().float()


def _batches(n: int, batch_size: int, desc: str, progress: bool) -> Iterator[slice]:
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, dynamic_ncols=True,
                      total=len(starts)):
        yield slice(start, min(n, start + batch_size))


def _logits(model: torch.nn.Module, spec: ModelSpec, x01: torch.Tensor) -> torch.Tensor:
    return model(normalize(x01, spec))


def quantize(adv01: torch.Tensor, clean01: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """Round to the 8-bit grid; with ``eps``, never beyond the eps-ball around ``clean01``.

    For clean images on the grid (decoded from uint8, as all of ours are) the result stays on the
    grid: the perturbation is rounded, then clipped to the largest whole number of grey levels
    that fits in eps.
    """
    levels = torch.round(adv01 * 255)
    if eps is not None:
        clean_levels = torch.round(clean01 * 255)
        on_grid = torch.allclose(clean_levels / 255, clean01, atol=1e-6)
        if on_grid:
            budget = math.floor(eps * 255 + 1e-6)
            levels = clean_levels + (levels - clean_levels).clamp(-budget, budget)
            return (levels / 255).clamp(0, 1)
        out = (levels / 255)
        out = clean01 + (out - clean01).clamp(-eps, eps)
        return out.clamp(0, 1)
    return (levels / 255).clamp(0, 1)


def predict_probabilities(model: torch.nn.Module, spec: ModelSpec, images01: torch.Tensor,
                          batch_size: int = 256) -> torch.Tensor:
    """Softmax of the model on [0, 1] images, batched, without gradients: (B, classes)."""
    with torch.no_grad():
        chunks = [F.softmax(_logits(model, spec, images01[s]), 1)
                  for s in _batches(len(images01), batch_size, "", False)]
    return torch.cat(chunks) if chunks else torch.zeros((0, spec.num_classes), device=images01.device)


def _finish(model, spec, adv: torch.Tensor, target: int, method: str) -> AttackResult:
    probs = predict_probabilities(model, spec, adv)
    predicted = probs.argmax(1)
    return AttackResult(adv.detach(), predicted, predicted == target, target, method, probs)


def _target_gradient(model, spec, x: torch.Tensor, target: int) -> torch.Tensor:
    """Gradient of the target's cross-entropy (summed, so every image gets its own gradient)."""
    x = x.clone().requires_grad_(True)
    goal = torch.full((x.shape[0],), target, dtype=torch.long, device=x.device)
    loss = F.cross_entropy(_logits(model, spec, x), goal, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def pgd(
    model: torch.nn.Module,
    spec: ModelSpec,
    images01: torch.Tensor,
    target: int | str | None = None,
    eps: float = DEFAULT_EPS,
    step: float | None = None,
    steps: int = DEFAULT_STEPS["pgd"],
    seed: int = 0,
    random_start: bool = True,
    batch_size: int = 64,
    quantize_result: bool = False,
    progress: bool = False,
) -> AttackResult:
    """Targeted L-infinity PGD: ``steps`` signed steps of size ``step`` down the target's
    cross-entropy, each projected back into the eps-ball and into [0, 1].

    ``step`` defaults to ``2.5 * eps / steps`` (Madry et al.'s rule: 2/255 for 8/255 and 10 steps).
    The random start is uniform in the ball, drawn from a CPU generator seeded with ``seed``
    (batch by batch, in order).
    """
    target, eps = check_target(target, spec), check_eps(eps)
    if steps < 1:
        raise ValueError(f"steps must be at least 1; got {steps}")
    step = 2.5 * eps / steps if step is None else float(step)
    if not step > 0:
        raise ValueError(f"step must be positive; got {step}")
    model.eval()
    x_all = _check_images(images01)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = torch.empty_like(x_all)
    for s in _batches(len(x_all), batch_size, "pgd", progress):
        x = x_all[s]
        if random_start:
            delta = (torch.rand(x.shape, generator=gen) * 2 - 1).to(x.device) * eps
            adv = (x + delta).clamp(0, 1)
        else:
            adv = x.clone()
        for _ in range(steps):
            grad = _target_gradient(model, spec, adv, target)
            with torch.no_grad():
                adv = adv - step * grad.sign()  # descend: towards the target class
                adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
        out[s] = quantize(adv, x, eps) if quantize_result else adv
    return _finish(model, spec, out, target, "pgd")


def fgsm(
    model: torch.nn.Module,
    spec: ModelSpec,
    images01: torch.Tensor,
    target: int | str | None = None,
    eps: float = DEFAULT_EPS,
    batch_size: int = 64,
    quantize_result: bool = False,
    progress: bool = False,
) -> AttackResult:
    """Targeted fast gradient sign method: one step ``x - eps * sign(grad CE(target))``, clipped."""
    target, eps = check_target(target, spec), check_eps(eps)
    model.eval()
    x_all = _check_images(images01)
    out = torch.empty_like(x_all)
    for s in _batches(len(x_all), batch_size, "fgsm", progress):
        x = x_all[s]
        grad = _target_gradient(model, spec, x, target)
        adv = (x - eps * grad.sign()).clamp(0, 1)
        out[s] = quantize(adv, x, eps) if quantize_result else adv
    return _finish(model, spec, out, target, "fgsm")


def deepfool(
    model: torch.nn.Module,
    spec: ModelSpec,
    images01: torch.Tensor,
    target: int | str | None = None,
    steps: int = DEFAULT_STEPS["deepfool"],
    overshoot: float = DEFAULT_OVERSHOOT,
    batch_size: int = 64,
    quantize_result: bool = False,
    progress: bool = False,
) -> AttackResult:
    """Targeted DeepFool: the minimal L2 perturbation that makes the model answer ``target``.

    Per image, while the current class k is not the target: linearise g = f_target - f_k
    (logits) at the current point, take the smallest L2 step onto g = 0,
    r = (|g| + 1e-4) * grad g / ||grad g||^2, add it to the accumulated perturbation, and set the
    image to ``clip(x + (1 + overshoot) * r_total, 0, 1)``. Images already classified as the
    target are left unchanged; images that do not reach it in ``steps`` iterations keep their
    last iterate. With ``quantize_result`` the iterate is rounded to the 8-bit grid before every
    check, so that a perturbation too small to survive rounding keeps growing until it does.
    """
    target = check_target(target, spec)
    if steps < 1:
        raise ValueError(f"steps must be at least 1; got {steps}")
    if overshoot < 0:
        raise ValueError(f"overshoot must be non-negative; got {overshoot}")
    model.eval()
    x_all = _check_images(images01)
    out = torch.empty_like(x_all)
    project: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = (
        (lambda a, x: quantize(a, x)) if quantize_result else (lambda a, x: a))
    for s in _batches(len(x_all), batch_size, "deepfool", progress):
        x = x_all[s]
        adv = x.clone()
        r_total = torch.zeros_like(x)
        active = torch.arange(len(x), device=x.device)
        for iteration in range(steps + 1):
            xa = adv[active].clone().requires_grad_(True)
            logits = _logits(model, spec, xa)
            current = logits.argmax(1)
            todo = current != target
            active = active[todo]
            if len(active) == 0 or iteration == steps:
                break  # all on target, or out of iterations: keep the last iterate
            rows = torch.arange(len(xa), device=x.device)
            g = logits[:, target] - logits[rows, current]  # < 0 while the target is not on top
            (w,) = torch.autograd.grad(g[todo].sum(), xa)
            with torch.no_grad():
                g, w = g[todo].detach(), w[todo]
                w_norm2 = w.flatten(1).pow(2).sum(1).clamp_min(1e-12)
                r_total[active] += ((g.abs() + 1e-4) / w_norm2).view(-1, 1, 1, 1) * w
                adv[active] = project((x[active] + (1 + overshoot) * r_total[active]).clamp(0, 1), x[active])
        out[s] = adv
    return _finish(model, spec, out, target, "deepfool")


def run_attack(
    method: str,
    model: torch.nn.Module,
    spec: ModelSpec,
    images01: torch.Tensor,
    target: int | str | None = None,
    eps: float = DEFAULT_EPS,
    steps: int | None = None,
    step: float | None = None,
    seed: int = 0,
    overshoot: float = DEFAULT_OVERSHOOT,
    batch_size: int = 64,
    quantize_result: bool = False,
    progress: bool = False,
) -> AttackResult:
    """One entry point for the CLI and the demo: ``method`` is one of ``METHODS``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    steps = DEFAULT_STEPS[method] if steps is None else steps
    common = dict(target=target, batch_size=batch_size, quantize_result=quantize_result, progress=progress)
    if method == "pgd":
        return pgd(model, spec, images01, eps=eps, step=step, steps=steps, seed=seed, **common)
    if method == "fgsm":
        return fgsm(model, spec, images01, eps=eps, **common)
    return deepfool(model, spec, images01, steps=steps, overshoot=overshoot, **common)


def targeted_pgd(
    model: torch.nn.Module,
    spec: ModelSpec,
    images01: torch.Tensor,
    target: int | str | None = None,
    eps: float = 8 / 255,
    step: float = 2 / 255,
    steps: int = 10,
    seed: int = 0,
) -> AttackResult:
    """The original API (demo, end-to-end test): ``pgd`` on one batch, no progress bar."""
    return pgd(model, spec, images01, target=target, eps=eps, step=step, steps=steps, seed=seed,
               batch_size=max(1, len(images01)))

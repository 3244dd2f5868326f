"""Plain gradient saliency (input gradient, input x gradient) and the plumbing all methods share.

Every method here runs the model in eval mode for the duration of the call and puts each module's
training flag back afterwards: explanations are of the deployed model, whose BatchNorm layers use
running statistics, and a caller that was training must get its model back as it left it.
Gradients are taken with ``torch.autograd.grad`` so nothing is ever accumulated into ``.grad``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

__all__ = ["input_gradient", "input_x_gradient"]

TargetLike = int | Sequence[int] | torch.Tensor | None


@contextlib.contextmanager
def model_in_eval_mode(model: nn.Module) -> Iterator[None]:
    # Per-module flags rather than one model.train(flag): a caller may have frozen some
    # submodules (e.g. BatchNorm kept in eval while fine-tuning) and must get exactly that back.
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def prepare_input(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    if not images.is_floating_point():
        raise TypeError(f"images must be the model's normalised float input, got dtype {images.dtype}")
    # clone() also turns an inference-mode tensor (e.g. from the serving path) into one autograd accepts.
    return images.detach().clone().requires_grad_(True)


def logits_of(output: object) -> torch.Tensor:
    if isinstance(output, (tuple, list)):
        output = output[0]
    elif not isinstance(output, torch.Tensor) and hasattr(output, "logits"):
        output = output.logits
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        raise ValueError(f"model must return (B, num_classes) logits, got {getattr(output, 'shape', type(output))}")
    return output


def resolve_target(logits: torch.Tensor, target: TargetLike) -> torch.Tensor:
    batch, num_classes = logits.shape
    if target is None:
        return logits.detach().argmax(dim=1)
    if isinstance(target, int):
        t = torch.full((batch,), target, dtype=torch.long, device=logits.device)
    else:
        t = torch.as_tensor(target, dtype=torch.long).to(logits.device).reshape(-1)
        if t.numel() == 1 and batch != 1:
            t = t.expand(batch).clone()
    if t.shape != (batch,):
        raise ValueError(f"target must be one class or one per sample ({batch}), got shape {tuple(t.shape)}")
    if bool(((t < 0) | (t >= num_classes)).any()):
        raise ValueError(f"target classes must lie in [0, {num_classes}), got {t.tolist()}")
    return t


def target_scores(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, target[:, None]).squeeze(1)


def normalize_per_sample(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each sample over all its non-batch dimensions to exactly [0, 1]; a flat map becomes 0."""
    flat = maps.flatten(1)
    lo = flat.amin(dim=1)
    hi = flat.amax(dim=1)
    shape = (-1,) + (1,) * (maps.dim() - 1)
    # No additive eps: maps of untrained or saturated models can span less than any fixed eps.
    return (maps - lo.view(shape)) / (hi - lo).clamp_min(torch.finfo(maps.dtype).tiny).view(shape)


def _input_grad(model: nn.Module, images: torch.Tensor, target: TargetLike) -> tuple[torch.Tensor, torch.Tensor]:
    with model_in_eval_mode(model), torch.inference_mode(False), torch.enable_grad():
        x = prepare_input(images)
        logits = logits_of(model(x))
        t = resolve_target(logits, target)
        # Samples are independent in eval mode, so the gradient of the summed scores is the
        # per-sample gradient: one backward serves the whole batch.
        (grad,) = torch.autograd.grad(target_scores(logits, t).sum(), x)
    return grad, x.detach()


@torch.no_grad()
def _channel_sum_normalized(t: torch.Tensor) -> torch.Tensor:
    return normalize_per_sample(t.sum(dim=1, keepdim=True))


def input_x_gradient(model: nn.Module, images: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
    """|grad_x s * x| summed over channels, normalised per sample to [0, 1]; shape (B, 1, H, W)."""
    grad, x = _input_grad(model, images, target)
    return _channel_sum_normalized((grad * x).abs())


def input_gradient(model: nn.Module, images: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
    """|grad_x s| summed over channels, normalised per sample to [0, 1]; shape (B, 1, H, W)."""
    grad, _ = _input_grad(model, images, target)
    return _channel_sum_normalized(grad.abs())

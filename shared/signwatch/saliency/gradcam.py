"""Grad-CAM (Selvaraju et al., 2017): channel weights = spatial mean of the score's gradient at a
convolutional layer, map = ReLU of the weighted channel sum, upsampled to the input size."""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn

from .gradients import (
    TargetLike,
    logits_of,
    model_in_eval_mode,
    normalize_per_sample,
    prepare_input,
    resolve_target,
    target_scores,
)

__all__ = ["gradcam"]


def _contains_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def _registered_layer(model: nn.Module) -> str | None:
    from signwatch.model.architectures import of_model  # when needed: the model package imports data, ...

    arch = of_model(model)
    return arch.gradcam_layer(model) if arch is not None else None


def _resolve_layer(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    if isinstance(layer, str):
        modules = dict(model.named_modules())
        if layer not in modules:
            raise ValueError(f"model has no module named {layer!r}")
        return modules[layer]
    return layer


def gradcam(
    model: nn.Module, images: torch.Tensor, target: TargetLike = None, layer: nn.Module | str | None = None
) -> torch.Tensor:
    """Grad-CAM maps, (B, 1, H, W) in [0, 1] per sample.

    ``layer`` (a module or its dotted name) defaults to the registry's layer for a model of a
    registered architecture (``signwatch.model.architectures``: ``layer4`` for ResNet, the last
    ReLU of ``features`` for VGG, ...). For any other model it is the last block, in execution
    order, that contains a Conv2d and yields a 4-D output, found while the forward runs.
    """
    if layer is None:
        layer = _registered_layer(model)
    explicit = _resolve_layer(model, layer) if layer is not None else None
    owner = threading.get_ident()
    seen: list[tuple[torch.Tensor, int]] = []

    def hook(module: nn.Module, _inputs: object, output: object) -> object:
        if threading.get_ident() != owner or not isinstance(output, torch.Tensor) or output.dim() != 4:
            return None
        seen.append((output, output._version))
        # An explicit layer gets a clone downstream so in-place ops cannot alter the activation kept.
        return output.clone() if explicit is not None else None

    if explicit is not None:
        candidates = [explicit]
    else:
        candidates = [m for m in model.modules() if m is not model and _contains_conv(m)]
    if not candidates:
        raise ValueError("model has no Conv2d; pass layer= explicitly")

    with model_in_eval_mode(model), torch.inference_mode(False), torch.enable_grad():
        x = prepare_input(images)
        handles = [m.register_forward_hook(hook) for m in candidates]
        try:
            logits = logits_of(model(x))
        finally:
            for h in handles:
                h.remove()
        if not seen:
            raise ValueError("the Grad-CAM layer produced no 4-D output in the forward pass")
        activation, version = seen[-1]
        if activation._version != version:
            # Cloning every candidate would double activation memory; the default's pick is only
            # ever altered in place by unusual models, which can name the layer instead.
            raise RuntimeError("the default Grad-CAM layer's output is modified in place downstream; pass layer=")
        t = resolve_target(logits, target)
        (grad,) = torch.autograd.grad(target_scores(logits, t).sum(), activation)

    with torch.no_grad():
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * activation.detach()).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return normalize_per_sample(cam)

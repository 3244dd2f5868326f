"""FullGrad saliency (Srinivas & Fleuret, NeurIPS 2019), as fixed in the design brief's "FullGrad, exactly".

For a target score s(x) the full-gradient decomposition is exact:

    s(x) = sum(grad_x s * x) + sum over bias layers l of sum(grad_{z_l} s * b_l)

where z_l is the output of layer l and b_l its (effective) bias. The map sums the absolute,
per-sample min-max normalised terms; the identity above is checked per sample because a bias paired
with the wrong gradient, a gradient taken after an in-place op, or a forgotten eps all break it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from .gradients import (
    TargetLike,
    logits_of,
    model_in_eval_mode,
    normalize_per_sample,
    prepare_input,
    resolve_target,
    target_scores,
)

__all__ = ["FullGradResult", "fullgrad", "straightforward_fullgrad", "effective_bias", "bias_layers",
           "batchnorm_effective_bias", "fullgrad_maps", "completeness_error"]

log = logging.getLogger(__name__)

POST_EPS = 1e-6
WARN_ABOVE = 1e-3
# A logit this close to zero is explained with the error absolute, not relative: an adversarial
# sign whose winning logit was -0.001 (DenseNet, CI) missed it by 5e-6 in float32, "relative
# error" 5e-3, over the exact families' warning for rounding alone.
UNIT_LOGIT = 1.0


@dataclass(frozen=True, eq=False)
class FullGradResult:
    maps: torch.Tensor  # (B, 1, H, W), on the input's device, not normalised as a whole
    target: torch.Tensor  # (B,) long
    scores: torch.Tensor  # (B,) the explained logit s(x)
    logits: torch.Tensor  # (B, num_classes)
    completeness_rel_error: torch.Tensor  # (B,) float64, NaN when not checked

    def normalized_maps(self) -> torch.Tensor:
        """The maps scaled to [0, 1] per sample, for display."""
        return normalize_per_sample(self.maps)

    @property
    def max_completeness_error(self) -> float:
        return float(self.completeness_rel_error.max())


def _is_bias_layer(module: nn.Module) -> bool:
    if isinstance(module, _BatchNorm):
        return True
    return isinstance(module, (_ConvNd, nn.Linear)) and module.bias is not None


def bias_layers(model: nn.Module) -> list[nn.Module]:
    """Modules whose bias enters the decomposition; raises where FullGrad cannot be exact."""
    layers = []
    for name, module in model.named_modules():
        if not _is_bias_layer(module):
            continue
        if isinstance(module, _BatchNorm) and (module.running_mean is None or module.running_var is None):
            # Without running statistics BatchNorm normalises with the batch's own statistics even
            # in eval mode: not an affine map of one sample, so there is no bias to attribute.
            raise ValueError(
                f"FullGrad needs BatchNorm running statistics, but {name or type(module).__name__} "
                "has none (track_running_stats=False)"
            )
        layers.append(module)
    return layers


def batchnorm_effective_bias(running_mean: torch.Tensor, running_var: torch.Tensor, eps: float,
                             weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The constant an eval-mode BatchNorm adds: y = (x - mean) * w / sqrt(var + eps) + b, so
    b - mean * w / sqrt(var + eps). Shared by the live map and the map from recorded tensors."""
    scale = torch.rsqrt(running_var + eps)
    if weight is not None:
        scale = scale * weight
    effective = -running_mean * scale
    return effective + bias if bias is not None else effective


@torch.no_grad()
def effective_bias(module: nn.Module) -> torch.Tensor:
    """The constant a layer adds to its output in eval mode, one value per output channel."""
    if isinstance(module, _BatchNorm):
        return batchnorm_effective_bias(module.running_mean, module.running_var, module.eps,
                                        module.weight, module.bias)
    if isinstance(module, (_ConvNd, nn.Linear)) and module.bias is not None:
        return module.bias.detach()
    raise TypeError(f"{type(module).__name__} is not a FullGrad bias layer")


def _times_bias(grad: torch.Tensor, linear: bool, bias: torch.Tensor) -> torch.Tensor:
    bias = bias.to(grad.dtype)
    if linear:
        return grad * bias  # Linear's bias runs along the last dimension
    return grad * bias.view(1, -1, *([1] * (grad.dim() - 2)))  # conv/BN: along channels


@contextlib.contextmanager
def _capture_outputs(layers: list[nn.Module]) -> Iterator[dict[nn.Module, list[torch.Tensor]]]:
    """Record each layer's output tensor, keyed by the module that produced it.

    The hook hands a clone downstream and keeps the original: in-place ops that follow (ReLU
    inplace, ``out += identity``) then modify the clone, so the gradient w.r.t. the kept tensor is
    the gradient w.r.t. the layer's output as it was produced. A list per module because a module
    may run more than once in a forward.
    """
    captured: dict[nn.Module, list[torch.Tensor]] = {}
    owner = threading.get_ident()

    def hook(module: nn.Module, _inputs: object, output: object) -> object:
        # Only this call's forward: another thread serving with the same model must not be recorded.
        if threading.get_ident() != owner or not isinstance(output, torch.Tensor) or not output.requires_grad:
            return None
        captured.setdefault(module, []).append(output)
        return output.clone()

    handles = []
    try:
        for layer in layers:
            handles.append(layer.register_forward_hook(hook))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _decompose(
    model: nn.Module, images: torch.Tensor, target: TargetLike
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[nn.Module, torch.Tensor]]]:
    """One forward, one backward: (x, grad_x, logits, target, scores, [(module, grad_z)])."""
    layers = bias_layers(model)
    with model_in_eval_mode(model), torch.inference_mode(False), torch.enable_grad():
        x = prepare_input(images)
        with _capture_outputs(layers) as captured:
            logits = logits_of(model(x))
        t = resolve_target(logits, target)
        scores = target_scores(logits, t)
        records = [(module, z) for module, outputs in captured.items() for z in outputs]
        # Samples are independent in eval mode, so the gradient of the batch's summed scores is each
        # sample's own gradient. autograd.grad (not backward) leaves parameters' .grad alone and
        # skips the weight gradients altogether.
        grads = torch.autograd.grad(scores.sum(), [x] + [z for _, z in records], allow_unused=True)
    # A layer whose output does not reach the score (an unused branch) contributes nothing.
    bias_grads = [(module, g) for (module, _), g in zip(records, grads[1:]) if g is not None]
    return x.detach(), grads[0], logits.detach(), t, scores.detach(), bias_grads


def _post_channel_sum(term: torch.Tensor, eps: float) -> torch.Tensor:
    """sum_c post(term)[c] with post = abs, then min-max over the sample's whole (C, H, W) tensor.

    The per-sample normalisation is affine, so it commutes with the channel sum:
    sum_c (a_c - min) / (max - min + eps) = (sum_c a_c - C * min) / (max - min + eps).
    """
    a = term.abs()
    flat = a.flatten(1)
    # amin and amax separately: torch.aminmax over a dimension is several times slower on CPU.
    lo = flat.amin(dim=1).view(-1, 1, 1, 1)
    hi = flat.amax(dim=1).view(-1, 1, 1, 1)
    return (a.sum(dim=1, keepdim=True) - a.shape[1] * lo) / (hi - lo + eps)


def _unsupported_biases(model: nn.Module) -> list[str]:
    return [
        name
        for name, m in model.named_modules()
        if not _is_bias_layer(m) and isinstance(getattr(m, "bias", None), torch.Tensor)
    ]


def fullgrad_maps(
    x: torch.Tensor,
    grad_x: torch.Tensor,
    bias_terms: Iterable[tuple[torch.Tensor, torch.Tensor, bool]],
    *,
    eps: float = POST_EPS,
    check_completeness: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """FullGrad's arithmetic, once for the live map and the map from a debugger trial.

    ``x``/``grad_x``: (B, C, H, W) input and its gradient; ``bias_terms``: (grad_z, bias, linear)
    for every bias layer's output gradient and its (effective) bias. Returns the (B, 1, H, W) maps
    (input term + upsampled conv/BN terms; Linear terms enter only the completeness sum) and the
    per-sample float64 sum of all terms (None without the check).
    """
    height, width = x.shape[-2:]
    input_term = grad_x * x
    by_resolution: dict[tuple[int, int], torch.Tensor] = {(height, width): _post_channel_sum(input_term, eps)}
    total = input_term.flatten(1).sum(dim=1, dtype=torch.float64) if check_completeness else None
    for grad_z, bias, linear in bias_terms:
        term = _times_bias(grad_z, linear, bias)
        if total is not None:
            total += term.flatten(1).sum(dim=1, dtype=torch.float64)
        if term.dim() == 4 and not linear:
            key = (term.shape[-2], term.shape[-1])
            contribution = _post_channel_sum(term, eps)
            by_resolution[key] = by_resolution[key] + contribution if key in by_resolution else contribution
    # Bilinear upsampling is linear: one interpolation per resolution instead of one per channel.
    maps = by_resolution.pop((height, width))
    for part in by_resolution.values():
        maps = maps + F.interpolate(part, size=(height, width), mode="bilinear", align_corners=True)
    return maps, total


def completeness_error(score: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """|s - sum of all terms| relative to |s|, or absolute where |s| is under one logit unit."""
    return (score - total).abs() / score.abs().clamp_min(UNIT_LOGIT)


@torch.no_grad()
def fullgrad(
    model: nn.Module,
    images: torch.Tensor,
    target: TargetLike = None,
    *,
    check_completeness: bool = True,
    eps: float = POST_EPS,
    warn_above: float = WARN_ABOVE,
) -> FullGradResult:
    """FullGrad maps for ``images`` (the model's normalised (B, C, H, W) input).

    ``target``: None for each sample's predicted class, one class for all, or one per sample.
    The model runs in eval mode for the call; its flags, parameters and ``.grad`` are left as found.
    """
    x, grad_x, logits, t, scores, bias_grads = _decompose(model, images, target)
    biases: dict[nn.Module, torch.Tensor] = {}
    terms = []
    for module, grad_z in bias_grads:
        if module not in biases:
            biases[module] = effective_bias(module)
        terms.append((grad_z, biases[module], isinstance(module, nn.Linear)))
    maps, total = fullgrad_maps(x, grad_x, terms, eps=eps, check_completeness=check_completeness)

    if total is None:
        rel_error = torch.full((x.shape[0],), float("nan"), dtype=torch.float64, device=x.device)
    else:
        rel_error = completeness_error(scores.to(torch.float64), total)
        worst = float(rel_error.max())
        if worst > warn_above:
            log.warning(
                "FullGrad completeness violated: max relative error %.3g (per sample %s); "
                "layers with a bias FullGrad does not model: %s",
                worst,
                [round(v, 6) for v in rel_error.tolist()],
                _unsupported_biases(model) or "none",
            )
    return FullGradResult(maps=maps, target=t, scores=scores, logits=logits, completeness_rel_error=rel_error)


@torch.no_grad()
def straightforward_fullgrad(
    model: nn.Module, images: torch.Tensor, target: TargetLike = None, *, eps: float = POST_EPS
) -> torch.Tensor:
    """Reference FullGrad: every channel of every bias-gradient term is upsampled on its own and
    only then summed, as the popular libraries do, but normalised like ``fullgrad`` (per sample,
    over the term's whole (C, H, W) tensor).

    Slow on purpose; it exists to check that ``fullgrad``'s summing before upsampling changes
    nothing but the speed. Returns (B, 1, H, W) on the input's device.
    """
    x, grad_x, _, _, _, bias_grads = _decompose(model, images, target)
    size = x.shape[-2:]

    def post(term: torch.Tensor) -> torch.Tensor:
        a = term.abs()
        a = a - a.flatten(1).amin(dim=1).view(-1, 1, 1, 1)
        return a / (a.flatten(1).amax(dim=1).view(-1, 1, 1, 1) + eps)

    maps = post(grad_x * x).sum(dim=1, keepdim=True)
    for module, grad_z in bias_grads:
        if grad_z.dim() != 4 or isinstance(module, nn.Linear):
            continue
        term = post(_times_bias(grad_z, isinstance(module, nn.Linear), effective_bias(module)))
        maps = maps + F.interpolate(term, size=size, mode="bilinear", align_corners=True).sum(dim=1, keepdim=True)
    return maps

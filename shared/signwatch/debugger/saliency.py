"""FullGrad from recorded tensors only, as docs "FullGrad, exactly" fixes it.

For the step's predicted class (the class whose logit the debugger differentiated):

    map = post(gradient/image * image) summed over channels
        + for every 4-D bias-gradient tensor of a BatchNorm or Conv layer P:
              upsample(post(gradient/P_output * b_P)) summed over channels

with b_P the conv bias, or for BatchNorm the effective bias
``bias - running_mean * weight / sqrt(running_var + eps)`` (eps from the step's meta), ``post`` = abs
then min-max over the sample's (C, H, W) with a small eps, ``upsample`` = bilinear,
``align_corners=True``. Linear layers enter the completeness check, not the map.

The arithmetic is :func:`signwatch.saliency.fullgrad.fullgrad_maps` (and ``batchnorm_effective_bias``),
the same function the live map calls: this module only finds the recorded tensors and pairs them.

Biases are paired with gradients by module path: ``P.bias``/``P.running_mean``/... with
``gradient/P_output`` (and ``gradient/P_output@k`` for further calls of the same module), never by order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from signwatch.saliency.fullgrad import POST_EPS, batchnorm_effective_bias, completeness_error, fullgrad_maps

from .layout import INPUT_NAME, gradient_name, output_name
from .trial import TensorUnavailable, Trial

__all__ = ["TrialFullGrad", "fullgrad_from_trial", "fullgrad_result_from_trial", "POST_EPS"]


@dataclass(frozen=True)
class TrialFullGrad:
    map: torch.Tensor  # (1, 1, H, W) float32, not normalised as a whole (like FullGradResult.maps)
    step: int
    target: int  # the predicted class
    score: float  # its logit, as served
    completeness_rel_error: float  # NaN when a bias layer's gradient (e.g. fc's) was not recorded
    layers: tuple[str, ...]  # bias-gradient tensors that entered the decomposition
    missing: tuple[str, ...]  # bias layers of the model whose gradient or bias was not recorded


def _bias(tensors: dict[str, np.ndarray], path: str, info: dict) -> torch.Tensor | None:
    """The (effective) bias of layer ``path`` from its recorded parameters, None if not recorded."""
    def get(local: str) -> torch.Tensor | None:
        a = tensors.get(f"{path}.{local}" if path else local)
        return None if a is None else torch.from_numpy(np.array(a))

    if info["kind"] == "batchnorm":
        mean, var = get("running_mean"), get("running_var")
        weight, bias = get("weight"), get("bias")
        if mean is None or var is None or (info.get("affine", True) and (weight is None or bias is None)):
            return None
        return batchnorm_effective_bias(mean, var, info["eps"], weight, bias)
    return get("bias")


def fullgrad_result_from_trial(trial: Trial, step: int, *, eps: float = POST_EPS, strict: bool = True,
                               worker: str | None = None) -> TrialFullGrad:
    """The FullGrad map of ``step`` and its completeness check, from the trial's tensors only.

    ``strict``: raise when a BatchNorm/Conv layer's gradient or bias is missing from the step (the
    include regex left it out), since the map would silently lack that layer; with ``strict=False``
    those layers are skipped and listed in ``missing``. ``worker``: which replica's step (default
    the first in sorted order, as everywhere in a trial).
    """
    worker = trial.resolve_worker(step, worker)
    meta = trial.step_meta(step, worker)
    tensors = trial.step_tensors(step, worker)
    for name in (INPUT_NAME, gradient_name(INPUT_NAME)):
        if name not in tensors:
            raise TensorUnavailable(f"step {step} lacks {name!r}: record it (include regex '.*image')")
    x = torch.from_numpy(np.array(tensors[INPUT_NAME]))
    grad_x = torch.from_numpy(np.array(tensors[gradient_name(INPUT_NAME)]))
    if x.dim() != 4:
        raise ValueError(f"'image' must be (1, C, H, W), got {tuple(x.shape)}")

    terms: list[tuple[torch.Tensor, torch.Tensor, bool]] = []
    used: list[str] = []
    missing: list[str] = []
    for path, info in meta.get("bias_layers", {}).items():
        grads = []
        call = 0
        while (name := gradient_name(output_name(path, call))) in tensors:
            grads.append((name, torch.from_numpy(np.array(tensors[name]))))
            call += 1
        bias = _bias(tensors, path, info)
        if not grads or bias is None:
            missing.append(path)
            if strict and info["kind"] != "linear":
                what = "gradient/" + output_name(path) if not grads else f"the bias parameters of {path}"
                raise TensorUnavailable(
                    f"step {step} lacks {what}, needed for the FullGrad map (include regex: "
                    f"{meta.get('include_regex')!r}); pass strict=False to leave the layer out"
                )
            continue
        for name, grad_z in grads:
            terms.append((grad_z, bias, info["kind"] == "linear"))
            used.append(name)

    # The same arithmetic as the live map: signwatch.saliency.fullgrad.fullgrad_maps.
    maps, total = fullgrad_maps(x, grad_x, terms, eps=eps, check_completeness=True)
    score = float(meta["logit"])
    if missing:
        rel_error = math.nan
    else:
        rel_error = float(completeness_error(torch.tensor(score, dtype=torch.float64), total[0]))
    return TrialFullGrad(
        map=maps, step=step, target=int(meta["predicted_class"]), score=score,
        completeness_rel_error=rel_error, layers=tuple(used), missing=tuple(missing),
    )


def fullgrad_from_trial(trial: Trial, step: int, *, eps: float = POST_EPS, strict: bool = True,
                        worker: str | None = None) -> torch.Tensor:
    """The (1, 1, H, W) FullGrad map of ``step``'s predicted class, from recorded tensors only."""
    return fullgrad_result_from_trial(trial, step, eps=eps, strict=strict, worker=worker).map

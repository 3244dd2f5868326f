"""What the debugger hooks and snapshots for a (model, include regex): the recording plan.

Computed once per model and regex, then cached by the recorder. ``bias_layer_info`` also goes
into every step's meta, so that a trial knows which layers FullGrad needs without the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from signwatch.model.architectures import default_include_regex

from .config import DebuggerConfig
from .layout import INPUT_NAME, gradient_name, output_name

__all__ = ["Plan", "bias_layer_info", "make_plan"]


def bias_layer_info(model: nn.Module) -> dict[str, dict]:
    """The FullGrad bias layers of ``model`` by module path: type, kind and (BatchNorm) eps.

    Written into every step's meta so that a trial knows which layers the decomposition needs
    and how each bias broadcasts, without the model at hand.
    """
    info: dict[str, dict] = {}
    for path, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            if module.running_mean is None or module.running_var is None:
                continue  # no running statistics: no effective bias to attribute
            info[path] = {"type": type(module).__name__, "kind": "batchnorm", "eps": float(module.eps),
                          "affine": module.weight is not None}
        elif isinstance(module, _ConvNd) and module.bias is not None:
            info[path] = {"type": type(module).__name__, "kind": "conv"}
        elif isinstance(module, nn.Linear) and module.bias is not None:
            info[path] = {"type": type(module).__name__, "kind": "linear"}
    return info


@dataclass(frozen=True)
class Plan:
    """What to hook and snapshot for one (model, include regex): computed once, then cached."""

    root: str  # the model's class name, the root of its smdebug names
    include_regex: str  # what the plan records: the configuration's, or the model's default
    modules: tuple[tuple[str, nn.Module], ...]  # hooked, in named_modules() order
    params: tuple[tuple[str, torch.Tensor], ...]  # parameters and buffers whose names match
    input_value: bool
    input_gradient: bool
    any_gradient: bool
    bias_layers: dict[str, dict]
    eps: dict[str, float]

    def includes(self, cfg: DebuggerConfig, name: str) -> bool:
        return cfg.includes(name, self.root)


def make_plan(model: nn.Module, cfg: DebuggerConfig) -> Plan:
    """The plan for ``cfg``; an unset include regex is the model's default (its architecture's)."""
    cfg = cfg.resolved(default_include_regex(model))
    root = model._get_name()

    def inc(name: str) -> bool:
        return cfg.includes(name, root)

    modules, params, any_grad = [], [], False
    for path, module in model.named_modules():
        if path:  # the root's output is the logits; its input is "image"
            names = [output_name(path, 0), output_name(path, 1)]
            values = any(inc(n) for n in names)
            grads = any(inc(gradient_name(n)) for n in names)
            if values or grads:
                modules.append((path, module))
                any_grad = any_grad or grads
        tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        for local, tensor in tensors:
            name = f"{path}.{local}" if path else local
            if tensor is not None and inc(name):
                params.append((name, tensor))
    input_gradient = inc(gradient_name(INPUT_NAME))
    bias_layers = bias_layer_info(model)
    return Plan(
        root=root, include_regex=cfg.include_regex, modules=tuple(modules), params=tuple(params),
        input_value=inc(INPUT_NAME),
        input_gradient=input_gradient, any_gradient=any_grad or input_gradient,
        bias_layers=bias_layers,
        eps={p: i["eps"] for p, i in bias_layers.items() if "eps" in i},
    )

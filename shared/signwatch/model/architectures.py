"""The architectures signwatch serves, explains, attacks and records: declared here once.

Each entry names a torchvision constructor (``torchvision.models.<name>(num_classes=N)``) and the
facts the rest of signwatch looks up instead of spelling them out: the family, the state-dict key
of the classification head (it gives the class count), the Grad-CAM layer, the debugger's default
include regex, and whether FullGrad is exact for it.

FullGrad's decomposition ``s(x) = grad_x s . x + sum_l grad_{z_l} s . b_l`` holds exactly for a
network that is piecewise linear in its input and its biases: convolutions, linear layers,
eval-mode BatchNorm, ReLU, max and average pooling, concatenation and residual sums. ResNet, VGG
(with or without BatchNorm), RegNetX and DenseNet are built only of those. MobileNetV3 (hardswish,
squeeze-excitation), EfficientNet (SiLU, squeeze-excitation) and RegNetY (squeeze-excitation) are
not: their maps are FullGrad's approximation, and each report carries its measured completeness
error (docs/architectures.md gives the figures). Architectures with a normalisation FullGrad has no
bias for (LayerNorm, GroupNorm: ConvNeXt, vision transformers) are not registered, so importing
one is refused with the list below.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

# Debugger defaults, per family. Each records what FullGrad needs from a trial (the input, every
# bias layer's output and its gradient, the biases and BatchNorm statistics) and not the large
# convolution and linear weights; tests/unit/test_architectures.py checks both for every family.
RESNET_INCLUDE_REGEX = ".*bn|.*bias|.*downsample|.*ResNet_input|.*image"  # the reference's hook config
# In these families every BatchNorm is child "1" of a conv-norm-activation block (torchvision's
# Conv2dNormActivation, RegNet's stem and projections) and the only convolutions with a bias are
# the squeeze-excitation's fc1 and fc2.
# EfficientNet's head is ``classifier.1`` too: its output is recorded (completeness), never its weight.
_CONV_NORM_INCLUDE = (r"(^|\.)1_output|(?<!classifier)\.1\.weight$|.*fc[12]_output|.*bias|.*running_"
                      r"|.*{root}_input|.*image")
DENSENET_INCLUDE_REGEX = ".*norm|.*bias|.*DenseNet_input|.*image"

# FullGrad's completeness error (relative, per map) above which a map of an approximate family is
# logged as suspect, the same for each: where the terms miss more than the explained logit itself.
# Measured on a partly trained RegNetY-400MF (rendered signs, 64 px) the error was 0.11 median,
# 0.53 at the 90th percentile, 1.7 at worst; random networks spread from 0.03 to 57
# (docs/architectures.md).
APPROXIMATION_BOUND = 1.0


@dataclass(frozen=True)
class Architecture:
    name: str  # torchvision's constructor, e.g. "resnet50"
    family: str  # "resnet", "vgg", "regnet", "densenet", "mobilenet_v3", "efficientnet"
    head: str  # state-dict key of the classification weight, (num_classes, features)
    gradcam_layer: Callable[[nn.Module], str]  # the module Grad-CAM reads, by its path
    include_regex: Callable[[nn.Module], str]  # the debugger's default for this model
    fullgrad_exact: bool
    input_size: int = 224  # what the family was designed for (ImageNet crops)
    # Approximate families: the completeness error (relative) above which a map is suspect (exact
    # ones use float32's margin, signwatch.saliency.fullgrad.WARN_ABOVE).
    fullgrad_bound: float = APPROXIMATION_BOUND
    # Batches of two or more run oneDNN's graph (torch.jit.optimize_for_inference) unless it lost
    # to eager for the family: DenseNet 7.0 vs 8.5 images/s, EfficientNet 22.9 vs 28.5 (224 px,
    # batch 16, one thread; signwatch.model.frozen has every family's figures).
    onednn_batches: bool = True

    @property
    def fullgrad_warn_above(self) -> float:
        """The completeness error above which FullGrad logs a map as violating completeness."""
        from signwatch.saliency.fullgrad import WARN_ABOVE  # float32 rounding's margin, about 1e-6 measured

        return WARN_ABOVE if self.fullgrad_exact else self.fullgrad_bound

    @property
    def marker(self) -> str:
        """A key prefix every state dict of the family has (a cheap first filter when inferring)."""
        return {"resnet": "layer1.", "vgg": "features.", "regnet": "trunk_output.", "densenet": "features.denseblock",
                "mobilenet_v3": "features.", "efficientnet": "features."}[self.family]

    @property
    def root(self) -> str:
        """The model's class name: the root of its smdebug tensor names."""
        return {"resnet": "ResNet", "vgg": "VGG", "regnet": "RegNet", "densenet": "DenseNet",
                "mobilenet_v3": "MobileNetV3", "efficientnet": "EfficientNet"}[self.family]

    def build(self, num_classes: int) -> nn.Module:
        import torchvision.models as tvm

        return getattr(tvm, self.name)(weights=None, num_classes=num_classes)


def _fixed(path: str) -> Callable[[nn.Module], str]:
    return lambda model: path


def _last_relu_of_features(model: nn.Module) -> str:
    """VGG: the last convolution's activation (conv5_3 after ReLU at VGG16), as Selvaraju et al.
    used; ``features`` itself ends with a max-pool that halves the map's resolution."""
    names = [name for name, m in model.features.named_children() if isinstance(m, nn.ReLU)]
    return f"features.{names[-1]}"


def _bias_layer_regex(model: nn.Module) -> str:
    """VGG has no naming rule for its BatchNorms (``features.1``, ``features.5``, ...): the regex
    lists the bias layers' paths, grouped by parent (under 300 characters for VGG19-BN)."""
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.conv import _ConvNd

    def grouped(paths: list[str]) -> str:
        by_parent: dict[str, list[str]] = {}
        for path in paths:
            parent, _, leaf = path.rpartition(".")
            by_parent.setdefault(parent, []).append(re.escape(leaf))
        return "|".join(f"{re.escape(parent)}\\.({'|'.join(leaves)})" if parent else f"({'|'.join(leaves)})"
                        for parent, leaves in by_parent.items())

    norms = [p for p, m in model.named_modules() if isinstance(m, _BatchNorm)]
    biased = [p for p, m in model.named_modules() if isinstance(m, (_ConvNd, nn.Linear)) and m.bias is not None]
    root = type(model).__name__
    # Outputs (and their gradients) of every bias layer; BatchNorm weights (smdebug prefixes
    # parameters with the root's class name, hence "_"); biases and running statistics of all.
    out = f"(^|/)({grouped(norms + biased)})_output"
    weights = f"|(^|_)({grouped(norms)})\\.weight$" if norms else ""
    return f"{out}{weights}|.*bias|.*running_|.*{root}_input|.*image"


def _conv_norm_regex(root: str) -> Callable[[nn.Module], str]:
    return _fixed(_CONV_NORM_INCLUDE.replace("{root}", root))


def _family(family: str, names: list[str], head: str, gradcam: Callable[[nn.Module], str],
            include: Callable[[nn.Module], str], exact: bool | Callable[[str], bool],
            onednn_batches: bool = True) -> dict[str, Architecture]:
    return {n: Architecture(n, family, head, gradcam, include, exact(n) if callable(exact) else exact,
                            onednn_batches=onednn_batches)
            for n in names}


ARCHITECTURES: dict[str, Architecture] = {
    **_family("resnet", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                         "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"],
              "fc.weight", _fixed("layer4"), _fixed(RESNET_INCLUDE_REGEX), True),
    **_family("vgg", [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("_bn", "")],
              "classifier.6.weight", _last_relu_of_features, _bias_layer_regex, True),
    **_family("regnet", [f"regnet_{k}_{s}" for k in ("x", "y") for s in
                         ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")],
              "fc.weight", _fixed("trunk_output"), _conv_norm_regex("RegNet"),
              lambda n: n.startswith("regnet_x")),  # RegNetY adds squeeze-excitation
    **_family("densenet", ["densenet121", "densenet161", "densenet169", "densenet201"],
              "classifier.weight", _fixed("features"), _fixed(DENSENET_INCLUDE_REGEX), True,
              onednn_batches=False),
    **_family("mobilenet_v3", ["mobilenet_v3_small", "mobilenet_v3_large"], "classifier.3.weight",
              _fixed("features"), _conv_norm_regex("MobileNetV3"), False),
    **_family("efficientnet", [f"efficientnet_b{i}" for i in range(8)], "classifier.1.weight",
              _fixed("features"), _conv_norm_regex("EfficientNet"), False, onednn_batches=False),
}
FAMILIES = tuple(dict.fromkeys(a.family for a in ARCHITECTURES.values()))


class UnknownArchitecture(ValueError):
    pass


def get(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise UnknownArchitecture(
            f"unknown architecture {name!r}; signwatch serves torchvision's {', '.join(ARCHITECTURES)}") from None


def of_model(model: nn.Module) -> Architecture | None:
    """The registered architecture a built model is an instance of, by its class (None if none)."""
    root = type(model).__name__
    return next((a for a in ARCHITECTURES.values() if a.root == root), None)


@contextlib.contextmanager
def _on_meta() -> Iterator[None]:
    """Build modules on the meta device: shapes without allocating or initialising weights
    (VGG16's random initialisation alone takes 3 s on the 2-core CPU). RegNet computes its block
    widths with tensor ops while it is built; those run on the CPU (with the meta device they
    raise), which changes nothing for anyone else calling them meanwhile."""
    from torchvision.models import regnet

    original = regnet.BlockParams.from_init_params

    def on_cpu(*args, **kwargs):
        with torch.device("cpu"):
            return original(*args, **kwargs)

    regnet.BlockParams.from_init_params = on_cpu
    try:
        with torch.device("meta"):
            yield
    finally:
        regnet.BlockParams.from_init_params = original


def default_include_regex(model: nn.Module) -> str:
    """The debugger's default include regex for ``model``: its family's, or for a model of no
    registered family the paths of its bias layers (what FullGrad needs, without large weights)."""
    arch = of_model(model)
    return arch.include_regex(model) if arch is not None else _bias_layer_regex(model)


@lru_cache(maxsize=None)
def reference_shapes(name: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of ``name`` with ``num_classes`` and its shape (nothing allocated)."""
    with _on_meta():
        model = get(name).build(num_classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def build(name: str, num_classes: int, state: dict[str, torch.Tensor] | None = None,
          seed: int | None = 0) -> nn.Module:
    """The model in eval mode: with ``state`` its weights (which must match exactly: check with
    ``signwatch.model.importing.check_state`` first for a readable error), else a seeded random
    initialisation (reproducible, for tests and the untrained demo)."""
    arch = get(name)
    if state is None:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            return arch.build(num_classes).eval()
    with _on_meta():
        model = arch.build(num_classes)
    model.load_state_dict(state, strict=True, assign=True)  # the given tensors become the weights
    return model.eval()

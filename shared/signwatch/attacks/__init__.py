"""Targeted adversarial images: make the model say a chosen class (by id or label; "Stop" by default).

Attacks work on images in [0, 1] with the model's normalisation inside the graph, so budgets
(``eps``) and norms are in pixel units (8/255 is invisible to most people).

- ``pgd``, ``fgsm``, ``deepfool``, ``run_attack``: the methods (``signwatch.attacks.methods``).
- ``AttackReport``, ``save_attack``, ``triptych``: figures and files (``signwatch.attacks.report``).
- ``targeted_pgd``: the original one-batch API, kept for the demo and the end-to-end test.
- ``resolve_target``: a target named by class id or label, checked against the model's labels
  (``signwatch.attacks.targets``).
- ``signwatch attack``: the command line (``signwatch.attacks.cli``).

Names are loaded on first use, so that ``signwatch --help`` (which mounts the command line) does
not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from signwatch.attacks.defaults import DEFAULT_EPS, DEFAULT_OVERSHOOT, DEFAULT_STEPS, DEFAULT_TARGET_LABEL, METHODS
from signwatch.attacks.targets import UnknownTarget, resolve_target

_LAZY = {
    **{name: "signwatch.attacks.methods" for name in (
        "AttackResult", "deepfool", "fgsm", "pgd", "predict_probabilities", "quantize", "run_attack",
        "targeted_pgd")},
    **{name: "signwatch.attacks.report" for name in (
        "AttackReport", "difference_image", "save_attack", "to_uint8", "triptych")},
}

__all__ = ["DEFAULT_EPS", "DEFAULT_OVERSHOOT", "DEFAULT_STEPS", "DEFAULT_TARGET_LABEL", "METHODS", "UnknownTarget",
           "resolve_target", *sorted(_LAZY)]

if TYPE_CHECKING:
    from signwatch.attacks.methods import (  # noqa: F401
        AttackResult,
        deepfool,
        fgsm,
        pgd,
        predict_probabilities,
        quantize,
        run_attack,
        targeted_pgd,
    )
    from signwatch.attacks.report import AttackReport, difference_image, save_attack, to_uint8, triptych  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

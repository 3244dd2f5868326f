"""Targeted adversarial images: make the model say a chosen class (Stop, 14, by default).

Attacks work on images in [0, 1] with the model's normalisation inside the graph, so budgets
(``eps``) and norms are in pixel units (8/255 is invisible to most people).

- ``pgd``, ``fgsm``, ``deepfool``, ``run_attack``: the methods (``signwatch.attacks.methods``).
- ``AttackReport``, ``save_attack``, ``triptych``: figures and files (``signwatch.attacks.report``).
- ``targeted_pgd``: the original one-batch API, kept for the demo and the end-to-end test.
- ``signwatch attack``: the command line (``signwatch.attacks.cli``).
"""

from signwatch.attacks.methods import (
    DEFAULT_EPS,
    DEFAULT_STEPS,
    DEFAULT_TARGET,
    METHODS,
    AttackResult,
    deepfool,
    fgsm,
    pgd,
    predict_probabilities,
    quantize,
    run_attack,
    targeted_pgd,
)
from signwatch.attacks.report import AttackReport, difference_image, save_attack, to_uint8, triptych

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_STEPS",
    "DEFAULT_TARGET",
    "METHODS",
    "AttackReport",
    "AttackResult",
    "deepfool",
    "difference_image",
    "fgsm",
    "pgd",
    "predict_probabilities",
    "quantize",
    "run_attack",
    "save_attack",
    "targeted_pgd",
    "to_uint8",
    "triptych",
]

"""Cross-check against IBM's adversarial-robustness-toolbox (ART), where it is installed.

ART is not a dependency (see docs/attacks.md for why we keep our own implementation); this test
shows that, given the same start, ART's targeted PGD and FGSM produce exactly our perturbations.
"""

from __future__ import annotations

import numpy as np
import torch

import art  # noqa: E402,F401  (a dev dependency: the cross-check always runs)

from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescentPyTorch  # noqa: E402
from art.estimators.classification import PyTorchClassifier  # noqa: E402

from signwatch.attacks import fgsm, pgd  # noqa: E402
from signwatch.data.render import render_array  # noqa: E402
from signwatch.model import ModelSpec, build_model  # noqa: E402
from signwatch.model.core import to_unit_tensor  # noqa: E402

STOP, SIZE = 14, 32


def test_art_pgd_and_fgsm_match_ours_step_for_step():
    spec = ModelSpec(input_size=SIZE)
    model = build_model(spec.num_classes, seed=0)
    images, _ = render_array(4, seed=2, split="test", size=SIZE, workers=1, progress=False)
    x = to_unit_tensor(images, SIZE)
    classifier = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, SIZE, SIZE),
                                   nb_classes=spec.num_classes, clip_values=(0.0, 1.0),
                                   preprocessing=(np.array(spec.mean), np.array(spec.std)), device_type="cpu")
    y = np.full(len(x), STOP)
    eps, step, steps = 8 / 255, 2 / 255, 3
    ours = pgd(model, spec, x, STOP, eps=eps, step=step, steps=steps, random_start=False).adversarial.numpy()
    theirs = ProjectedGradientDescentPyTorch(classifier, norm=np.inf, eps=eps, eps_step=step, max_iter=steps,
                                             targeted=True, num_random_init=0, verbose=False).generate(x.numpy(), y=y)
    np.testing.assert_allclose(theirs, ours, atol=1e-6)
    ours = fgsm(model, spec, x, STOP, eps=eps).adversarial.numpy()
    theirs = FastGradientMethod(classifier, norm=np.inf, eps=eps, targeted=True).generate(x.numpy(), y=y)
    np.testing.assert_allclose(theirs, ours, atol=1e-6)

"""The attack methods and their report, on an untrained ResNet18 at 32 px (fast, deterministic)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from signwatch.attacks import (
    AttackReport,
    AttackResult,
    deepfool,
    difference_image,
    fgsm,
    pgd,
    predict_probabilities,
    quantize,
    run_attack,
    targeted_pgd,
    to_uint8,
    triptych,
)
from signwatch.data.render import render_array
from signwatch.model import ModelSpec, build_model
from signwatch.model.core import to_unit_tensor

STOP = 14
SIZE = 32


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    spec = ModelSpec(input_size=SIZE)
    model = build_model(spec.num_classes, seed=0)
    images, labels = render_array(8, seed=1, split="test", size=SIZE, workers=1, progress=False)
    return model, spec, to_unit_tensor(images, SIZE), labels


def _linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).abs().amax(1)


@pytest.mark.parametrize("quantized", [False, True])
def test_pgd_and_fgsm_stay_in_the_eps_ball_and_in_unit_range(setup, quantized):
    model, spec, x, _ = setup
    eps = 4 / 255
    for result in (pgd(model, spec, x, STOP, eps=eps, steps=3, quantize_result=quantized),
                   fgsm(model, spec, x, STOP, eps=eps, quantize_result=quantized)):
        adv = result.adversarial
        assert adv.shape == x.shape
        assert float(adv.min()) >= 0 and float(adv.max()) <= 1
        assert float(_linf(adv, x).max()) <= eps + 1e-6
        if quantized:  # on the 8-bit grid, as the saved images and the service see them
            assert torch.allclose(torch.round(adv * 255) / 255, adv, atol=1e-7)
            assert np.abs(to_uint8(adv).astype(int) - to_uint8(x).astype(int)).max() <= 4


def test_quantize_rounds_to_the_grid_inside_a_fractional_budget():
    clean = torch.full((1, 3, 2, 2), 100 / 255)
    adv = clean + 0.0313  # 7.98 levels: rounding would give 8 and leave the ball
    q = quantize(adv, clean, eps=0.0313)
    assert torch.allclose(q * 255, torch.full_like(q, 107.0), atol=1e-4)
    assert float(_linf(q, clean).max()) <= 0.0313


def test_pgd_reaches_the_target_often(setup):
    model, spec, x, _ = setup
    result = pgd(model, spec, x, STOP, eps=24 / 255, steps=10, seed=0)
    assert result.success_rate >= 0.75, result.predicted
    assert torch.equal(result.success, result.predicted == STOP)
    before = predict_probabilities(model, spec, x)[:, STOP].mean()
    assert float(result.probabilities[:, STOP].mean()) > float(before)


def test_pgd_is_seeded_and_batch_size_does_not_change_a_deterministic_run(setup):
    model, spec, x, _ = setup
    x = x[:4]
    a = pgd(model, spec, x, STOP, steps=2, seed=3)
    b = pgd(model, spec, x, STOP, steps=2, seed=3)
    assert torch.equal(a.adversarial, b.adversarial)
    c = pgd(model, spec, x, STOP, steps=2, random_start=False, batch_size=3)
    d = pgd(model, spec, x, STOP, steps=2, random_start=False, batch_size=4)
    assert torch.allclose(c.adversarial, d.adversarial, atol=1e-6)


class _CountingModel(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_fgsm_is_one_signed_step_of_size_eps(setup):
    model, spec, x, _ = setup
    counted = _CountingModel(model)
    eps = 6 / 255
    result = fgsm(counted, spec, x, STOP, eps=eps, batch_size=8)
    assert counted.calls == 2  # one forward for the gradient, one to predict on the result
    delta = (result.adversarial - x).abs()
    inside = (x > eps) & (x < 1 - eps)  # where clipping cannot bite
    assert torch.allclose(delta[inside], torch.full_like(delta[inside], eps), atol=1e-6)


def test_deepfool_finds_a_small_l2_perturbation_that_reaches_the_target(setup):
    model, spec, x, _ = setup
    before = predict_probabilities(model, spec, x).argmax(1)
    result = deepfool(model, spec, x, STOP, steps=50)
    assert bool(result.success.all()), result.predicted
    assert bool((result.predicted != before)[before != STOP].all())
    assert float(result.adversarial.min()) >= 0 and float(result.adversarial.max()) <= 1
    delta = result.adversarial - x
    l2 = delta.flatten(1).norm(dim=1)
    # smaller than PGD's and FGSM's at 8/255 (whose L2 is about eps * sqrt(pixels))
    budget_l2 = (8 / 255) * np.sqrt(x[0].numel())
    assert float(l2.mean()) < budget_l2
    # near minimal along its own direction: 90% of it is not enough
    shrunk = predict_probabilities(model, spec, (x + 0.9 * delta).clamp(0, 1)).argmax(1)
    assert float((shrunk == STOP).float().mean()) <= 0.25


def test_deepfool_leaves_images_already_on_target_alone(setup):
    model, spec, x, _ = setup
    current = int(predict_probabilities(model, spec, x[:1]).argmax(1))
    result = deepfool(model, spec, x[:1], target=current)
    assert torch.equal(result.adversarial, x[:1])


def test_deepfool_quantized_survives_rounding(setup):
    model, spec, x, _ = setup
    result = deepfool(model, spec, x[:3], STOP, quantize_result=True)
    assert torch.allclose(torch.round(result.adversarial * 255) / 255, result.adversarial, atol=1e-7)
    rounded = torch.from_numpy(to_uint8(result.adversarial)).permute(0, 3, 1, 2).float() / 255
    assert bool((predict_probabilities(model, spec, rounded).argmax(1) == STOP).all())


def test_the_original_targeted_pgd_api_still_works(setup):
    model, spec, x, _ = setup
    result = targeted_pgd(model, spec, x[:4], target=STOP, eps=8 / 255, step=2 / 255, steps=2, seed=0)
    assert isinstance(result, AttackResult)
    adversarial, predicted, success = result.adversarial, result.predicted, result.success
    assert adversarial.shape == x[:4].shape and predicted.shape == (4,) and success.dtype == torch.bool
    assert 0.0 <= result.success_rate <= 1.0
    same = pgd(model, spec, x[:4], STOP, eps=8 / 255, step=2 / 255, steps=2, seed=0)
    assert torch.equal(adversarial, same.adversarial)


def test_run_attack_dispatches_and_refuses_bad_arguments(setup):
    model, spec, x, _ = setup
    assert run_attack("fgsm", model, spec, x[:2]).method == "fgsm"
    for kwargs in ({"method": "cw"}, {"target": 43}, {"target": -1}, {"eps": 0.0}, {"eps": 1.5},
                   {"eps": float("nan")}, {"steps": 0}):
        args = {"method": "pgd"} | kwargs
        with pytest.raises(ValueError):
            run_attack(args.pop("method"), model, spec, x[:2], **args)
    with pytest.raises(ValueError):
        pgd(model, spec, x[:2] * 2, STOP)  # not in [0, 1]
    with pytest.raises(ValueError):
        pgd(model, spec, x[0], STOP)  # not a batch


def test_report_figures_are_exact_on_a_known_perturbation():
    spec = ModelSpec(input_size=8)

    class Fixed(torch.nn.Module):  # class 14 when the mean pixel is above 0.5, else class 3
        def forward(self, z):
            m = z.mean((1, 2, 3))
            logits = torch.zeros(len(z), spec.num_classes)
            logits[:, 14] = 10 * m
            logits[:, 3] = 10 * (1 - m)
            return logits

    clean = torch.full((4, 3, 8, 8), 0.40)
    adv = clean.clone()
    adv[:2] += 0.25  # the first two cross over to class 14
    report = AttackReport.measure(Fixed(), spec, clean, adv, [3, 3, 14, -1], 14, "pgd", 0.25, 10)
    assert report.count == 4
    assert [r["success"] for r in report.images] == [True, True, False, False]
    assert report.success_rate == 0.5
    assert report.success_rate_on_correct == 1.0  # images 0 and 1: correct (3) before, 14 after
    assert report.images[2]["label"] == 14 and report.images[3]["label"] is None
    assert report.mean_linf == pytest.approx(0.125, abs=1e-6)
    assert report.max_linf == pytest.approx(0.25, abs=1e-6)
    assert report.mean_l2 == pytest.approx(0.25 * np.sqrt(3 * 64) / 2, rel=1e-5)
    assert report.correct_count is None  # one label unknown
    summary = report.summary()
    assert "images" not in summary
    for key in ("success_rate", "success_rate_on_correct", "mean_linf", "mean_l2", "mean_target_confidence",
                "mean_original_confidence", "method", "eps", "count"):
        assert key in summary


def test_success_on_correct_counts_only_correct_images_not_already_on_target(setup):
    model, spec, x, _ = setup
    before = predict_probabilities(model, spec, x).argmax(1).numpy()
    labels = before.copy()
    labels[0] = (labels[0] + 1) % 43  # one wrong
    result = pgd(model, spec, x, STOP, eps=24 / 255, steps=5)
    report = AttackReport.measure(model, spec, x, result.adversarial, labels, STOP, "pgd", 24 / 255, 5)
    assert report.correct_count == len(x) - 1
    eligible = [i for i in range(1, len(x)) if labels[i] != STOP]
    expected = np.mean([bool(result.predicted[i] == STOP) for i in eligible])
    assert report.success_rate_on_correct == pytest.approx(expected)
    assert report.clean_accuracy == pytest.approx((len(x) - 1) / len(x))
    unlabelled = AttackReport.measure(model, spec, x, result.adversarial, None, STOP, "pgd", 0.1, 5)
    assert unlabelled.success_rate_on_correct is None


def test_difference_image_is_grey_where_unchanged_and_full_range_at_the_peak():
    clean = np.full((4, 4, 3), 100, np.uint8)
    adv = clean.copy()
    adv[0, 0, 0] = 104
    adv[1, 1, 1] = 98
    diff, scale = difference_image(clean, adv)
    assert diff[3, 3].tolist() == [128, 128, 128]
    assert diff[0, 0, 0] == 255 and scale == pytest.approx(127.5 / 4)
    assert diff[1, 1, 1] == round(127.5 - 2 * scale)
    same, _ = difference_image(clean, clean)
    assert (same == 128).all()


def test_triptych_upscales_three_panels():
    img = np.zeros((32, 32, 3), np.uint8)
    canvas = triptych([(img, ["a", "b"]), (img, ["c"]), (img, ["d", "e", "f"])], panel_size=96)
    assert canvas.width == 3 * 96 + 4 * 8 and canvas.height > 96

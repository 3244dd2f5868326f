"""Screening (signwatch.screening): scores deterministic and independent of the batch, thresholds
at the stated quantile, clean images under the threshold and perturbed ones above it, for any
registered architecture and class count. Small seeded untrained models at 32 px keep it fast."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from signwatch.data.render import render_array
from signwatch.model import ModelSpec, build_model
from signwatch.screening import (
    XU_SQUEEZERS,
    ScreeningCalibration,
    Screener,
    calibrate,
    squeezer,
    threshold_for_fpr,
)
from signwatch.screening.adaptive import adaptive_pgd
from signwatch.screening.squeezers import median_filter

SIZE = 32


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build_model(43, seed=0).eval(), ModelSpec(input_size=SIZE, version="test-resnet18")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return render_array(96, seed=3, split="val", size=SIZE, progress=False)[0]


def perturbed(images: np.ndarray, levels: int, seed: int = 0) -> np.ndarray:
    """Each pixel moved by +-``levels`` grey levels at random: the shape of an L-inf attack's noise."""
    sign = np.random.default_rng(seed).choice([-1, 1], size=images.shape)
    return np.clip(images.astype(int) + levels * sign, 0, 255).astype(np.uint8)


def test_scores_are_deterministic(resnet, images):
    screener = Screener(*resnet)
    calibration = screener.calibrate(images[:64])
    first, second = screener.screen(images[64:], calibration), screener.screen(images[64:], calibration)
    np.testing.assert_array_equal(first.scores, second.scores)
    np.testing.assert_array_equal(first.squeezed, second.squeezed)


@pytest.mark.parametrize("signal,squeezers", [("margin_drop", ("shift:1", "down:2")), ("softmax_l1", XU_SQUEEZERS)])
def test_an_image_scores_the_same_alone_and_in_a_batch(resnet, images, signal, squeezers):
    screener = Screener(*resnet, signal=signal, squeezers=squeezers)
    calibration = screener.calibrate(images[:64])
    batch = screener.screen(images[64:80], calibration)
    for i in (0, 7, 15):
        alone = screener.screen(images[64 + i:65 + i], calibration)
        np.testing.assert_allclose(alone.scores[0], batch.scores[i], rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(alone.squeezed[0], batch.squeezed[i])


@pytest.mark.parametrize("fpr", [0.01, 0.05, 0.2])
def test_threshold_is_the_clean_quantile(fpr):
    scores = np.random.default_rng(1).gamma(2.0, size=500)
    threshold = threshold_for_fpr(scores, fpr)
    assert threshold == np.quantile(scores, 1 - fpr, method="higher")
    assert (scores > threshold).mean() <= fpr
    assert (scores >= threshold).mean() > fpr - 1 / len(scores)


def test_threshold_refuses_nonsense():
    with pytest.raises(ValueError):
        threshold_for_fpr([1.0, 2.0], 0)
    with pytest.raises(ValueError):
        threshold_for_fpr([], 0.01)


def test_calibration_flags_the_stated_share_of_the_reference_and_survives_json(resnet, images):
    screener = Screener(*resnet)
    raw = screener.raw(images)
    calibration = calibrate(raw, "margin_drop", screener.squeezers, fpr=0.05, model_version="v1")
    assert calibration.flag(calibration.score(raw)).mean() <= 0.05
    restored = ScreeningCalibration.from_json(json.loads(json.dumps(calibration.to_json())))
    assert restored == calibration
    with pytest.raises(ValueError, match="calibration is for"):
        Screener(*resnet, signal="softmax_l1", squeezers=XU_SQUEEZERS).screen(images[:2], calibration)


def test_clean_images_pass_and_perturbed_ones_score_higher(resnet, images):
    screener = Screener(*resnet)
    calibration = screener.calibrate(images[:64])
    clean = screener.screen(images[64:], calibration)
    noisy = screener.screen(perturbed(images[64:], 16), calibration)
    assert clean.flagged.mean() <= 0.1
    assert np.median(noisy.scores) > np.median(clean.scores)
    assert noisy.flagged.mean() > clean.flagged.mean()


def test_works_for_another_architecture_and_class_count(images):
    labels = tuple(f"class_{i}" for i in range(5))
    model = build_model(len(labels), seed=0, architecture="mobilenet_v3_small").eval()
    spec = ModelSpec(architecture="mobilenet_v3_small", input_size=SIZE, class_names=labels, version="m")
    for signal, squeezers in (("margin_drop", ("shift:1", "down:2")), ("softmax_l1", XU_SQUEEZERS)):
        screener = Screener(model, spec, signal=signal, squeezers=squeezers)
        calibration = screener.calibrate(images[:64])
        # served images come at any size: they are resized to the model's input as the service does
        big = np.repeat(np.repeat(images[64:70], 2, axis=1), 2, axis=2)
        result = screener.screen(big, calibration)
        assert result.probabilities.shape == (6, 5)
        assert result.squeezed.shape == (6, SIZE, SIZE, 3) and result.squeezed.dtype == np.uint8
        assert np.isfinite(result.scores).all() and set(result.squeezer) <= set(squeezers)


def test_a_served_forward_can_stand_in_for_the_model(resnet, images):
    model, spec = resnet
    calls = []

    def forward(batch):
        calls.append(batch.shape[0])
        return model(batch)

    screener = Screener(None, spec, forward=forward)
    calibration = screener.calibrate(images[:64])
    screener.screen(images[64:72], calibration)
    assert calls[-1] == 8 * (1 + len(screener.squeezers))  # one forward: the batch and each squeezed copy


def test_median_filter_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(2, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    for size in (2, 3):
        expected = np.stack([[ndimage.median_filter(x[i, c].numpy(), size=size, mode="reflect") for c in range(3)]
                             for i in range(2)])
        np.testing.assert_array_equal(median_filter(x, size).numpy(), expected)


def test_squeezers_keep_shape_and_range_and_unknown_names_are_refused():
    x = torch.rand(2, 3, 15, 15, generator=torch.Generator().manual_seed(0))
    for name in ("bits:1", "bits:5", "median:2", "median:3", "shift:1", "down:2", "down:3"):
        y = squeezer(name)(x)
        assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1
    assert len(torch.unique(squeezer("bits:1")(x))) == 2
    for bad in ("bits:0", "blur:1", "median", "median:x"):
        with pytest.raises(ValueError, match="unknown squeezer"):
            squeezer(bad)


def test_adaptive_attack_stays_in_its_budget(resnet, images):
    model, spec = resnet
    x = torch.from_numpy(images[:4]).permute(0, 3, 1, 2).float() / 255
    result = adaptive_pgd(model, spec, x, ("shift:1", "down:2", "bits:5"), target=3, eps=8 / 255, steps=2)
    assert float((result.adversarial - x).abs().max()) <= 8 / 255 + 1e-6
    assert result.adversarial.shape == x.shape and result.target == 3

"""Overlay and panel rendering: sizes, colours, accepted inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from signwatch.saliency import heatmap, jet, overlay, side_by_side


def test_jet_runs_blue_to_red():
    low, mid, high = jet(np.array([0.0, 0.5, 1.0]))
    assert low[2] > 0.4 and low[0] == 0 and low[1] == 0
    assert mid[1] > 0.9
    assert high[0] > 0.4 and high[1] == 0 and high[2] == 0
    assert jet(np.zeros((4, 5))).shape == (4, 5, 3)


def test_overlay_size_and_hottest_pixel_is_red():
    image = np.full((64, 64, 3), 128, dtype=np.uint8)
    saliency = np.zeros((64, 64), dtype=np.float32)
    saliency[40, 20] = 1.0
    out = overlay(image, saliency, alpha=0.6)
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (64, 64)
    r, g, b = np.asarray(out)[40, 20].astype(int)
    assert r > g + 40 and r > b + 40
    r, g, b = np.asarray(out)[0, 0].astype(int)
    assert b > r + 40  # the least relevant pixels are blue


def test_overlay_accepts_tensors_other_sizes_and_grey_images():
    image = np.random.default_rng(0).integers(0, 256, (48, 80), dtype=np.uint8)
    saliency = torch.rand(1, 1, 12, 20)
    out = overlay(image, saliency)
    assert out.size == (80, 48)
    assert np.array_equal(np.asarray(overlay(image, saliency, alpha=0.0))[..., 0], image)


def test_overlay_rejects_unnormalised_float_images():
    with pytest.raises(TypeError):
        overlay(np.zeros((8, 8, 3), dtype=np.float32), np.zeros((8, 8)))
    with pytest.raises(ValueError):
        overlay(np.zeros((8, 8, 3), dtype=np.uint8), np.zeros((2, 8, 8)))


def test_flat_saliency_does_not_divide_by_zero():
    out = np.asarray(heatmap(np.full((8, 8), 3.0)))
    assert out.shape == (8, 8, 3) and np.isfinite(out).all()


def test_side_by_side_upscales_small_panels_and_titles_them():
    sign = Image.fromarray(np.full((64, 64, 3), 200, dtype=np.uint8))
    heat = heatmap(np.random.default_rng(1).random((64, 64)))
    wide = Image.new("RGB", (128, 64), "blue")
    out = side_by_side([("input", sign), ("FullGrad: a rather long title that cannot fit", heat), ("wide", wide)])
    assert out.mode == "RGB"
    assert out.height > 192
    assert out.width >= 192 + 192 + 384
    # Titles are drawn: the strip above the panels is not all white.
    strip = np.asarray(out)[: out.height - 192 - 6]
    assert (strip < 128).any()
    with pytest.raises(ValueError):
        side_by_side([])

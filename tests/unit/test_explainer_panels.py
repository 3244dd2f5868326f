"""The explanation panel as the reference shows it: for an adversarial image whose original is known,
each image with its own map for its own predicted class, side by side, then original | adversarial |
difference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from signwatch.attacks import pgd
from signwatch.data import render_batch
from signwatch.data.classes import STOP
from signwatch.explaining import Explainer
from signwatch.model import load_model, preprocess
from signwatch.model.core import to_unit_tensor
from signwatch.ports.store_file import FileStore
from signwatch.saliency import fullgrad
from signwatch.saliency.render import PANEL_SIZE, stacked

PAD = 6  # side_by_side's padding


@pytest.fixture(scope="module")
def pair():
    model, spec = load_model()
    original = render_batch([25], seed=3, size=spec.input_size, variant="clean")
    attacked = pgd(model, spec, to_unit_tensor(list(original), spec.input_size), target=STOP, eps=8 / 255,
                   steps=20, seed=0, quantize_result=True)
    adversarial = (attacked.adversarial.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return model, spec, original[0], adversarial[0]


def _tile(panel: Image.Image, k: int) -> np.ndarray:
    """The k-th 192 px tile of a panel's first row (titles above, as side_by_side draws them)."""
    a = np.asarray(panel)
    top = panel.height - PANEL_SIZE - PAD if panel.height < 2 * PANEL_SIZE else None
    x = PAD + k * (PANEL_SIZE + PAD)
    if top is None:  # two rows: find where the first row's tiles begin
        top = _first_row_top(a)
    return a[top:top + PANEL_SIZE, x:x + PANEL_SIZE]


def _first_row_top(a: np.ndarray) -> int:
    column = a[:, PAD + PANEL_SIZE // 2]
    non_white = np.where((column != 255).any(axis=1))[0]
    # the title's pixels come first, then a white gap, then the tile
    gaps = np.where(np.diff(non_white) > 1)[0]
    return int(non_white[gaps[0] + 1])


def same(a: np.ndarray, b: np.ndarray) -> bool:
    # A batch of two and a batch of one round a few overlay pixels differently (float sums): by one or two.
    return a.shape == b.shape and int(np.abs(a.astype(int) - b).max()) <= 3


def test_each_image_gets_its_own_map_for_its_own_class(pair, tmp_path):
    model, spec, original, adversarial = pair
    explainer = Explainer(model, spec, FileStore(tmp_path))
    [result] = explainer.explain_images([adversarial], [original])
    with torch.no_grad():
        logits = model(preprocess([adversarial, original], spec))
    adv_class, orig_class = logits.argmax(1).tolist()
    assert adv_class == STOP and orig_class == 25, "the attack must succeed for this test to mean anything"
    assert (result.predicted_class, result.original_predicted_class) == (STOP, 25)
    assert result.original_label == spec.class_names[25] and 0 < result.original_probability <= 1
    assert result.completeness_rel_error < 1e-4

    # The original's map in the panel is the original's own FullGrad map (for class 25), the same
    # tile as when the original is explained alone; the adversarial's is its own (class 14).
    [alone] = explainer.explain_images([original])
    [adv_alone] = explainer.explain_images([adversarial])
    assert same(_tile(result.panel, 3), _tile(alone.panel, 1))
    assert same(_tile(result.panel, 1), _tile(adv_alone.panel, 1))
    assert np.abs(_tile(result.panel, 1).astype(int) - _tile(result.panel, 3)).mean() > 10
    maps = fullgrad(model, preprocess([adversarial, original], spec)).target.tolist()
    assert maps == [STOP, 25]

    # Two rows: the comparison (4 tiles), then original | adversarial | difference (3 tiles).
    assert result.panel.width == 4 * PANEL_SIZE + 5 * PAD
    assert result.panel.height > 2 * PANEL_SIZE
    a = np.asarray(result.panel)
    bottom = a[-PANEL_SIZE - PAD:-PAD]
    left = (result.panel.width - (3 * PANEL_SIZE + 4 * PAD)) // 2 + PAD
    difference = bottom[:, left + 2 * (PANEL_SIZE + PAD): left + 3 * PANEL_SIZE + 2 * PAD]
    assert difference.std() > 20, "the amplified perturbation is visible, not flat grey"
    # pixels stay pixels in the triptych (nearest neighbour), so the perturbation is not smoothed away
    expected = np.asarray(Image.fromarray(original).resize((PANEL_SIZE, PANEL_SIZE), Image.NEAREST))
    assert np.array_equal(bottom[:, left:left + PANEL_SIZE], expected)


def test_a_target_applies_to_the_input_and_the_original_keeps_its_own_class(pair, tmp_path):
    model, spec, original, adversarial = pair
    [result] = Explainer(model, spec, FileStore(tmp_path)).explain_images([adversarial], [original], target=3)
    [alone] = Explainer(model, spec, FileStore(tmp_path)).explain_images([original])
    assert same(_tile(result.panel, 3), _tile(alone.panel, 1))
    [for3] = Explainer(model, spec, FileStore(tmp_path)).explain_images([adversarial], target=3)
    assert same(_tile(result.panel, 1), _tile(for3.panel, 1))
    assert not same(_tile(result.panel, 1), _tile(alone.panel, 1))
    for method in ("gradcam", "input_x_gradient"):
        [r] = Explainer(model, spec, FileStore(tmp_path)).explain_images([adversarial], [original], method=method)
        assert r.original_predicted_class == 25 and r.panel.width == result.panel.width
    with pytest.raises(ValueError, match="originals"):
        Explainer(model, spec, FileStore(tmp_path)).explain_images([adversarial], [original, original])


def test_stacked_centres_rows():
    wide, narrow = Image.new("RGB", (100, 20), "red"), Image.new("RGB", (40, 10), "blue")
    out = np.asarray(stacked([wide, narrow], padding=4))
    assert out.shape == (20 + 4 + 10, 100, 3)
    assert (out[24:, 30:70] == [0, 0, 255]).all() and (out[24:, :30] == 255).all()
    with pytest.raises(ValueError):
        stacked([])

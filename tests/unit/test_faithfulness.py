from __future__ import annotations

import torch
import torch.nn as nn

from signwatch.saliency.faithfulness import FRACTIONS, _ranks, _remove, compare, evaluate_maps


class Spotlight(nn.Module):
    """A model whose class-0 score only looks at the top-left quarter of the image."""

    def forward(self, x):
        s = x[:, :, :8, :8].mean(dim=(1, 2, 3)) * 4 - 2
        return torch.stack([s, -s], dim=1)


def test_remove_replaces_exactly_k_percent_with_the_mean_colour():
    x = torch.rand(2, 3, 16, 16)
    order = _ranks(torch.rand(2, 1, 16, 16), seed=0)
    out = _remove(x, order, 64)
    changed = (out != x).any(1).flatten(1).sum(1)
    assert changed.tolist() == [64, 64]
    assert torch.equal(_remove(x, order, 0), x)


def test_an_oracle_map_beats_a_random_one():
    torch.manual_seed(0)
    model = Spotlight()
    x = torch.rand(8, 3, 16, 16) * 0.1  # dark, with a bright top-left quarter
    x[:, :, :8, :8] += 0.9
    target = torch.zeros(8, dtype=torch.long)
    oracle = torch.zeros(8, 1, 16, 16)
    oracle[:, :, :8, :8] = x[:, :, :8, :8].mean(1, keepdim=True)
    good = evaluate_maps(model, x, target, oracle)
    bad = evaluate_maps(model, x, target, torch.rand(8, 1, 16, 16))
    assert good["least_removed_change"]["0.1"] < bad["least_removed_change"]["0.1"]
    assert good["most_removed_drop"]["0.1"] > bad["most_removed_drop"]["0.1"]
    assert good["deletion_auc"] < bad["deletion_auc"]
    assert len(good["deletion_curve"]) == 21


def test_compare_reports_every_method_and_fraction():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 5)).eval()
    table = compare(model, torch.randn(4, 3, 16, 16), batch_size=2)
    assert set(table) == {"fullgrad", "input_x_gradient", "gradcam", "random"}
    for row in table.values():
        assert set(row["least_removed_change"]) == {str(k) for k in FRACTIONS}

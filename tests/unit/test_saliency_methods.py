"""Grad-CAM and the input-gradient maps: shapes, ranges, targets, default layers, model hygiene."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from signwatch.saliency import fullgrad, gradcam, input_gradient, input_x_gradient

SIZE = 64


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=43).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def assert_unit_maps(maps: torch.Tensor, batch: int) -> None:
    assert maps.shape == (batch, 1, SIZE, SIZE)
    assert torch.isfinite(maps).all()
    flat = maps.flatten(1)
    assert float(flat.amin()) >= 0.0 and float(flat.amax()) <= 1.0
    assert torch.allclose(flat.amax(dim=1), torch.ones(batch), atol=1e-6)  # normalised per sample
    assert torch.allclose(flat.amin(dim=1), torch.zeros(batch), atol=1e-6)


@pytest.mark.parametrize("method", [input_x_gradient, input_gradient, gradcam])
def test_shapes_and_ranges(model, x, method):
    assert_unit_maps(method(model, x), 2)


@pytest.mark.parametrize("method", [input_x_gradient, input_gradient, gradcam])
def test_batch_equals_one_by_one(model, x, method):
    batch = method(model, x)
    single = method(model, x[1:2])
    torch.testing.assert_close(single, batch[1:2], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", [input_x_gradient, input_gradient, gradcam])
def test_target_is_respected(model, x, method):
    predicted = model(x).argmax(dim=1)
    default = method(model, x)
    torch.testing.assert_close(default, method(model, x, target=predicted))
    assert not torch.allclose(default, method(model, x, target=(predicted + 1) % 43))


def test_input_x_gradient_is_fullgrads_input_term(model, x):
    """Same gradient as FullGrad's first term, so the two methods must see the same pixels."""
    ixg = input_x_gradient(model, x)
    assert ixg.shape == fullgrad(model, x).maps.shape
    xr = x.clone().requires_grad_(True)
    logits = model(xr)
    (g,) = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), xr)
    manual = (g * x).abs().sum(1, keepdim=True)
    lo, hi = manual.flatten(1).amin(1), manual.flatten(1).amax(1)
    torch.testing.assert_close(ixg, (manual - lo.view(-1, 1, 1, 1)) / (hi - lo).view(-1, 1, 1, 1))


def test_gradcam_default_layer_is_last_conv_block(model, x):
    default = gradcam(model, x)
    torch.testing.assert_close(default, gradcam(model, x, layer=model.layer4))
    torch.testing.assert_close(default, gradcam(model, x, layer="layer4.1"))
    earlier = gradcam(model, x, layer="layer3")
    assert_unit_maps(earlier, 2)
    assert not torch.allclose(default, earlier)
    with pytest.raises(ValueError):
        gradcam(model, x, layer="no.such.layer")


def test_gradcam_on_vgg_with_in_place_relu():
    torch.manual_seed(1)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["A"], batch_norm=True)
    vgg = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 43)).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    assert_unit_maps(gradcam(vgg, x), 2)
    # The explicit layer's output is consumed by an in-place ReLU; its activation must survive that.
    assert_unit_maps(gradcam(vgg, x, layer=features[-3]), 2)


@pytest.mark.parametrize("method", [input_x_gradient, input_gradient, gradcam])
def test_model_left_as_found(model, x, method):
    model.train()
    try:
        stats = model.bn1.running_mean.clone()
        method(model, x)
        assert all(m.training for m in model.modules())
        assert all(p.grad is None for p in model.parameters())
        assert all(len(m._forward_hooks) == 0 for m in model.modules())
        assert torch.equal(model.bn1.running_mean, stats)
    finally:
        model.eval()

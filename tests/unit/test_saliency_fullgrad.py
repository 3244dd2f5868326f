"""FullGrad: the completeness identity on real torchvision architectures, pairing by module,
in-place safety, batch independence, agreement with the per-channel reference, model hygiene."""

from __future__ import annotations

import contextlib
import importlib
import logging

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models.vgg import VGG, cfgs, make_layers

from signwatch.saliency import FullGradResult, fullgrad, straightforward_fullgrad

# The package re-exports the function under the module's name, so reach the module itself this way.
fullgrad_module = importlib.import_module("signwatch.saliency.fullgrad")

TOL = 1e-4
SIZE = 64


def randomize_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    # Fresh BatchNorm layers (mean 0, var 1, weight 1, bias 0) have a zero effective bias, which
    # would let a wrongly paired or mis-computed bias pass unnoticed.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return model.eval()


def vgg11_bn(num_classes: int = 43) -> nn.Module:
    """torchvision's VGG class with vgg11_bn's features and a 256-unit head.

    The stock 25088x4096 head takes seconds to initialise on a small machine; the head's kind of
    layers (Linear with bias, in-place ReLU, Dropout) is what matters here, not its width.
    """
    model = VGG.__new__(VGG)
    nn.Module.__init__(model)
    model.features = make_layers(cfgs["A"], batch_norm=True)
    model.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    model.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 256), nn.ReLU(True), nn.Dropout(),
        nn.Linear(256, 256), nn.ReLU(True), nn.Dropout(),
        nn.Linear(256, num_classes),
    )
    return model


BUILDERS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=43),
    "resnet50": lambda: torchvision.models.resnet50(num_classes=43),
    "vgg11_bn": vgg11_bn,
}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def arch(request):
    torch.manual_seed(0)
    return request.param, randomize_bn(BUILDERS[request.param]())


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return randomize_bn(torchvision.models.resnet18(num_classes=43))


def images(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_completeness_on_torchvision_architectures(arch):
    name, model = arch
    x = images()
    result = fullgrad(model, x)
    assert isinstance(result, FullGradResult)
    assert result.maps.shape == (3, 1, SIZE, SIZE)
    assert result.maps.dtype == x.dtype and result.maps.device == x.device
    assert torch.isfinite(result.maps).all() and (result.maps >= 0).all()
    assert result.completeness_rel_error.shape == (3,)
    assert result.max_completeness_error <= TOL, (name, result.completeness_rel_error)
    # The decomposition is only a meaningful check when the biases carry real weight.
    assert result.scores.abs().min() > 1e-3


def test_completeness_catches_in_place_and_eps_mistakes(resnet18, monkeypatch):
    """Negative controls: the check above must fail for the two classic implementation bugs."""
    x = images(2)
    for m in resnet18.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.1  # large enough that a forgotten eps is visible
    try:
        assert fullgrad(resnet18, x).max_completeness_error <= TOL

        true_bias = fullgrad_module.effective_bias

        def bias_without_eps(module):
            if isinstance(module, nn.BatchNorm2d):
                return (module.bias - module.running_mean * module.weight / module.running_var.sqrt()).detach()
            return true_bias(module)

        monkeypatch.setattr(fullgrad_module, "effective_bias", bias_without_eps)
        assert fullgrad(resnet18, x).max_completeness_error > 1e-3
        monkeypatch.undo()

        @contextlib.contextmanager
        def capture_without_clone(layers):
            captured = {}
            handles = [l.register_forward_hook(lambda m, i, o: captured.setdefault(m, []).append(o)) for l in layers]
            try:
                yield captured
            finally:
                for h in handles:
                    h.remove()

        monkeypatch.setattr(fullgrad_module, "_capture_outputs", capture_without_clone)
        assert fullgrad(resnet18, x).max_completeness_error > 1e-3
    finally:
        for m in resnet18.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = 1e-5


class Scrambled(nn.Module):
    """Registered in the opposite order to execution, same-shaped layers with different biases,
    one BatchNorm used twice, one without affine parameters, one branch that never reaches the output."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 5)
        self.bn_unused = nn.BatchNorm2d(8)
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1)
        self.bn_shared = nn.BatchNorm2d(8)
        self.bn_plain = nn.BatchNorm2d(8, affine=False)
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.relu(self.bn_shared(self.conv_a(x)))
        _ = self.bn_unused(x)
        y = self.bn_plain(self.conv_b(x))
        y += x
        y = self.relu(self.bn_shared(nn.functional.max_pool2d(y, 2)))
        return self.head(y.mean(dim=(2, 3)))


def test_pairing_is_by_module_not_by_order():
    torch.manual_seed(3)
    model = randomize_bn(Scrambled(), seed=4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.uniform_(-1, 1)
    result = fullgrad(model, images(4))
    assert result.max_completeness_error <= TOL, result.completeness_rel_error


def test_unmodelled_bias_is_reported(caplog):
    class ShiftedNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.shift = nn.GroupNorm(2, 4)  # a bias FullGrad's decomposition does not cover
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return self.head(self.shift(self.conv(x)).mean(dim=(2, 3)))

    torch.manual_seed(5)
    model = ShiftedNet()
    with torch.no_grad():
        model.shift.bias.fill_(2.0)
    with caplog.at_level(logging.WARNING, logger="signwatch.saliency.fullgrad"):
        result = fullgrad(model, images(2))
    assert result.max_completeness_error > 1e-3
    assert "shift" in caplog.text


def test_batch_equals_one_by_one(resnet18):
    x = images(4, seed=7)
    batch = fullgrad(resnet18, x)
    for i in range(4):
        single = fullgrad(resnet18, x[i : i + 1])
        torch.testing.assert_close(single.maps, batch.maps[i : i + 1], rtol=1e-4, atol=1e-4)
        assert single.target.item() == batch.target[i].item()


def test_agrees_with_straightforward_per_channel_upsampling(arch):
    name, model = arch
    # The reference upsamples ResNet-50's ~26,000 channels one by one: one sample is plenty there.
    x = images(1 if name == "resnet50" else 2, seed=11)
    ours = fullgrad(model, x).maps
    ref = straightforward_fullgrad(model, x)
    assert ref.shape == ours.shape
    for a, b in zip(ours.flatten(1), ref.flatten(1)):
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] >= 0.999


def test_explicit_target_is_respected(resnet18):
    x = images(2, seed=2)
    default = fullgrad(resnet18, x)
    assert torch.equal(default.target, default.logits.argmax(dim=1))

    other = int((default.target[0] + 1) % 43)
    one = fullgrad(resnet18, x, target=other)
    assert one.target.tolist() == [other, other]
    torch.testing.assert_close(one.scores, one.logits[:, other])
    assert one.max_completeness_error <= TOL
    assert not torch.allclose(one.maps, default.maps)

    per_sample = fullgrad(resnet18, x, target=torch.tensor([5, 17]))
    assert per_sample.target.tolist() == [5, 17]
    torch.testing.assert_close(per_sample.scores, per_sample.logits[[0, 1], [5, 17]])

    with pytest.raises(ValueError):
        fullgrad(resnet18, x, target=43)
    with pytest.raises(ValueError):
        fullgrad(resnet18, x, target=[1, 2, 3])


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_model_left_as_found(resnet18):
    model = resnet18
    model.train()
    model.layer1.eval()  # a caller's per-module choice must survive
    model.fc.weight.requires_grad_(False)
    flags = {n: m.training for n, m in model.named_modules()}
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        result = fullgrad(model, images(2))
        assert result.max_completeness_error <= TOL  # ran in eval mode, on running statistics
        assert {n: m.training for n, m in model.named_modules()} == flags
        assert {n: p.requires_grad for n, p in model.named_parameters()} == requires
        assert all(p.grad is None for p in model.parameters())
        assert _hooks(model) == 0
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k  # running statistics untouched
    finally:
        model.fc.weight.requires_grad_(True)
        model.eval()


def test_hooks_removed_and_mode_restored_on_error(resnet18):
    resnet18.train()
    try:
        with pytest.raises(RuntimeError):
            fullgrad(resnet18, torch.randn(1, 5, SIZE, SIZE))  # wrong channel count fails inside the forward
        assert _hooks(resnet18) == 0
        assert all(m.training for m in resnet18.modules())
    finally:
        resnet18.eval()


def test_batchnorm_without_running_stats_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ValueError, match="running statistics"):
        fullgrad(model, images(1))


def test_works_from_inference_mode_and_without_check(resnet18):
    with torch.inference_mode():
        x = images(2)
        result = fullgrad(resnet18, x)
        unchecked = fullgrad(resnet18, x, check_completeness=False)
    assert result.max_completeness_error <= TOL
    assert torch.isnan(unchecked.completeness_rel_error).all()
    torch.testing.assert_close(unchecked.maps, result.maps)
    norm = result.normalized_maps()
    assert float(norm.amin()) >= 0 and abs(float(norm.flatten(1).amax(1).min()) - 1) < 1e-4


def test_a_logit_near_zero_is_judged_by_the_absolute_error(resnet18, caplog):
    """A winning logit of about zero (adversarial signs on untrained heads) makes |s - sum| / |s|
    rounding noise over a tiny number: the error is absolute under one logit unit, and no warning."""
    from signwatch.saliency.fullgrad import completeness_error

    torch.manual_seed(0)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        resnet18.fc.bias -= resnet18.eval()(image).max() - 1e-4  # the winner's logit is now about 1e-4
    with caplog.at_level(logging.WARNING, logger="signwatch.saliency.fullgrad"):
        result = fullgrad(resnet18, image)
    assert result.scores.abs().max() < 1e-3
    assert result.max_completeness_error < 1e-4  # relative to |s| it was 1e-3 to 1e-2
    assert "completeness violated" not in caplog.text
    s, total = torch.tensor([1e-3, 4.0], dtype=torch.float64), torch.tensor([2e-3, 3.0], dtype=torch.float64)
    assert completeness_error(s, total).tolist() == pytest.approx([1e-3, 0.25])

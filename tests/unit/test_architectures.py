"""Every registered family, through one small member at 64 px: explained (FullGrad's completeness,
Grad-CAM on the registry's layer), attacked (PGD towards a class named by label), recorded (the
debugger's default regex per architecture, FullGrad from the trial equal to the live map, modest
steps under smdebug names) and served (the frozen graph equals eager, or eager with a log line).

Models are torchvision's with random weights and perturbed BatchNorm parameters and statistics:
fresh statistics give zero effective biases, which would let a wrongly paired bias pass. (The
attack gets models of its own: see ``attackable``.) VGG keeps torchvision's class and features with
a 256-wide head (the stock 25088x4096 head takes seconds to initialise and is not what any check
here is about).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from signwatch.attacks import pgd, resolve_target
from signwatch.debugger import Debugger, DebuggerConfig, create_trial, fullgrad_result_from_trial
from signwatch.explaining import Explainer
from signwatch.model import ModelSpec, build_model, normalize
from signwatch.model import frozen as frozen_module
from signwatch.model.architectures import ARCHITECTURES, FAMILIES, default_include_regex
from signwatch.model.core import to_unit_tensor
from signwatch.ports.store_file import FileStore
from signwatch.saliency import fullgrad, gradcam
from tests.unit.test_saliency_fullgrad import randomize_bn, vgg11_bn

MEMBERS = ["resnet18", "vgg11_bn", "regnet_x_400mf", "densenet121", "mobilenet_v3_small", "efficientnet_b0"]
SIZE = 64
LABELS = tuple(f"class_{i}" for i in range(10))  # what `signwatch model import` names classes by default


def test_every_family_has_a_member_here():
    assert {ARCHITECTURES[m].family for m in MEMBERS} == set(FAMILIES)


def signs(count: int, seed: int) -> torch.Tensor:
    """Rendered signs in [0, 1] (the attack's input space)."""
    from signwatch.data.render import render_array

    arr, _ = render_array(count, seed=seed, split="test", size=SIZE, workers=1, progress=False)
    return to_unit_tensor(arr, SIZE)


def with_estimated_statistics(model: torch.nn.Module, spec: ModelSpec) -> torch.nn.Module:
    """BatchNorm statistics as training would leave them: the mean and variance over 16 signs."""
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batch
    with torch.no_grad():
        model.train()(normalize(signs(16, seed=5), spec))
    return model.eval()


@pytest.fixture(scope="module", params=MEMBERS)
def served(request):
    """(architecture, model, spec) of one member, built once for all tests of this module."""
    name = request.param
    torch.manual_seed(0)
    model = vgg11_bn(len(LABELS)) if name == "vgg11_bn" else build_model(len(LABELS), seed=0, architecture=name)
    spec = ModelSpec(architecture=name, input_size=SIZE, class_names=LABELS, version=f"{name}-test")
    return ARCHITECTURES[name], randomize_bn(model), spec


@pytest.fixture(scope="module")
def images01():
    return signs(4, seed=3)


def test_fullgrad_is_complete_where_exact_and_within_the_documented_bound_elsewhere(served, images01, caplog):
    arch, model, spec = served
    with caplog.at_level(logging.WARNING, logger="signwatch.saliency.fullgrad"):
        result = fullgrad(model, normalize(images01, spec), warn_above=arch.fullgrad_warn_above)
    assert result.scores.abs().min() > 1e-3  # a check only where the biases carry weight
    if arch.fullgrad_exact:
        assert result.max_completeness_error < 1e-4, result.completeness_rel_error
    else:
        assert result.max_completeness_error < arch.fullgrad_warn_above, result.completeness_rel_error
    assert "completeness violated" not in caplog.text  # no warning on every map of an approximate family


def test_gradcam_reads_the_registrys_layer(served, images01):
    arch, model, spec = served
    layer = arch.gradcam_layer(model)
    seen = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        maps = gradcam(model, normalize(images01, spec))  # the default is the registry's layer
    finally:
        handle.remove()
    assert seen and len(seen[0]) == 4 and min(seen[0][-2:]) >= 2  # a spatial map, not a vector
    assert maps.shape == (4, 1, SIZE, SIZE)
    assert torch.allclose(maps.flatten(1).amax(1), torch.ones(4)) and float(maps.std()) > 0.05
    torch.testing.assert_close(maps, gradcam(model, normalize(images01, spec), layer=layer))


def test_the_explainer_draws_both_maps_and_reports_how_exact_fullgrad_is(served, images01, tmp_path, caplog):
    # DenseNet applies an in-place ReLU to ``features``: the explicit layer's clone keeps Grad-CAM working.
    arch, model, spec = served
    explainer = Explainer(model, spec, FileStore(tmp_path))
    image = (images01[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    [cam] = explainer.explain_images([image], method="gradcam")
    with caplog.at_level(logging.WARNING, logger="signwatch.saliency.fullgrad"):
        [full] = explainer.explain_images([image], method="fullgrad")
    assert cam.panel.width > 0 and full.completeness_rel_error is not None
    assert "completeness violated" not in caplog.text
    facts = explainer.model_facts()
    assert facts["fullgrad"] == ("exact" if arch.fullgrad_exact else "approximate")
    assert full.completeness_rel_error < facts["fullgrad_warn_above"]


def attackable(arch, spec: ModelSpec, images01: torch.Tensor, target: int) -> torch.nn.Module:
    """An untrained member whose ``target`` lies just behind the winning class on the closest image.

    A trained classifier has most classes within a few grey levels of any image; an untrained one
    does not: its target may lie far off (logits of MobileNetV3 and EfficientNet at initialisation
    are 1e-10 apart, hardswish/SiLU and squeeze-excitation shrinking the unnormalised signal at every
    block, so those two get BatchNorm statistics estimated on signs, as training leaves them). So the
    head's bias moves the target to 0.1 logit standard deviations behind the winner on the closest
    image; PGD must still climb every image's own margin through the family's graph.
    """
    torch.manual_seed(0)
    if arch.family == "vgg":
        model = vgg11_bn(len(LABELS))
        for m in model.modules():  # torchvision's initialisation, which the narrow head's builder skips
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                torch.nn.init.zeros_(m.bias)
        model.eval()
    else:
        model = build_model(len(LABELS), seed=0, architecture=arch.name)
    if arch.family in ("mobilenet_v3", "efficientnet"):
        model = with_estimated_statistics(model, spec)
    head = dict(model.named_modules())[arch.head.rsplit(".", 1)[0]]
    with torch.no_grad():
        logits = model(normalize(images01, spec))
        others = logits.clone()
        others[:, target] = -math.inf
        margin = others.amax(1) - logits[:, target]
        head.bias[target] += float(margin.min()) - 0.1 * float(logits.std())
    return model


def test_pgd_reaches_a_target_named_by_label(served, images01):
    arch, _, spec = served
    target = resolve_target(spec, "class_3")
    model = attackable(arch, spec, images01, target)
    with torch.no_grad():
        assert not (model(normalize(images01, spec)).argmax(1) == target).any()
    result = pgd(model, spec, images01, target="class_3", eps=16 / 255, steps=20, step=0.25 / 255, seed=0)
    assert result.target == target == 3
    assert result.success_rate >= 0.75, (arch.name, result.predicted.tolist())


def test_the_debugger_records_what_fullgrad_needs_and_nothing_large(served, images01, tmp_path):
    arch, model, spec = served
    store = FileStore(tmp_path)
    debugger = Debugger(store, "ep", worker="w0", model=model)
    assert debugger.config.include_regex == arch.include_regex(model) == default_include_regex(model)
    debugger.configure(DebuggerConfig(enabled=True))  # the regex left to the model's default
    batch = normalize(images01[:2], spec)
    debugger.forward(model, batch, ["a", "b"])
    assert debugger.drain(30)

    trial = create_trial("tensors/ep", store=store)
    live = fullgrad(model, batch, warn_above=math.inf)
    for step in (0, 1):
        meta = trial.step_meta(step)
        assert meta["model_class"] == arch.root and meta["include_regex"] == arch.include_regex(model)
        recorded = fullgrad_result_from_trial(trial, step)  # strict: every conv/BN layer is there
        torch.testing.assert_close(recorded.map, live.maps[step : step + 1], rtol=1e-4,
                                   atol=1e-4 * float(live.maps[step].max()))
        if not math.isnan(recorded.completeness_rel_error):  # where the regex records the head's output
            assert recorded.completeness_rel_error == pytest.approx(float(live.completeness_rel_error[step]),
                                                                    rel=1e-3, abs=1e-6)
    # smdebug's names, rooted at the model's class name
    assert trial.tensor(f"{arch.root}_input_0").value(0).shape == (1, 3, SIZE, SIZE)
    assert trial.tensor_names(regex=f"^{arch.root}_") and trial.tensor_names(regex="^gradient/")

    # Modest: no convolution or linear weight (but the reference's ResNet downsampling, which its
    # regex names), a small share of the parameters' bytes.
    modules = dict(model.named_modules())
    meta = trial.step_meta(0)
    weights = [n for n in meta["tensors"] if n.endswith(".weight") and not isinstance(
        modules[n.rsplit(".", 1)[0]], _BatchNorm)]
    assert all(arch.family == "resnet" and ".downsample.0." in n for n in weights), weights
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    recorded_parameters = sum(math.prod(t["shape"]) * np.dtype(t["dtype"]).itemsize for n, t in meta["tensors"].items()
                              if "/" not in n and "_output" not in n and n != "image")
    assert recorded_parameters < 0.05 * parameters
    assert sum(math.prod(t["shape"]) * np.dtype(t["dtype"]).itemsize for t in meta["tensors"].values()) < 16e6


def test_the_frozen_forward_equals_eager(served, images01):
    arch, model, spec = served
    forward = frozen_module.served_forward(model, spec, "frozen")
    assert isinstance(forward, frozen_module.FrozenForward)
    assert (forward.batched is not forward.single) == arch.onednn_batches or arch.family == "vgg"
    x = normalize(torch.cat([images01, images01.flip(-1)]), spec).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for batch in (x[:1], x):  # one image: the plainly frozen graph; more: the batch graph
            expected, got = model(batch), forward(batch)
            scale = float(expected.abs().max())
            assert torch.allclose(expected, got, atol=1e-4 * max(scale, 1.0)), (expected - got).abs().max()


def test_a_model_that_cannot_be_frozen_is_served_eager_with_a_log_line(monkeypatch, caplog):
    model, spec = build_model(len(LABELS), seed=0), ModelSpec(input_size=32, class_names=LABELS)

    def untraceable(*args, **kwargs):
        raise RuntimeError("Tracer cannot infer type of output")

    monkeypatch.setattr(frozen_module.torch.jit, "trace", untraceable)
    with caplog.at_level(logging.WARNING, logger="signwatch.model.frozen"):
        assert frozen_module.served_forward(model, spec, "frozen") is None
    assert "served eager" in caplog.text and "Tracer cannot infer" in caplog.text
    assert frozen_module.served_forward(model, spec, "eager") is None


def test_a_model_of_no_registered_family_gets_its_bias_layers_as_default_regex():
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    cfg = DebuggerConfig(enabled=True).resolved(default_include_regex(model))
    for name in ("image", "1_output", "gradient/0_output", "5_output", "1.running_var", "1.weight", "0.bias"):
        assert cfg.includes(name, "Sequential"), name
    for name in ("0.weight", "5.weight", "2_output", "gradient/3_output"):
        assert not cfg.includes(name, "Sequential"), name

"""The attack's target, named by class id or by any label of the served model, resolved once; and
`signwatch attack` on a model that is not the GTSRB ResNet (an imported-style MobileNetV3)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from signwatch.attacks import UnknownTarget, pgd, resolve_target
from signwatch.attacks.cli import attack_app
from signwatch.model import ModelSpec, build_model, save_model

GTSRB = ModelSpec()
IMPORTED = ModelSpec(architecture="mobilenet_v3_small", input_size=32,
                     class_names=tuple(f"class_{i}" for i in range(10)), version="imported-test")


@pytest.mark.parametrize("value, expected", [
    (14, 14), ("14", 14), (" 14 ", 14), ("Stop", 14), ("stop", 14), (None, 14), (torch.tensor(3), 3),
    ("Speed limit (30km/h)", 1), ("No entry", 17),
])
def test_a_gtsrb_target_by_id_or_label(value, expected):
    assert resolve_target(GTSRB, value) == expected


def test_an_imported_models_labels_and_ids():
    assert resolve_target(IMPORTED, "class_3") == 3
    assert resolve_target(IMPORTED, "CLASS_7") == 7
    assert resolve_target(IMPORTED, 9) == 9


@pytest.mark.parametrize("spec, value, message", [
    (GTSRB, 43, "outside 0..42"),
    (GTSRB, "-1", "outside 0..42"),
    (GTSRB, "Stopp", "did you mean 'Stop'"),
    (GTSRB, True, "class id or a label"),
    (GTSRB, 1.5, "class id or a label"),
    (IMPORTED, "Stop", "its labels: 'class_0', 'class_1'"),
    (IMPORTED, None, "no 'Stop' class"),
])
def test_unknown_targets_are_refused_with_the_labels_there_are(spec, value, message):
    with pytest.raises(UnknownTarget, match=message.replace("(", r"\(").replace(".", r"\.")):
        resolve_target(spec, value)


def test_the_library_takes_labels_and_says_which_class_it_used():
    model = build_model(10, seed=0, architecture="resnet18")
    spec = ModelSpec(input_size=32, class_names=IMPORTED.class_names)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result = pgd(model, spec, x, target="class_3", steps=1)
    assert result.target == 3
    with pytest.raises(ValueError, match="no 'Stop' class"):
        pgd(model, spec, x, steps=1)  # no default target for a model without Stop


@pytest.fixture(scope="module")
def imported_weights(tmp_path_factory):
    model = build_model(IMPORTED.num_classes, seed=0, architecture=IMPORTED.architecture)
    return save_model(model, IMPORTED, tmp_path_factory.mktemp("w") / "mobilenet.safetensors", half=False)


def _run(*args: str):
    result = CliRunner().invoke(attack_app, list(args))
    return result.exit_code, result.output


def test_the_command_line_attacks_any_signwatch_model_towards_a_label(imported_weights, tmp_path):
    code, text = _run("--target", "class_3", "--count", "2", "--steps", "1", "--weights", str(imported_weights),
                      "--out", str(tmp_path), "--json", "-q", "--no-png")
    assert code == 0, text
    summary = json.loads(text.strip().splitlines()[-1])
    assert summary["target"] == 3 and summary["count"] == 2
    assert summary["clean_accuracy"] is None  # rendered GTSRB signs carry no labels of this model


@pytest.mark.parametrize("args, message", [
    ([], "--target: the model has no 'Stop' class"),
    (["--target", "Stop"], "its labels: 'class_0'"),
    (["--target", "10"], "outside 0..9"),
])
def test_the_command_line_refuses_a_target_the_model_does_not_have(imported_weights, tmp_path, args, message):
    code, text = _run(*args, "--weights", str(imported_weights), "--out", str(tmp_path), "-q")
    assert code == 2 and message in text and "Traceback" not in text
    assert len([line for line in text.splitlines() if line.startswith("error:")]) == 1, text

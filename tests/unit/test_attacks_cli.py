"""`signwatch attack` through typer's test runner, on an untrained 32 px model saved to a temp folder."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from signwatch.attacks.cli import attack_app
from signwatch.model import ModelSpec, build_model, save_model

runner = CliRunner()
KEYS = ("success_rate", "success_rate_on_correct", "mean_linf", "mean_l2", "mean_target_confidence",
        "mean_original_confidence", "method", "eps", "count", "out")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    spec = ModelSpec(input_size=32, version="test-untrained-32")
    return save_model(build_model(spec.num_classes, seed=0), spec, tmp_path_factory.mktemp("w") / "m.safetensors")


def _run(*args: str):
    result = runner.invoke(attack_app, [*args])
    text = result.output  # typer's runner mixes stderr into output; older Click kept it apart
    err = result.stderr if result.stderr_bytes is not None else ""
    return result.exit_code, text if err in text else text + err


def test_pgd_writes_images_npy_labels_and_json(weights, tmp_path):
    out = tmp_path / "pgd"
    code, text = _run("--method", "pgd", "--count", "3", "--steps", "2", "--eps", "0.0314", "--seed", "1",
                      "--out", str(out), "--weights", str(weights), "--json", "-q")
    assert code == 0, text
    summary = json.loads(text.strip().splitlines()[-1])
    for key in KEYS:
        assert key in summary, key
    assert summary["method"] == "pgd" and summary["count"] == 3 and summary["target"] == 14
    assert summary["mean_linf"] <= 0.0314 + 1e-6
    adversarial = np.load(out / "adversarial.npy")
    assert adversarial.dtype == np.uint8 and adversarial.shape == (3, 32, 32, 3)
    labels = json.loads((out / "labels.json").read_text())
    assert len(labels["labels"]) == 3 and labels["target"] == 14
    report = json.loads((out / "report.json").read_text())
    assert len(report["images"]) == 3
    for i in range(3):
        for kind in ("original", "adversarial", "difference", "triptych"):
            assert (out / "images" / f"{i:05d}_{kind}.png").is_file()
        original = np.asarray(Image.open(out / "images" / f"{i:05d}_original.png"))
        saved = np.asarray(Image.open(out / "images" / f"{i:05d}_adversarial.png"))
        assert np.array_equal(saved, adversarial[i])
        assert np.abs(saved.astype(int) - original.astype(int)).max() <= 8  # 0.0314 * 255 = 8.0
    assert Image.open(out / "images" / "00000_triptych.png").width >= 3 * 128


def test_summary_is_readable(weights, tmp_path):
    code, text = _run("--method", "fgsm", "--count", "2", "--out", str(tmp_path), "--weights", str(weights),
                      "--no-png", "-q")
    assert code == 0, text
    assert "success rate" in text and "Stop" in text and "mean L2" in text
    assert not (tmp_path / "images").exists() and (tmp_path / "adversarial.npy").is_file()


def test_deepfool_and_images_from_npy_and_folder(weights, tmp_path):
    code, text = _run("--method", "pgd", "--count", "2", "--steps", "1", "--out", str(tmp_path / "a"),
                      "--weights", str(weights), "--json", "-q")
    assert code == 0, text
    # the .npy just written goes back in, with its labels.json beside it
    code, text = _run("--method", "deepfool", "--images", str(tmp_path / "a" / "adversarial.npy"),
                      "--out", str(tmp_path / "b"), "--weights", str(weights), "--json", "-q")
    assert code == 0, text
    summary = json.loads(text.strip().splitlines()[-1])
    assert summary["method"] == "deepfool" and summary["eps"] is None and summary["count"] == 2
    assert summary["clean_accuracy"] is not None  # labels were found
    # a plain folder of PNGs: labels unknown
    code, text = _run("--method", "fgsm", "--images", str(tmp_path / "a" / "images"), "--count", "2",
                      "--out", str(tmp_path / "c"), "--weights", str(weights), "--json", "-q", "--no-png")
    assert code == 0, text
    summary = json.loads(text.strip().splitlines()[-1])
    assert summary["count"] == 2 and summary["success_rate_on_correct"] is None


@pytest.mark.parametrize("args, message", [
    (["--method", "cw"], "--method"),
    (["--eps", "0"], "eps"),
    (["--eps", "-0.1"], "eps"),
    (["--eps", "1.5"], "eps"),
    (["--target", "43"], "--target"),
    (["--target", "-1"], "--target"),
    (["--count", "0"], "--count"),
    (["--steps", "0"], "--steps"),
    (["--batch-size", "0"], "--batch-size"),
    (["--images", "MISSING"], "does not exist"),
    (["--images", "EMPTY"], "no PNG/JPEG/PPM images"),
    (["--images", "CORRUPT"], "corrupt"),
    (["--images", "NOTNPY"], "not a .npy"),
    (["--images", "BADSHAPE"], "expected images"),
])
def test_bad_arguments_exit_non_zero_with_one_line(weights, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "x.npy").write_text("hello")
    np.save(tmp_path / "bad.npy", np.zeros((2, 5), np.uint8))
    paths = {"MISSING": tmp_path / "missing", "EMPTY": tmp_path / "empty", "CORRUPT": tmp_path / "corrupt",
             "NOTNPY": tmp_path / "x.npy", "BADSHAPE": tmp_path / "bad.npy"}
    args = [str(paths.get(a, a)) for a in args]
    code, text = _run(*args, "--out", str(tmp_path / "out"), "--weights", str(weights), "-q")
    assert code != 0, text
    assert message in text and "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text


def test_importing_the_command_line_does_not_import_torch():
    """`signwatch --help` mounts this app: it must stay quick to import."""
    code = "import sys, signwatch.attacks.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

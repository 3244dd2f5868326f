"""The attack-robustness benchmark refuses bad arguments with a usage error, and its pristine
camera switches every effect off only while it is active."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import attack_robustness as bench  # noqa: E402

from signwatch.data import render  # noqa: E402


@pytest.mark.parametrize("argv", [
    ["curve", "--eps", "0"], ["curve", "--eps", "256"], ["curve", "--count", "0"],
    ["lever", "--size", "8"], ["lever", "--pool", "-1"], ["lever", "--epochs", "0"],
    ["lever", "--camera", "foggy"], ["nonsense"],
])
def test_bad_arguments_exit_with_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_camera_effects_off_is_scoped():
    normal, _ = render.render_array(4, seed=3, split="train", size=32, workers=1, progress=False)
    with bench.camera_effects_off():
        pristine, _ = render.render_array(4, seed=3, split="train", size=32, workers=1, progress=False)
    again, _ = render.render_array(4, seed=3, split="train", size=32, workers=1, progress=False)
    assert np.abs(normal.astype(int) - pristine).mean() > 1
    assert np.array_equal(normal, again)

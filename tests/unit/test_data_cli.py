"""`signwatch data render|sheet|inspect` through typer's test runner."""

from __future__ import annotations

from PIL import Image
from signwatch.data.cli import data_app
from typer.testing import CliRunner

runner = CliRunner()


def _run(*args: str):
    result = runner.invoke(data_app, list(args))
    text = result.output + (getattr(result, "stderr", "") if result.stderr_bytes is not None else "")
    return result.exit_code, text


def test_render_writes_the_layout_and_inspect_reads_it(tmp_path):
    code, text = _run("render", "--count", "45", "--out", str(tmp_path), "--split", "val", "--seed", "3", "-q")
    assert code == 0, text
    assert "wrote 45 val/clean images" in text
    assert (tmp_path / "Final_Training" / "Images" / "00001" / "00000_00001.ppm").is_file()
    code, text = _run("inspect", str(tmp_path), "--check-images")
    assert code == 0, text
    assert "45 images in 43 classes" in text and "Stop" in text


def test_render_refuses_bad_arguments(tmp_path):
    for args in (
        ["--count", "0"],
        ["--count", "3", "--variant", "rain"],
        ["--count", "3", "--split", "holdout"],
        ["--count", "3", "--size", "8"],
        ["--count", "3", "--seed", "-1"],
        ["--count", "3", "--workers", "0"],
    ):
        code, text = _run("render", "--out", str(tmp_path / "x"), *args)
        assert code == 2, (args, text)
        assert "Invalid value" in text or "Error" in text, text
    code, _ = _run("render", "--count", "3", "--out", str(tmp_path), "-q")
    assert code == 0
    code, text = _run("render", "--count", "3", "--out", str(tmp_path), "-q")
    assert code == 1 and "already holds files" in text and "--overwrite" in text
    (tmp_path / "file").write_text("x")
    code, text = _run("render", "--count", "3", "--out", str(tmp_path / "file"), "-q")
    assert code == 1 and "not a folder" in text


def test_inspect_reports_a_broken_copy(tmp_path):
    code, text = _run("inspect", str(tmp_path))
    assert code == 1 and "no GTSRB annotations" in text


def test_sheet_draws_every_class_and_variant(tmp_path):
    out = tmp_path / "sheet.png"
    code, text = _run("sheet", "--out", str(out), "--samples", "1", "--size", "16")
    assert code == 0, text
    with Image.open(out) as im:
        assert im.width > 22 * 16 and im.height > 2 * 4 * 16  # two bands of 22 classes, 1 clean + 3 variant rows
    code, text = _run("sheet", "--out", str(tmp_path / "sheet.txt"))
    assert code == 1 and ".png" in text

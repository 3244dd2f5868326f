"""A user's mistake on the command line is one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from signwatch_services.cli import app


@pytest.mark.parametrize("args, code, words", [
    (["train", "--gtsrb", "/nonexistent"], 2, "is not a folder"),
    (["train", "--from-manifest", "/nonexistent.json"], 2, "cannot read the training config"),
    (["train", "--input-size", "50"], 2, "input size must be one of"),
    (["evaluate", "--variant", "rain"], 2, "unknown variant"),
    (["evaluate", "--weights", "/nope.safetensors"], 1, "model weights not found"),
    (["monitor", "batch", "--output", "../x"], 2, "invalid object key"),
    (["demo", "--normal", "100", "--adversarial", "100"], 2, "must outnumber"),
])
def test_bad_arguments_fail_with_a_message(args, code, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == code, result.output
    assert words in result.output
    assert "Traceback" not in result.output


def test_bad_settings_and_urls_fail_with_a_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIGNWATCH_BUS_URL", "foo://")
    result = CliRunner().invoke(app, ["serve", "capture"])
    assert result.exit_code == 2 and "bus URL must be kafka:// or memory://" in result.output
    monkeypatch.delenv("SIGNWATCH_BUS_URL")
    monkeypatch.setenv("SIGNWATCH_PORT", "99999")
    result = CliRunner().invoke(app, ["serve", "inference"])
    assert result.exit_code == 2 and "invalid SIGNWATCH_ settings" in result.output


def test_monitor_batch_with_nothing_captured_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no stack here: the embedded folder store, empty
    result = CliRunner().invoke(app, ["monitor", "batch"])
    assert result.exit_code == 1 and "no capture files" in result.output

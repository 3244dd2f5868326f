from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from signwatch.model import load_model, preprocess, save_model
from signwatch.model.core import ModelSpec, build_model
from signwatch.model.evaluate import confusion_matrix, evaluate, expected_calibration_error
from signwatch.model.train import TrainConfig, load_config, train


def test_save_and_load_round_trip_through_safetensors(tmp_path):
    model, spec = build_model(seed=3), ModelSpec(version="t")
    path = save_model(model, spec, tmp_path / "m.safetensors", half=False)
    loaded, loaded_spec = load_model(path)
    x = preprocess([np.full((64, 64, 3), 128, np.uint8)], spec)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)
    assert loaded_spec.class_names[14] == "Stop" and loaded_spec.input_size == 64


def test_a_tampered_weights_file_is_refused(tmp_path):
    path = save_model(build_model(seed=1), ModelSpec(), tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_model(path)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.safetensors")


def test_calibration_and_confusion_figures():
    conf = np.array([0.9, 0.9, 0.6, 0.6])
    correct = np.array([1, 1, 0, 1], dtype=float)
    assert expected_calibration_error(conf, correct) == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)
    m = confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 3)
    assert m.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]


def test_training_writes_a_reproducible_manifest_and_evaluation_reports_each_variant(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the training pool cache goes to ./.cache
    cfg = TrainConfig(epochs=1, per_epoch=86, batch_size=43, input_size=32, val_count=43, workers=1)
    out = tmp_path / "w.safetensors"
    record = train(cfg, out, device="cpu")
    assert record["history"][0]["epoch"] == 1
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["input_size"] == 32 and len(manifest["sha256"]) == 64
    assert load_config(out.with_suffix(".json")) == cfg
    model, spec = load_model(out)
    results = evaluate(model, spec, count=43, seed=5, variants=("clean", "fog"), out_dir=tmp_path, workers=1)
    assert set(results) == {"clean", "fog"}
    for r in results.values():
        assert 0 <= r["accuracy"] <= 1 and 0 < r["mean_confidence"] <= 1 and 0 <= r["ece"] <= 1
        assert len(r["per_class_accuracy"]) == 43
        assert (tmp_path / f"confusion-{'clean' if r is results['clean'] else 'fog'}.png").exists()


def test_the_frozen_forward_gives_the_eager_models_logits_for_any_batch():
    from signwatch.model.frozen import FrozenForward

    model, spec = build_model(seed=5).eval(), ModelSpec()
    frozen = FrozenForward(model, spec)
    rng = np.random.default_rng(0)
    for n in (1, 2, 7):  # one image takes the plainly frozen graph, more the oneDNN one
        x = preprocess(list(rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)), spec)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            expected, got = model(x), frozen(x)
        assert got.shape == (n, spec.num_classes)
        assert torch.allclose(expected, got, atol=1e-4), (expected - got).abs().max()
        assert torch.equal(expected.argmax(1), got.argmax(1))


def test_a_frozen_forward_that_would_differ_from_the_model_is_refused(monkeypatch):
    from signwatch.model import frozen as frozen_module

    model, spec = build_model(seed=5).eval(), ModelSpec()
    real_freeze = torch.jit.freeze

    def broken_freeze(module, *args, **kwargs):  # a graph whose output is off by far more than rounding
        frozen = real_freeze(module, *args, **kwargs)
        return lambda x: frozen(x) + 1.0

    monkeypatch.setattr(frozen_module.torch.jit, "freeze", broken_freeze)
    monkeypatch.setattr(frozen_module.torch.jit, "optimize_for_inference", lambda m: m)
    with pytest.raises(RuntimeError, match="differs from the model"):
        frozen_module.FrozenForward(model, spec)


def test_the_frozen_forward_gives_the_same_logits_from_two_threads_at_once():
    # The server's two forward workers call the same graphs side by side.
    from concurrent.futures import ThreadPoolExecutor

    from signwatch.model.frozen import FrozenForward

    model, spec = build_model(seed=6).eval(), ModelSpec()
    frozen = FrozenForward(model, spec)
    rng = np.random.default_rng(1)
    batches = [preprocess(list(rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)), spec)
               .contiguous(memory_format=torch.channels_last) for n in (1, 5, 16, 1, 9, 16)]
    with torch.inference_mode():
        serial = [frozen(b) for b in batches]

    def run(batch):
        with torch.inference_mode():
            return frozen(batch)

    with ThreadPoolExecutor(2) as pool:
        for _ in range(3):
            for expected, got in zip(serial, pool.map(run, batches)):
                assert torch.equal(expected, got)

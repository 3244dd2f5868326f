"""Real smdebug reads every dtype and shape the export writes (0-d, 1-d, 4-d; float16/32/64, int32/64,
uint8, bool) from a folder, bit for bit: a hand-made trial, so each case is there on purpose."""

from __future__ import annotations

import json

import numpy as np
from safetensors.numpy import save

from signwatch.debugger import create_trial, export_smdebug
from signwatch.debugger.layout import meta_key, tensors_key
from signwatch.ports.store_file import FileStore
from tests.smdebug.venv import read_with_smdebug

CASES = {
    "image": np.random.default_rng(0).standard_normal((1, 3, 4, 5)).astype(np.float32),
    "bn1.num_batches_tracked": np.array(7, dtype=np.int64),  # 0-d
    "bn1.running_var": np.linspace(0.5, 2, 6).astype(np.float64),
    "fc.bias": np.array([1.5, -0.25, np.inf, -0.0], dtype=np.float16),
    "layer1.0.relu_output@1": np.arange(12, dtype=np.int32).reshape(1, 3, 2, 2) - 5,
    "mask.weight": np.array([True, False, True]),
    "quant.weight": np.arange(250, 256, dtype=np.uint8),
}


def test_every_dtype_and_shape_reads_back_bit_for_bit(tmp_path):
    store = FileStore(tmp_path / "rec")
    for step, worker in ((0, "a"), (3, "a"), (3, "b")):
        arrays = {n: np.asarray(a + step if a.dtype != np.bool_ else a) for n, a in CASES.items()}
        store.put(tensors_key("", step, worker), save(arrays))
        store.put(meta_key("", step, worker), json.dumps({
            "step": step, "worker": worker, "model_class": "Net", "time": "2026-01-02T03:04:05.000006Z",
            "include_regex": ".*", "tensors": {n: {"shape": list(a.shape), "dtype": str(a.dtype)}
                                               for n, a in arrays.items()}}).encode())
    trial = create_trial(str(tmp_path / "rec"))
    export_smdebug(trial, str(tmp_path / "out"))
    report, values = read_with_smdebug(str(tmp_path / "out"), tmp_path / "read")
    assert report["steps"] == [0, 3] and report["workers"] == ["a", "b"] and report["num_workers"] == 2
    assert report["names"] == sorted(["Net_input_0", "Net_bn1.num_batches_tracked", "Net_bn1.running_var",
                                      "Net_fc.bias", "layer1.0.relu_output_1", "Net_mask.weight", "Net_quant.weight"])
    by_smdebug = {"Net_input_0": "image", "layer1.0.relu_output_1": "layer1.0.relu_output@1"}
    assert len(report["values"]) == 3 * len(CASES)
    for entry in report["values"]:
        own = by_smdebug.get(entry["name"], entry["name"].removeprefix("Net_"))
        want = trial.tensor(own).value(entry["step"], worker=entry["worker"])
        got = values[entry["key"]]
        assert got.dtype == want.dtype and got.shape == want.shape, entry
        assert got.tobytes() == want.tobytes(), entry

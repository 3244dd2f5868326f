"""smdebug compatibility of the debugger without servers: names, modes, the include regex on both
naming schemes, replicas as workers, and the export's framing and command line."""

from __future__ import annotations

import enum
import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from signwatch.debugger import (
    Debugger,
    DebuggerConfig,
    StepUnavailable,
    TensorUnavailable,
    create_trial,
    default_worker,
    export_smdebug,
    fullgrad_from_trial,
    modes,
    smdebug_name,
)
from signwatch.debugger.smdebug_export import crc32c, encode_tensor_event, masked_crc32c, tfrecord
from signwatch.model import build_model
from signwatch.ports.store_file import FileStore
from signwatch_services.cli import app  # the command line, where `debugger` is mounted

SIZE = 32


@pytest.fixture(scope="module")
def model():
    return build_model(43, seed=0).eval()


def record(model, store, worker, images, **config):
    debugger = Debugger(store, "ep", worker=worker)
    debugger.configure(DebuggerConfig(enabled=True, **config))
    debugger.forward(model, images, [f"{worker}-{i}" for i in range(images.shape[0])])
    assert debugger.drain(30)
    return debugger


def images(n, seed):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("own, smdebug", [
    ("image", "ResNet_input_0"),
    ("gradient/image", "gradient/ResNet_input_0"),
    ("bn1.bias", "ResNet_bn1.bias"),
    ("layer1.0.bn1.running_var", "ResNet_layer1.0.bn1.running_var"),
    ("layer1.0.bn1_output", "layer1.0.bn1_output_0"),
    ("gradient/layer2.0.downsample.1_output", "gradient/layer2.0.downsample.1_output_0"),
    ("layer1.0.relu_output@1", "layer1.0.relu_output_1"),
])
def test_smdebug_names(own, smdebug):
    assert smdebug_name(own, "ResNet") == smdebug


def test_trial_answers_the_references_calls(model, tmp_path):
    store = FileStore(tmp_path)
    record(model, store, "w0", images(2, 0))
    trial = create_trial("tensors/ep", store=store)
    assert trial.steps(mode=modes.PREDICT) == trial.steps() == [0, 1]
    assert trial.steps(mode=modes.TRAIN) == [] and trial.tensor_names(mode=modes.EVAL) == []
    value = trial.tensor("ResNet_bn1.bias").value(step_num=0, mode=modes.PREDICT)
    assert np.array_equal(value, model.bn1.bias.detach().numpy())
    assert np.array_equal(trial.tensor("layer1.0.bn1_output_0").value(1, mode=modes.PREDICT),
                          trial.tensor("layer1.0.bn1_output").value(1))
    assert trial.tensor("ResNet_input_0").value(0).shape == (1, 3, SIZE, SIZE)
    assert trial.tensor("gradient/ResNet_input_0").steps(mode=modes.PREDICT) == [0, 1]
    with pytest.raises(StepUnavailable):
        trial.tensor("ResNet_bn1.bias").value(step_num=0, mode=modes.TRAIN)
    with pytest.raises(TensorUnavailable):
        trial.tensor("ResNet_bn9.bias")
    # smdebug's own mode objects are taken by name (smdebug is not installed here: an equal Enum)
    SmdebugModes = enum.Enum("ModeKeys", "TRAIN EVAL PREDICT GLOBAL")
    assert trial.steps(mode=SmdebugModes.PREDICT) == [0, 1]
    with pytest.raises(ValueError, match="unknown mode"):
        trial.steps(mode="SOMETIMES")


def test_the_include_regex_matches_both_schemes(model, tmp_path):
    store = FileStore(tmp_path)
    record(model, store, "w0", images(1, 1), include_regex=".*ResNet_input")  # smdebug's name of image
    trial = create_trial("tensors/ep", store=store)
    assert trial.tensor_names() == ["gradient/image", "image"]
    assert trial.tensor_names(regex="ResNet_input") == ["ResNet_input_0", "gradient/ResNet_input_0"]
    assert trial.tensor_names(regex=["^image$", r"^ResNet_input_0$"]) == ["ResNet_input_0", "image"]

    store2 = FileStore(tmp_path / "b")
    record(model, store2, "w0", images(1, 1), include_regex=r"^ResNet_bn1\.bias$|_output_1$")
    # smdebug numbers a module's outputs per call: _output_1 is the second call of layerX.Y.relu
    names = create_trial("tensors/ep", store=store2).tensor_names()
    assert names[0] == "bn1.bias" and names[1:] and all(n.endswith("relu_output@1") for n in names[1:])


def test_two_replicas_record_as_two_workers_and_the_trial_reads_both(model, tmp_path):
    store = FileStore(tmp_path)
    first, second = images(2, 2), images(3, 3)
    a = Debugger(store, "ep", worker="replica-a")
    b = Debugger(store, "ep", worker="replica-b")
    for d in (a, b):  # switched on together: both start at step 0
        d.configure({"enabled": True})
    a.forward(model, first, ["a0", "a1"])
    b.forward(model, second, ["b0", "b1", "b2"])
    assert a.drain(30) and b.drain(30)
    trial = create_trial("tensors/ep", store=store)
    assert trial.steps() == [0, 1, 2]
    assert trial.workers() == ["replica-a", "replica-b"]
    assert trial.workers(0) == ["replica-a", "replica-b"] and trial.workers(2) == ["replica-b"]
    for worker, batch, ids in (("replica-a", first, ["a0", "a1"]), ("replica-b", second, ["b0", "b1", "b2"])):
        for step, rid in enumerate(ids):
            assert trial.step_meta(step, worker)["request_id"] == rid  # nothing overwritten
            got = trial.tensor("image").value(step, worker=worker)
            torch.testing.assert_close(torch.from_numpy(got), batch[step : step + 1])
    # smdebug's choice where several workers have the step: the first in sorted order
    assert trial.step_meta(0)["worker"] == "replica-a"
    assert fullgrad_from_trial(trial, 1, worker="replica-b").shape == (1, 1, SIZE, SIZE)
    assert len([k for k in store.list("tensors/ep/") if k.endswith("meta.json")]) == 5
    # a restarted replica continues after the highest step of any worker
    c = Debugger(store, "ep", worker="replica-a")
    c.configure({"enabled": True})
    assert c.status()["next_step"] == 3


def test_each_process_has_its_own_default_worker():
    other = subprocess.run([sys.executable, "-c", "from signwatch.debugger import default_worker; print(default_worker())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    mine = default_worker()
    assert other != mine and other.rsplit("-", 1)[0] == mine.rsplit("-", 1)[0]
    assert "_" not in mine  # smdebug splits event file names at the last underscore
    with pytest.raises(ValueError):
        Debugger(FileStore("/tmp"), "ep", worker="a_b")


def test_tfrecord_framing_is_smdebugs():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    record_ = tfrecord(b"payload")
    length, = struct.unpack("<Q", record_[:8])
    assert length == 7 and struct.unpack("<I", record_[8:12])[0] == masked_crc32c(record_[:8])
    assert record_[12:19] == b"payload"
    assert struct.unpack("<I", record_[19:])[0] == masked_crc32c(b"0x12345678")  # smdebug's constant footer
    event = encode_tensor_event("ResNet_bn1.bias", np.arange(3, dtype=np.float32), step=5, wall_time=1.5)
    assert np.arange(3, dtype=np.float32).tobytes() in event and b"ResNet_bn1.bias" in event
    with pytest.raises(TypeError, match="no smdebug equivalent"):
        encode_tensor_event("x", np.zeros(2, dtype=np.complex64), step=0, wall_time=0.0)


def test_export_layout_and_command_line(model, tmp_path):
    store = FileStore(tmp_path / "rec")
    record(model, store, "w0", images(2, 4), include_regex=r"^fc|image")
    trial_dir = tmp_path / "rec" / "tensors" / "ep"
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["debugger", "export", "--format", "smdebug", "--quiet", str(trial_dir), str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["steps"] == 2 and summary["workers"] == ["w0"] and summary["tensors"] == 2 * 5
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "collections/000000000/w0_collections.json",
        "events/000000000000/000000000000_w0.tfevents", "events/000000000001/000000000001_w0.tfevents",
        "index/000000000/000000000000_w0.json", "index/000000000/000000000001_w0.json",
        "training_job_end.ts",
    ]
    index = json.loads((out / "index/000000000/000000000001_w0.json").read_text())
    assert index["meta"] == {"mode": "PREDICT", "mode_step": 1,
                             "event_file_name": "events/000000000001/000000000001_w0.tfevents"}
    blob = (out / index["meta"]["event_file_name"]).read_bytes()
    assert sum(t["length"] for t in index["tensor_payload"]) == len(blob)
    assert {t["tensorname"] for t in index["tensor_payload"]} == {
        "ResNet_fc.bias", "ResNet_fc.weight", "fc_output_0", "ResNet_input_0", "gradient/ResNet_input_0"}
    assert json.loads((out / "collections/000000000/w0_collections.json").read_text())["_meta"] == {"num_workers": 1}

    for args, message in (([str(tmp_path / "nowhere"), str(out)], "no recorded tensors"),
                          ([str(tmp_path / "rec"), str(out)], "nothing to export")):
        r = CliRunner().invoke(app, ["debugger", "export", *args])
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["debugger", "export", "--format", "tensorboard", str(trial_dir), str(out)])
    assert r.exit_code == 2
    with pytest.raises(ValueError, match="nothing to export"):
        export_smdebug(create_trial(str(tmp_path / "rec")), str(out))

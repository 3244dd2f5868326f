"""Steps of non-ResNet families, recorded with their default include regex, read back in real
smdebug under their own names (the model's class name as root), value for value."""

from __future__ import annotations

import pytest
import torch

from signwatch.debugger import Debugger, DebuggerConfig, create_trial, export_smdebug, smdebug_name
from signwatch.model import build_model
from signwatch.model.architectures import ARCHITECTURES
from signwatch.ports.store_file import FileStore
from tests.smdebug.venv import read_with_smdebug
from tests.unit.test_saliency_fullgrad import randomize_bn, vgg11_bn

SIZE = 32


@pytest.mark.parametrize("name, parameter", [
    ("regnet_x_400mf", "stem.1.running_var"),  # RegNet's BatchNorms are children "1"
    ("vgg11_bn", "features.1.weight"),  # VGG's are listed by path in its regex
])
def test_a_non_resnet_export_reads_back_in_smdebug_with_its_names(tmp_path, name, parameter):
    arch = ARCHITECTURES[name]
    model = randomize_bn(vgg11_bn(10) if name == "vgg11_bn" else build_model(10, seed=0, architecture=name))
    store = FileStore(tmp_path / "rec")
    debugger = Debugger(store, "ep", worker="w0", model=model, config=DebuggerConfig(enabled=True))
    debugger.forward(model, torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)), ["a", "b"])
    assert debugger.drain(30)
    trial = create_trial("tensors/ep", store=store)
    export_smdebug(trial, str(tmp_path / "out"))

    report, values = read_with_smdebug(str(tmp_path / "out"), tmp_path / "read")
    assert report["steps"] == [0, 1] and report["workers"] == ["w0"]
    own = {smdebug_name(n, arch.root): n for n in trial.tensor_names()}
    assert sorted(report["names"]) == sorted(own)
    for expected in (f"{arch.root}_input_0", f"gradient/{arch.root}_input_0", f"{arch.root}_{parameter}"):
        assert expected in report["names"], expected
    assert len(report["values"]) == 2 * len(own)
    for entry in report["values"]:
        want = trial.tensor(own[entry["name"]]).value(entry["step"], worker=entry["worker"])
        got = values[entry["key"]]
        assert got.dtype == want.dtype and got.shape == want.shape, entry
        assert got.tobytes() == want.tobytes(), entry

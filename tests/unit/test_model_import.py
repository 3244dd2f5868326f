"""``signwatch model import``: users' weights in, checked, written as safetensors + manifest."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from signwatch.model import architectures
from signwatch.model.core import load_model, load_spec, normalize
from signwatch.model.importing import (
    ImportOptions,
    ModelImportError,
    Source,
    import_cached,
    import_model,
    infer_architecture,
    parse_labels,
    read_source,
)
from signwatch_services.cli import app


def _state(name: str, num_classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return getattr(torchvision.models, name)(num_classes=num_classes).state_dict()


def _pth(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    """A SageMaker PyTorch model.tar.gz: files at the archive's root, code/ beside them."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def resnet18_43():
    return _state("resnet18", 43, seed=1)


def test_a_sagemaker_model_tar_gz_imports_and_serves_the_same_logits(tmp_path, resnet18_43):
    archive = _tar_gz({"code/inference.py": b"def model_fn(d): ...\n", "model.pth": _pth(resnet18_43)})
    (tmp_path / "model.tar.gz").write_bytes(archive)
    summary = import_model(read_source(str(tmp_path / "model.tar.gz")), tmp_path / "out" / "m.safetensors")
    assert (summary["architecture"], summary["num_classes"], summary["input_size"]) == ("resnet18", 43, 224)
    assert summary["source"]["member"] == "model.pth" and summary["fullgrad"] == "exact"
    assert summary["probe"]["fullgrad_completeness_rel_error"] < 1e-4
    manifest = json.loads((tmp_path / "out" / "m.json").read_text())
    assert manifest["source"]["sha256"] == Source("x", archive).sha256 and manifest["class_names"][0] == "class_0"

    model, spec = load_model(tmp_path / "out" / "m.safetensors")
    original = torchvision.models.resnet18(num_classes=43).eval()
    original.load_state_dict(resnet18_43)
    x = normalize(torch.rand(2, 3, 224, 224), spec)
    with torch.no_grad():
        assert torch.equal(model(x), original(x))  # float32 kept: bit for bit
    assert load_spec(tmp_path / "out" / "m.safetensors") == spec


def test_wrapped_and_prefixed_state_dicts_with_labels_from_a_file(tmp_path):
    state = {f"module.{k}": v for k, v in _state("resnet50", 10).items()}
    (tmp_path / "ckpt.pth").write_bytes(_pth({"epoch": 7, "state_dict": state, "optimizer": {"lr": 0.1}}))
    (tmp_path / "labels.txt").write_text("\n".join(f"sign {i}" for i in range(10)) + "\n\n")
    summary = import_model(read_source((tmp_path / "ckpt.pth").as_uri()), tmp_path / "r50.safetensors",
                           ImportOptions(labels=str(tmp_path / "labels.txt"), input_size=96, version="v7"))
    assert (summary["architecture"], summary["num_classes"]) == ("resnet50", 10)
    spec = load_spec(tmp_path / "r50.safetensors")
    assert spec.class_names[9] == "sign 9" and spec.input_size == 96 and spec.version == "v7"


def test_every_registered_architecture_is_inferred_from_its_keys_and_shapes_alone():
    """From shapes only (meta tensors), no two architectures are confused."""
    for name in architectures.ARCHITECTURES:
        shapes = architectures.reference_shapes(name, 7)
        state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
        assert infer_architecture(state) == (name, 7), name


def test_a_pickled_module_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"fc.weight": Exploit()}))
    with pytest.raises(ModelImportError, match="needs code to load.*state_dict"):
        import_model(read_source(str(tmp_path / "evil.pth")), tmp_path / "x.safetensors")
    assert not marker.exists()

    module = torchvision.models.resnet18(num_classes=3)
    (tmp_path / "module.pth").write_bytes(_pth(module))
    with pytest.raises(ModelImportError, match=r"torch\.save\(model\.state_dict\(\)"):
        import_model(read_source(str(tmp_path / "module.pth")), tmp_path / "x.safetensors")


def test_a_torchscript_archive_is_refused_with_the_export_command(tmp_path):
    traced = torch.jit.trace(torchvision.models.resnet18(num_classes=3).eval(), torch.rand(1, 3, 32, 32))
    torch.jit.save(traced, str(tmp_path / "ts.pt"))
    with pytest.raises(ModelImportError, match=r"TorchScript.*torch\.jit\.load\(path\)\.state_dict\(\)"):
        import_model(read_source(str(tmp_path / "ts.pt")), tmp_path / "x.safetensors")


def test_what_does_not_fit_is_listed(tmp_path):
    state = _state("resnet18", 5)
    del state["layer4.1.bn2.weight"]
    state["extra.weight"] = torch.zeros(3)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(ModelImportError) as info:
        infer_architecture(state, "resnet18")
    text = str(info.value)
    assert "1 missing keys: layer4.1.bn2.weight" in text and "1 unexpected keys: extra.weight" in text
    assert "layer1.0.conv1.weight is [64, 64, 1, 1], resnet18 has [64, 64, 3, 3]" in text
    with pytest.raises(ModelImportError, match="closest is resnet18 with 5 classes"):
        infer_architecture(state)
    with pytest.raises(ModelImportError, match="unknown architecture 'vit_b_16'"):
        infer_architecture(state, "vit_b_16")


def test_safetensors_member_selection_and_bad_archives(tmp_path):
    from safetensors.torch import save as save_safetensors

    mobile = {k: v.contiguous() for k, v in _state("mobilenet_v3_small", 4).items()}
    blob = _tar_gz({"notes.txt": b"x", "weights/a.pth": _pth(_state("resnet18", 3)),
                    "weights/b.safetensors": save_safetensors(mobile)})
    summary = import_model(Source("m.tar.gz", blob), tmp_path / "b.safetensors", ImportOptions(member="weights/b.safetensors",
                                                                                                input_size=64))
    assert (summary["architecture"], summary["source"]["format"], summary["fullgrad"]) == (
        "mobilenet_v3_small", "safetensors", "approximate")
    with pytest.raises(ModelImportError, match="no member 'c.pth'"):
        import_model(Source("m.tar.gz", blob), tmp_path / "c.safetensors", ImportOptions(member="c.pth"))
    with pytest.raises(ModelImportError, match=r"no \*\.pth"):
        import_model(Source("t.tar.gz", _tar_gz({"code/model.pth": b"", "x.txt": b"1"})), tmp_path / "d.safetensors")
    with pytest.raises(ModelImportError, match="not a model file"):
        import_model(Source("x.bin", b"hello, world" * 10), tmp_path / "e.safetensors")
    truncated = _pth(_state("resnet18", 3))[:5000]
    with pytest.raises(ModelImportError, match="damaged archive|cannot read it as PyTorch weights"):
        import_model(Source("t.pth", truncated), tmp_path / "f.safetensors")
    with pytest.raises(ModelImportError, match="not a readable tar.gz"):
        import_model(Source("g.tar.gz", blob[: len(blob) // 2]), tmp_path / "g.safetensors")
    with pytest.raises(ModelImportError, match="expected a state dict"):
        import_model(Source("h.pth", _pth([1, 2, 3])), tmp_path / "h.safetensors")


@pytest.mark.parametrize("text, expected", [
    ("a\nb\nc\n", ("a", "b", "c")),
    ('["a", "b", "c"]', ("a", "b", "c")),
    ('{"2": "c", "0": "a", "1": "b"}', ("a", "b", "c")),
])
def test_labels_as_text_or_json(text, expected):
    assert parse_labels(text.encode(), "labels", 3) == expected


@pytest.mark.parametrize("text, words", [
    ("a\nb\n", "2 labels for a model with 3 classes"),
    ('{"0": "a", "1": "b", "5": "c"}', "every class id 0..2"),
    ("a\na\nb\n", "names both class 0 and class 1"),
    ("a\n\nb\n", "1-200 characters"),
    ("[1, 2", "not valid JSON"),
])
def test_bad_labels_are_clear_errors(text, words):
    with pytest.raises(ModelImportError, match=words):
        parse_labels(text.encode(), "labels", 3)


def test_the_import_cache_imports_once_per_source_and_options(tmp_path, resnet18_43):
    (tmp_path / "model.tar.gz").write_bytes(_tar_gz({"model.pth": _pth(resnet18_43)}))
    first = import_cached(str(tmp_path / "model.tar.gz"), ImportOptions(input_size=64), tmp_path / "cache")
    mtime = first.stat().st_mtime_ns
    again = import_cached(str(tmp_path / "model.tar.gz"), ImportOptions(input_size=64), tmp_path / "cache")
    assert again == first and again.stat().st_mtime_ns == mtime
    other = import_cached(str(tmp_path / "model.tar.gz"), ImportOptions(input_size=96), tmp_path / "cache")
    assert other != first and load_spec(other).input_size == 96
    assert not list((tmp_path / "cache" / "imported").glob("*.partial-*"))


def test_the_command_line(tmp_path, resnet18_43):
    (tmp_path / "model.tar.gz").write_bytes(_tar_gz({"model.pth": _pth(resnet18_43)}))
    runner = CliRunner()
    ok = runner.invoke(app, ["model", "import", str(tmp_path / "model.tar.gz"), "--out", str(tmp_path / "m.safetensors"),
                             "--input-size", "64", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--json"])
    assert ok.exit_code == 0, ok.output
    summary = json.loads(ok.output)
    assert summary["mean"] == [0.5, 0.5, 0.5] and load_spec(tmp_path / "m.safetensors").std == (0.25, 0.25, 0.25)
    shown = runner.invoke(app, ["model", "show", str(tmp_path / "m.safetensors")])
    assert shown.exit_code == 0 and json.loads(shown.output)["architecture"] == "resnet18"
    for args, words in ((["--out", str(tmp_path / "x.pt")], "must end in .safetensors"),
                        (["--out", str(tmp_path / "y.safetensors"), "--mean", "1,2"], "three numbers"),
                        (["--out", str(tmp_path / "z.safetensors"), "--architecture", "resnet34"], "do not fit resnet34")):
        bad = runner.invoke(app, ["model", "import", str(tmp_path / "model.tar.gz"), *args])
        assert bad.exit_code == 2 and words in bad.output, bad.output
    missing = runner.invoke(app, ["model", "import", str(tmp_path / "nope.tar.gz"), "--out", str(tmp_path / "n.safetensors")])
    assert missing.exit_code == 2 and "no such file" in missing.output

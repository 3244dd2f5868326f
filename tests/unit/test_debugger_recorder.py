"""The run-time debugger without HTTP: what one instrumented batch records, how it is stored, what a
trial reads back, and that FullGrad from the recorded tensors equals FullGrad on the live model."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from signwatch.debugger import (
    DEFAULT_INCLUDE_REGEX,
    Debugger,
    DebuggerConfig,
    StepUnavailable,
    TensorUnavailable,
    create_trial,
    fullgrad_from_trial,
    fullgrad_result_from_trial,
    sampled,
)
from signwatch.model import build_model
from signwatch.ports.store_file import FileStore
from signwatch.saliency import fullgrad

SIZE = 64
ENDPOINT = "ep"


def randomize_bn(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    # Fresh BatchNorm statistics give zero effective biases: a mis-paired bias would go unnoticed.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return randomize_bn(build_model(43, seed=0))


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))


@pytest.fixture
def store(tmp_path) -> FileStore:
    return FileStore(tmp_path / "store")


def record(model, batch, store, ids=None, worker="w0", **config) -> tuple[Debugger, torch.Tensor]:
    debugger = Debugger(store, ENDPOINT, worker=worker)
    debugger.configure(DebuggerConfig(enabled=True, **config))
    ids = ids or [f"req-{i}" for i in range(batch.shape[0])]
    logits = debugger.forward(model, batch, ids)
    assert debugger.drain(30)
    return debugger, logits


def trial_of(store):
    return create_trial(f"tensors/{ENDPOINT}", store=store)


def test_logits_equal_plain_forward_and_model_is_left_alone(model, batch, store):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        plain = model(batch)
    debugger, logits = record(model, batch, store)
    assert torch.equal(logits, plain)
    assert not logits.requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules()), "hooks must be removed"
    assert not model.training
    assert debugger.counts == {"recorded": 3, "dropped": 0, "failed": 0}


def test_names_follow_the_module_path(model, batch, store):
    record(model, batch, store)
    trial = trial_of(store)
    assert trial.steps() == [0, 1, 2]
    names = set(trial.tensor_names())
    for name in ("image", "gradient/image", "bn1_output", "gradient/bn1_output",
                 "layer1.0.bn1_output", "gradient/layer1.0.bn1_output",
                 "layer1.0.bn1.running_mean", "layer1.0.bn1.running_var",
                 "layer1.0.bn1.weight", "layer1.0.bn1.bias", "fc.bias",
                 "layer2.0.downsample.1_output", "gradient/layer2.0.downsample.1_output",
                 "layer2.0.downsample.0.weight"):
        assert name in names, name
    # The reference regex leaves out what it does not name.
    assert not {"conv1_output", "fc_output", "gradient/fc_output", "layer1.0.conv1.weight"} & names
    assert trial.tensor("image").value(0).shape == (1, 3, SIZE, SIZE)
    assert trial.tensor("layer1.0.bn1_output").value(1).shape == (1, 64, SIZE // 4, SIZE // 4)
    assert trial.tensor("layer1.0.bn1.running_mean").value(2).shape == (64,)
    assert trial.tensor("gradient/image").steps() == [0, 1, 2]
    assert trial.tensor_names(regex=r"^layer4\.1\.bn2") == [
        "layer4.1.bn2.bias", "layer4.1.bn2.num_batches_tracked", "layer4.1.bn2.running_mean",
        "layer4.1.bn2.running_var", "layer4.1.bn2.weight", "layer4.1.bn2_output",
        "layer4.1.bn2_output_0"]  # a regex lists every name of a tensor that it matches: smdebug's too
    with pytest.raises(TensorUnavailable):
        trial.tensor("layer9.bn1_output")
    with pytest.raises(StepUnavailable):
        trial.step_meta(99)


def test_each_step_stands_alone_with_its_meta(model, batch, store):
    _, logits = record(model, batch, store, ids=["a", "b", "c"])
    trial = trial_of(store)
    for step, rid in zip(trial.steps(), ["a", "b", "c"]):
        meta = trial.step_meta(step)
        assert meta["request_id"] == rid
        assert meta["predicted_class"] == int(logits[step].argmax())
        assert meta["logit"] == float(logits[step].max())
        assert meta["include_regex"] == DEFAULT_INCLUDE_REGEX
        assert meta["eps"]["layer1.0.bn1"] == pytest.approx(1e-5)
        assert set(meta["tensors"]) == set(trial.tensor_names(step=step))
        assert meta["time"].endswith("Z")
        torch.testing.assert_close(torch.from_numpy(trial.tensor("image").value(step)), batch[step : step + 1])
    keys = store.list("tensors/ep/steps/000000000001/")
    assert keys == ["tensors/ep/steps/000000000001/w0/meta.json", "tensors/ep/steps/000000000001/w0/tensors.safetensors"]
    assert store.get(keys[1])[:8] != b"\x80\x04\x95"  # not a pickle


def test_outputs_are_recorded_before_in_place_ops(model, batch, store):
    # torchvision's BasicBlock runs relu(inplace) right after bn1: the record must be bn1's own output.
    record(model, batch, store, include_regex=r"^layer1\.0\.(conv1|bn1)_output$")
    trial = trial_of(store)
    conv = torch.from_numpy(trial.tensor("layer1.0.conv1_output").value(0))
    bn = torch.from_numpy(trial.tensor("layer1.0.bn1_output").value(0))
    assert (bn < 0).any(), "bn1's output was overwritten by the in-place ReLU"
    with torch.no_grad():
        torch.testing.assert_close(model.layer1[0].bn1(conv), bn)
    assert trial.tensor_names() == ["layer1.0.bn1_output", "layer1.0.conv1_output"]


def test_include_regex_filters(model, batch, store):
    record(model, batch[:1], store, include_regex=r"^image$|^fc\.bias$")
    assert trial_of(store).tensor_names() == ["fc.bias", "image"]


def test_sample_rate_zero_records_nothing(model, batch, store):
    debugger, logits = record(model, batch, store, sample_rate=0.0)
    assert store.list("tensors/") == []
    assert debugger.counts["recorded"] == 0
    with torch.inference_mode():
        assert torch.equal(logits, model(batch))


def test_sampling_is_by_request_id_and_unsampled_requests_are_not_saved(model, batch, store):
    ids = [f"id-{i}" for i in range(200)]
    chosen = [i for i in ids if sampled(i, 0.3)]
    assert 30 < len(chosen) < 90 and chosen == [i for i in ids if sampled(i, 0.3)]
    picked = [i for i in ids if sampled(i, 0.5)][:2]
    skipped = [i for i in ids if not sampled(i, 0.5)][:1]
    debugger, logits = record(model, batch, store, ids=[picked[0], skipped[0], picked[1]], sample_rate=0.5)
    trial = trial_of(store)
    assert [trial.step_meta(s)["request_id"] for s in trial.steps()] == picked
    assert [trial.step_meta(s)["batch_index"] for s in trial.steps()] == [0, 2]
    torch.testing.assert_close(torch.from_numpy(trial.tensor("image").value(trial.steps()[1])), batch[2:3])
    with torch.inference_mode():
        assert torch.equal(logits, model(batch))


def test_trial_map_equals_live_fullgrad(model, batch, store):
    record(model, batch, store, include_regex=DEFAULT_INCLUDE_REGEX + "|fc")
    trial = trial_of(store)
    live = fullgrad(model, batch)
    for step in trial.steps():
        result = fullgrad_result_from_trial(trial, step)
        assert result.map.shape == (1, 1, SIZE, SIZE)
        assert result.target == int(live.target[step])
        torch.testing.assert_close(result.map, live.maps[step : step + 1], rtol=1e-5, atol=1e-5)
        assert result.missing == ()
        assert result.completeness_rel_error < 1e-4
        assert result.completeness_rel_error == pytest.approx(float(live.completeness_rel_error[step]), abs=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_reference_regex_is_enough_for_the_map(model, batch, store):
    # fc's output gradient is not in the reference regex: the map (Linear left out) is whole,
    # the completeness check cannot be made.
    record(model, batch[:1], store)
    trial = trial_of(store)
    result = fullgrad_result_from_trial(trial, 0)
    assert result.missing == ("fc",)
    assert math.isnan(result.completeness_rel_error)
    torch.testing.assert_close(result.map, fullgrad(model, batch[:1]).maps, rtol=1e-5, atol=1e-5)


def test_a_layer_left_out_by_the_regex_is_reported_not_ignored(model, batch, store):
    record(model, batch[:1], store, include_regex=r"image|bn")  # no downsample.1
    trial = trial_of(store)
    with pytest.raises(TensorUnavailable, match="downsample"):
        fullgrad_from_trial(trial, 0)
    partial = fullgrad_result_from_trial(trial, 0, strict=False)
    assert set(partial.missing) == {"layer2.0.downsample.1", "layer3.0.downsample.1", "layer4.0.downsample.1", "fc"}


def test_step_numbers_resume_after_a_restart(model, batch, store):
    record(model, batch[:2], store)
    again, _ = record(model, batch[:1], store)
    assert trial_of(store).steps() == [0, 1, 2]
    assert again.status()["next_step"] == 3


def test_max_steps_switches_itself_off(model, batch, store):
    debugger, _ = record(model, batch, store, max_steps=2)
    assert trial_of(store).steps() == [0, 1]
    assert not debugger.enabled


def test_failures_remove_hooks_and_are_counted(model, store):
    debugger = Debugger(store, ENDPOINT)
    debugger.configure({"enabled": True})
    with pytest.raises(RuntimeError):
        debugger.forward(model, torch.zeros(1, 5, SIZE, SIZE), ["bad"])  # 5 channels: conv1 refuses
    assert all(not m._forward_hooks for m in model.modules())
    assert debugger.counts["failed"] == 1
    with pytest.raises(ValueError):
        debugger.forward(model, torch.zeros(2, 3, SIZE, SIZE), ["only-one"])


class BlockingStore(FileStore):
    def __init__(self, root) -> None:
        super().__init__(root)
        self.release = threading.Event()

    def put(self, key, data, content_type="application/octet-stream"):
        self.release.wait(30)
        return super().put(key, data, content_type)


def test_a_full_writer_queue_drops_and_counts(model, batch, tmp_path):
    store = BlockingStore(tmp_path / "slow")
    debugger = Debugger(store, ENDPOINT, max_pending_bytes=1)
    debugger.configure(DebuggerConfig(enabled=True, include_regex="^image$"))
    debugger.forward(model, batch[:1], ["first"])  # accepted: nothing pending
    debugger.forward(model, batch[:2], ["second", "third"])  # writer busy and over the bound
    assert debugger.counts["dropped"] == 2
    store.release.set()
    assert debugger.drain(30)
    assert debugger.counts == {"recorded": 1, "dropped": 2, "failed": 0}
    assert [trial_of(store).step_meta(s)["request_id"] for s in trial_of(store).steps()] == ["first"]
    debugger.close()


def test_create_trial_from_a_file_uri(model, batch, store, tmp_path):
    record(model, batch[:1], store)
    trial = create_trial((tmp_path / "store" / "tensors" / ENDPOINT).as_uri())
    assert trial.steps() == [0]
    assert trial.tensor("fc.bias").value(0).shape == (43,)
    with pytest.raises(FileNotFoundError):
        create_trial((tmp_path / "nowhere").as_uri())


@pytest.mark.parametrize("bad", [
    {"include_regex": "("}, {"include_regex": ""}, {"include_regex": "a" * 1001},
    {"sample_rate": 1.5}, {"sample_rate": -0.1}, {"max_steps": 0}, {"enabled": True, "typo": 1},
])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        DebuggerConfig.model_validate(bad)

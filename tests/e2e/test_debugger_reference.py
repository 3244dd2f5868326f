"""The reference's debugger analysis, run on what two running inference replicas recorded.

Two real ``signwatch serve inference`` processes (uvicorn on loopback) share one endpoint and the
real S3 of the stack; the debugger is switched on in each through the admin API with a bearer
token; images go to both over HTTP. Then, as a SageMaker Debugger user would:

- the reference write-up's smdebug snippets (implicit bias, bias x gradient, interpolation) run on
  ``signwatch.debugger.create_trial`` with the reference's names and ``modes.PREDICT``;
- ``signwatch debugger export --format smdebug`` writes the trial to S3 and to a folder, and real
  smdebug (its own virtual environment) reads both back, every value equal bit for bit.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import uuid

import httpx
import numpy as np
import pytest
import scipy.ndimage
import torch

from signwatch.debugger import DEFAULT_INCLUDE_REGEX, create_trial, fullgrad_from_trial, modes
from signwatch.model import load_model
from signwatch.stack import stack_env
from tests.conftest import PROJECT, stop_processes, wait_until
from tests.smdebug.venv import read_with_smdebug
from tests.unit.helpers import png_bytes

pytestmark = pytest.mark.stack

TOKEN = "dbg-" + secrets.token_hex(12)
PER_REPLICA = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def recorded(stack, tmp_path_factory):
    """Two replicas of one endpoint recorded PER_REPLICA requests each; yields what the test needs."""
    run = uuid.uuid4().hex[:8]
    endpoint = f"dbg-{run}"
    logs = tmp_path_factory.mktemp("replicas")
    base_env = os.environ | stack_env(PROJECT) | {
        "SIGNWATCH_ENDPOINT": endpoint,
        "SIGNWATCH_INFERENCE_TOPIC": f"dbg-{run}.inference",
        "SIGNWATCH_ADMIN_TOKEN": TOKEN,
    }
    base_env.pop("SIGNWATCH_DEBUGGER_WORKER", None)  # each replica takes its default: hostname-pid
    procs, bases = [], []
    try:
        for i in range(2):
            port = _free_port()
            log = (logs / f"replica-{i}.log").open("w")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "signwatch_services.cli", "serve", "inference"],
                env=base_env | {"SIGNWATCH_PORT": str(port)}, cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT))
            bases.append(f"http://127.0.0.1:{port}")

        def ready(i: int):
            assert procs[i].poll() is None, f"replica {i} exited with {procs[i].returncode}; see {logs}"
            try:
                return httpx.get(f"{bases[i]}/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        for i in range(2):
            wait_until(lambda: ready(i), timeout_s=180, interval_s=0.2, what=f"replica {i} to be ready")

        auth = {"Authorization": f"Bearer {TOKEN}"}
        for base in bases:
            assert httpx.put(f"{base}/admin/debugger", json={"enabled": True}, timeout=10).status_code == 401
            on = httpx.put(f"{base}/admin/debugger", headers=auth, timeout=30,
                           json={"enabled": True, "include_regex": DEFAULT_INCLUDE_REGEX})
            assert on.status_code == 200, on.text
        workers = [httpx.get(f"{b}/admin/debugger", headers=auth, timeout=10).json()["status"]["worker"]
                   for b in bases]
        assert workers[0] != workers[1], "two replicas on one host must record as two workers"

        sent: dict[str, list[str]] = {w: [] for w in workers}
        for k in range(PER_REPLICA):
            for i, base in enumerate(bases):
                r = httpx.post(f"{base}/invocations", content=png_bytes(seed=10 * i + k, size=48),
                               headers={"content-type": "image/png"}, timeout=60)
                assert r.status_code == 200, r.text
                sent[workers[i]].append(r.headers["X-Signwatch-Event-Id"])

        s3 = stack["s3"]
        uri = f"s3://{s3['bucket']}/tensors/{endpoint}?endpoint={s3['endpoint']}"
        env = stack_env(PROJECT)
        with pytest.MonkeyPatch.context() as mp:  # create_trial's S3 credentials, as a user sets them
            for key in ("SIGNWATCH_S3_ACCESS_KEY", "SIGNWATCH_S3_SECRET_KEY"):
                mp.setenv(key, env[key])
            trial = create_trial(uri)
            wait_until(lambda: sum(len(trial.workers(s)) for s in trial.steps()) == 2 * PER_REPLICA,
                       timeout_s=60, what="both replicas' steps in S3")
            yield {"trial": trial, "uri": uri, "sent": sent, "workers": workers, "env": env, "s3": s3,
                   "endpoint": endpoint}
    finally:
        stop_processes(*procs)
        if "trial" in locals():  # leave the shared bucket as it was
            for prefix in (f"tensors/{endpoint}/", f"smdebug-exports/{endpoint}/"):
                for key in trial.store.list(prefix):
                    trial.store.delete(key)


def test_two_replicas_never_share_a_step_and_the_trial_reads_both(recorded):
    trial, sent = recorded["trial"], recorded["sent"]
    assert trial.workers() == sorted(recorded["workers"])
    for worker, ids in sent.items():
        mine = [s for s in trial.steps() if worker in trial.workers(s)]
        assert len(mine) == PER_REPLICA
        assert [trial.step_meta(s, worker)["request_id"] for s in mine] == ids  # none overwritten
        assert all(trial.step_meta(s, worker)["worker"] == worker for s in mine)
    keys = trial.store.list(f"tensors/{recorded['endpoint']}/steps/")
    assert len([k for k in keys if k.endswith("/meta.json")]) == 2 * PER_REPLICA


def test_reference_snippets_run_on_the_services_trial(recorded):
    # The reference's calls, unchanged but for the import (signwatch's create_trial and modes).
    from signwatch.debugger import create_trial, modes

    trial = create_trial(recorded["uri"])
    model, _ = load_model()
    assert np.array_equal(trial.tensor("ResNet_bn1.bias").value(step_num=0, mode=modes.PREDICT),
                          model.bn1.bias.detach().numpy())
    steps = trial.steps(mode=modes.PREDICT)
    assert steps == list(range(PER_REPLICA))
    # The reference's include regex matches both naming schemes.
    names = trial.tensor_names(regex=DEFAULT_INCLUDE_REGEX)
    assert {"ResNet_input_0", "gradient/ResNet_input_0", "image", "ResNet_layer1.0.bn1.running_var",
            "gradient/layer1.0.bn1_output_0", "layer2.0.downsample.1_output_0"} <= set(names)
    assert trial.tensor_names(regex=".*ResNet_input") == ["ResNet_input_0", "gradient/ResNet_input_0"]

    image_size = 64
    eps = 1e-5  # ADAPTED: the reference's implicit bias forgets BatchNorm's eps (torch's default, in each step's meta)

    def normalize(a):  # ADAPTED: the reference calls normalize() without showing it; min-max over the tensor
        return (a - a.min()) / (a.max() - a.min() + 1e-6)

    bn_layers = [n[len("ResNet_"):-len(".running_mean")] for n in trial.tensor_names(regex=r"^ResNet_.*\.running_mean$")]
    assert "bn1" in bn_layers and "layer4.0.downsample.1" in bn_layers and len(bn_layers) == 20
    for step in steps:
        assert trial.step_meta(step)["eps"]["bn1"] == eps
        # ADDED: the input-gradient term, which the write-up describes in words but shows no code for.
        image = trial.tensor("ResNet_input_0").value(step_num=step, mode=modes.PREDICT)
        input_gradient = trial.tensor("gradient/ResNet_input_0").value(step_num=step, mode=modes.PREDICT)
        saliency_map = normalize(np.abs(input_gradient * image)).sum(axis=1)[0]
        for layer in bn_layers:
            weight_name, running_var_name = f"ResNet_{layer}.weight", f"ResNet_{layer}.running_var"
            running_mean_name, bias_name = f"ResNet_{layer}.running_mean", f"ResNet_{layer}.bias"
            gradient_name = f"gradient/{layer}_output_0"
            # --- the reference: "Computing implicit biases"
            weight = trial.tensor(weight_name).value(step_num=step, mode=modes.PREDICT)
            running_var = trial.tensor(running_var_name).value(step_num=step, mode=modes.PREDICT)
            running_mean = trial.tensor(running_mean_name).value(step_num=step, mode=modes.PREDICT)
            implicit_bias = - running_mean / np.sqrt(running_var + eps) * weight  # ADAPTED: + eps
            # --- the reference: "Multiplying gradients and biases"
            gradient = trial.tensor(gradient_name).value(step_num=step, mode=modes.PREDICT)
            bias = trial.tensor(bias_name).value(step_num=step, mode=modes.PREDICT)
            bias = bias + implicit_bias
            # ADAPTED: bias[None, :, None, None]; the reference's bias * gradient broadcasts the (C,)
            # bias along the width, not the channels (wrong, and an error where C != W).
            bias_gradient = normalize(np.abs(bias[None, :, None, None] * gradient))
            # --- the reference: "interpolate ... for all bias gradients and aggregate"
            for channel in range(bias_gradient.shape[1]):
                interpolated = scipy.ndimage.zoom(bias_gradient[0, channel, :, :],
                                                  image_size / bias_gradient.shape[2], order=1)
                saliency_map += interpolated
        ours = fullgrad_from_trial(trial, step)[0, 0].numpy()
        # scipy's zoom(order=1) is bilinear with corners aligned, as the map's upsampling: the same map.
        np.testing.assert_allclose(saliency_map, ours, rtol=1e-4, atol=1e-4 * float(np.abs(ours).max()))
        # and the trial's map is FullGrad of the live model on the recorded input
        from signwatch.saliency import fullgrad

        live = fullgrad(model, torch.from_numpy(image)).maps[0, 0].numpy()
        np.testing.assert_allclose(ours, live, rtol=1e-4, atol=1e-4 * float(np.abs(live).max()))


def _export(trial_uri: str, out: str, env: dict) -> None:
    """`signwatch debugger export` as a user runs it: a process of its own."""
    done = subprocess.run([sys.executable, "-m", "signwatch_services.cli", "debugger", "export", "--format",
                           "smdebug", "--quiet", trial_uri, out], capture_output=True, text=True, cwd=PROJECT,
                          env=os.environ | env, timeout=300)
    assert done.returncode == 0, done.stderr


def _same_as_signwatch(trial, report, values):
    pairs = {(s, w) for s in trial.steps() for w in trial.workers(s)}
    assert report["steps"] == report["global_steps"] == trial.steps(mode=modes.PREDICT)
    assert report["train_steps"] == []
    assert report["workers"] == trial.workers() and report["num_workers"] == 2
    assert "ResNet_bn1.bias" in report["names"] and "gradient/layer1.0.bn1_output_0" in report["names"]
    assert "image" not in report["names"]  # smdebug's names only
    expected = {}
    for step, worker in pairs:
        root = trial.step_meta(step, worker)["model_class"]
        from signwatch.debugger import smdebug_name

        for own, array in trial.step_tensors(step, worker).items():
            expected[(smdebug_name(own, root), step, worker)] = array
    got = {(v["name"], v["step"], v["worker"]): v for v in report["values"]}
    assert set(got) == set(expected)
    assert sorted(report["names"]) == sorted({n for n, _, _ in expected})
    for key, want in expected.items():
        entry = got[key]
        value = values[entry["key"]]
        assert value.dtype == want.dtype and value.shape == want.shape, key
        assert value.tobytes() == want.tobytes(), key  # bit for bit


def test_real_smdebug_reads_the_export_from_s3_and_from_a_folder(recorded, tmp_path):
    trial, env, s3 = recorded["trial"], recorded["env"], recorded["s3"]
    out_prefix = f"smdebug-exports/{recorded['endpoint']}"
    _export(recorded["uri"], f"s3://{s3['bucket']}/{out_prefix}?endpoint={s3['endpoint']}", env)
    smdebug_env = {"AWS_ENDPOINT_URL_S3": s3["endpoint"], "AWS_ACCESS_KEY_ID": env["SIGNWATCH_S3_ACCESS_KEY"],
                   "AWS_SECRET_ACCESS_KEY": env["SIGNWATCH_S3_SECRET_KEY"], "AWS_REGION": "us-east-1",
                   "AWS_DEFAULT_REGION": "us-east-1"}
    report, values = read_with_smdebug(f"s3://{s3['bucket']}/{out_prefix}", tmp_path / "from-s3", smdebug_env)
    _same_as_signwatch(trial, report, values)

    folder = tmp_path / "export"
    # the same command in this process (a second interpreter start would only cost time)
    from typer.testing import CliRunner

    from signwatch_services.cli import app

    done = CliRunner().invoke(app, ["debugger", "export", "--format", "smdebug", "--quiet", recorded["uri"], str(folder)])
    assert done.exit_code == 0, done.output
    assert (folder / "training_job_end.ts").exists()
    report, values = read_with_smdebug(str(folder), tmp_path / "from-folder")
    _same_as_signwatch(trial, report, values)

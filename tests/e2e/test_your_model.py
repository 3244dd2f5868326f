"""A user's own model, end to end on real Kafka, Redis and S3, one test per architecture family.

As a SageMaker user arrives: a torchvision model (seeded here, its head fitted so that its
predictions spread over its classes) packed as a PyTorch ``model.tar.gz`` (``model.pth`` with
``code/inference.py`` beside it) in S3. ``signwatch serve all`` imports it at start from
``SIGNWATCH_MODEL_PATH`` with no code change; traffic arrives through the unmodified boto3
``sagemaker-runtime`` client and tritonclient's Open Inference Protocol client; the captured
records give the monitor its baseline (``signwatch baseline suggest --capture --upload``); the
debugger records a step readable as a trial; a targeted PGD stream raises an over-prediction
violation against that baseline, and the explainer writes its FullGrad report.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
import uuid

import boto3
import httpx
import numpy as np
import pytest
import torch
import torchvision
from botocore.config import Config
from kafka import KafkaConsumer

from signwatch.attacks import targeted_pgd
from signwatch.data import render_batch
from signwatch.imaging import encode_png
from signwatch.model import architectures
from signwatch.model.core import ModelSpec, preprocess, to_unit_tensor
from signwatch.stack import stack_env
from tests.conftest import PROJECT, running_service, wait_until
from tests.integration.serving import free_port

pytestmark = pytest.mark.stack
ADMIN_TOKEN = "your-model-" + uuid.uuid4().hex[:8]
CLEAN = 100  # a baseline needs at least 100 predictions
ATTACKED = 20  # distinct attacked images, each sent once: a repeated image is one object (tracks)

# (architecture, classes, input size, labels from a file): the write-up's model, the issue's
# resnet50 with labels, then one model of every other family at a small size for speed. Not VGG:
# its 500 MB of weights (the 25088x4096 classifier at any input size) spent 90 of this module's
# 375 s in CI packing and gunzipping model.tar.gz; VGG is served, explained, attacked and
# recorded in tests/unit/test_architectures.py and imported in tests/unit/test_model_import.py.
# resnet18 at 128 px, not 224: PGD and FullGrad cost grows with the pixels (106 s at 224 in CI).
MODELS = [
    ("resnet18", 43, 128, False),
    ("resnet50", 10, 96, True),
    ("regnet_x_400mf", 8, 64, False),
    ("densenet121", 6, 64, True),
    ("mobilenet_v3_small", 5, 64, False),
    ("efficientnet_b0", 7, 64, False),
]


def _labels(n: int, from_file: bool) -> tuple[str, ...]:
    return tuple(f"sign-{chr(65 + i % 26)}{i}" for i in range(n)) if from_file else tuple(f"class_{i}" for i in range(n))


def user_model(name: str, n: int, size: int, images: list[np.ndarray]) -> torch.nn.Module:
    """torchvision's ``name`` (seeded), its head replaced by a random projection of the
    standardised features of ``images``: untrained, but its predictions spread over all classes
    (a raw random head predicts one or two classes for everything)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=n).eval()
    head = dict(model.named_modules())[architectures.get(name).head.rsplit(".", 1)[0]]
    spec = ModelSpec(architecture=name, input_size=size, class_names=_labels(n, False))
    seen = []
    handle = head.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach()))
    with torch.no_grad():
        model(preprocess(images, spec))
    handle.remove()
    features = torch.cat(seen)
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    projection = torch.randn(n, features.shape[1]) / features.shape[1] ** 0.5 * 8
    with torch.no_grad():
        head.weight.copy_(projection / std)
        head.bias.copy_(-(projection / std) @ mean)
    return model


def _model_tar_gz(model: torch.nn.Module) -> bytes:
    weights = io.BytesIO()
    torch.save(model.state_dict(), weights)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in (("model.pth", weights.getvalue()), ("code/inference.py", b"def model_fn(model_dir): ...\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _consume(bootstrap: str, topic: str, until, timeout_s: float = 90) -> list[dict]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             enable_auto_commit=False)
    got: list[dict] = []
    try:
        def done():
            for records in consumer.poll(timeout_ms=500).values():
                got.extend(json.loads(r.value) for r in records)
            return until(got)
        wait_until(done, timeout_s, interval_s=0, what=f"messages on {topic}")
    finally:
        consumer.close()
    return got


def _as_uint8(batch01: torch.Tensor) -> np.ndarray:
    return (batch01.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


@pytest.mark.parametrize("name, n, size, with_labels", MODELS, ids=[m[0] for m in MODELS])
def test_a_users_model_is_served_watched_recorded_and_explained(stack, tmp_path, monkeypatch, name, n, size,
                                                                with_labels):
    import tritonclient.http as triton

    run = uuid.uuid4().hex[:8]
    endpoint = f"yours-{run}"
    s3conf = stack["s3"]
    s3 = boto3.client("s3", endpoint_url=s3conf["endpoint"], aws_access_key_id=s3conf["access_key"],
                      aws_secret_access_key=s3conf["secret_key"], region_name="us-east-1")
    rng = np.random.default_rng(3)
    reference = render_batch(rng.integers(0, 43, 64).tolist(), seed=11, size=size)
    model = user_model(name, n, size, reference)
    labels = _labels(n, with_labels)
    key = f"models/{run}/model.tar.gz"
    s3.put_object(Bucket=s3conf["bucket"], Key=key, Body=_model_tar_gz(model))
    env = os.environ | stack_env(PROJECT) | {
        "SIGNWATCH_MODEL_PATH": f"s3://{s3conf['bucket']}/{key}",
        "SIGNWATCH_MODEL_INPUT_SIZE": str(size),
        "SIGNWATCH_MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "SIGNWATCH_ENDPOINT": endpoint,
        "SIGNWATCH_INFERENCE_TOPIC": f"{endpoint}.inference",
        "SIGNWATCH_VIOLATIONS_TOPIC": f"{endpoint}.violations",
        "SIGNWATCH_EXPLANATIONS_TOPIC": f"{endpoint}.explanations",
        "SIGNWATCH_CAPTURE_GROUP": f"{endpoint}.capture", "SIGNWATCH_MONITOR_GROUP": f"{endpoint}.monitor",
        "SIGNWATCH_CAPTURE_FLUSH_SECONDS": "1",
        "SIGNWATCH_MONITOR_COUNT_WINDOW": str(ATTACKED),  # the attacked stream fills it: over-prediction
        # An untrained model's clean stream is spread overall (checked below) but 20 clean predictions
        # in a row can hold over half of one class (mobilenet_v3_small, class 4, once in CI); only
        # the attacked stream, all of one class, may cross this.
        "SIGNWATCH_MONITOR_SHARE_THRESHOLD": "0.7",
        "SIGNWATCH_MONITOR_BASELINE_RELOAD_SECONDS": "1",
        "SIGNWATCH_ADMIN_TOKEN": ADMIN_TOKEN,
        "SIGNWATCH_PORT": str(free_port()),
    }
    if with_labels:
        (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
        env["SIGNWATCH_MODEL_LABELS"] = str(tmp_path / "labels.txt")
    base = f"http://127.0.0.1:{env['SIGNWATCH_PORT']}"
    started = time.monotonic()
    with running_service(["serve", "all"], env, tmp_path / "serve-all.log", base, timeout_s=240):
        print(f"{name}: imported from S3 and serving after {time.monotonic() - started:.1f} s")
        sagemaker = boto3.client("sagemaker-runtime", endpoint_url=base, region_name="us-east-1",
                                 aws_access_key_id="x", aws_secret_access_key="x",
                                 config=Config(retries={"max_attempts": 1}))
        v2 = triton.InferenceServerClient(base.removeprefix("http://"))
        meta = v2.get_model_metadata(endpoint)
        version = meta["versions"][0]
        out = {o["name"]: o for o in meta["outputs"]}
        assert out["probabilities"]["shape"][-1] == n and v2.is_model_ready(endpoint)

        # 1. Clean traffic, half through boto3 (PNG), half through tritonclient (UINT8 batches).
        clean = render_batch(rng.integers(0, 43, CLEAN).tolist(), seed=21, size=size)
        top1 = []
        for image in clean[: CLEAN // 2]:
            r = sagemaker.invoke_endpoint(EndpointName=endpoint, Body=encode_png(image), ContentType="image/png")
            answer = json.loads(r["Body"].read())
            assert answer["model_version"] == version and answer["predictions"][0]["label"] in labels
            top1.append(answer["predictions"][0]["class_id"])
        for start in range(CLEAN // 2, CLEAN, 10):
            batch = np.stack(clean[start:start + 10])
            tensor = triton.InferInput("images", list(batch.shape), "UINT8")
            tensor.set_data_from_numpy(batch, binary_data=True)
            result = v2.infer(endpoint, [tensor], outputs=[triton.InferRequestedOutput("probabilities", binary_data=True)])
            probabilities = result.as_numpy("probabilities")
            assert probabilities.shape == (len(batch), n) and np.allclose(probabilities.sum(1), 1, atol=1e-4)
            top1 += probabilities.argmax(1).tolist()
        shares = np.bincount(top1, minlength=n) / len(top1)
        assert shares.max() < 0.5, f"precondition: the clean stream is spread over the classes ({shares})"
        target = int(np.argmin(shares))  # attack towards the class it predicts least

        # 2. The captured records give the baseline, uploaded where the monitor reloads it.
        def captured():
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3conf["bucket"], Prefix=f"datacapture/{endpoint}/")
                    .get("Contents", [])]
            lines = sum(len(s3.get_object(Bucket=s3conf["bucket"], Key=k)["Body"].read().splitlines()) for k in keys)
            return lines >= CLEAN
        wait_until(captured, 60, interval_s=0.5, what=f"{CLEAN} captured records")
        suggested = subprocess.run(
            [sys.executable, "-m", "signwatch_services.cli", "baseline", "suggest", "--capture",
             f"datacapture/{endpoint}", "--upload", "--out", str(tmp_path / "baseline")],
            env=env, cwd=PROJECT, capture_output=True, text=True, timeout=300)
        assert suggested.returncode == 0, suggested.stderr
        baseline = json.loads(suggested.stdout)
        assert baseline["item_count"] == CLEAN
        statistics = json.loads((tmp_path / "baseline" / "statistics.json").read_text())
        buckets = statistics["features"][0]["string_statistics"]["distribution"]["categorical"]["buckets"]
        assert len(buckets) == n  # the served model's classes, not GTSRB's

        # 3. The debugger records one request with the family's default include regex.
        from signwatch.debugger import create_trial, fullgrad_result_from_trial

        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        r = httpx.put(f"{base}/admin/debugger", json={"enabled": True, "max_steps": 1}, headers=admin, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["config"]["include_regex"] == architectures.get(name).include_regex(model)
        sagemaker.invoke_endpoint(EndpointName=endpoint, Body=encode_png(clean[0]), ContentType="image/png")
        uri = f"s3://{s3conf['bucket']}/tensors/{endpoint}?endpoint={s3conf['endpoint']}"
        monkeypatch.setenv("SIGNWATCH_S3_ACCESS_KEY", s3conf["access_key"])  # the trial's credentials
        monkeypatch.setenv("SIGNWATCH_S3_SECRET_KEY", s3conf["secret_key"])
        trial = wait_until(lambda: (t := create_trial(uri)) and t.steps() and t, 30, interval_s=0.3,
                           what="the recorded step")
        step = trial.steps()[0]
        root = architectures.get(name).root
        assert f"{root}_input_0" in trial.tensor_names(regex=f"{root}_input", step=step)  # smdebug's name
        recorded = fullgrad_result_from_trial(trial, step)  # strict: every bias layer was recorded
        assert recorded.map.shape == (1, 1, size, size)

        # 4. A stream attacked towards the least predicted class raises over-prediction against the baseline.
        x01 = to_unit_tensor(clean[:48], size)
        spec = ModelSpec(architecture=name, input_size=size, class_names=labels)
        attack = targeted_pgd(model, spec, x01, target=labels[target], eps=16 / 255, step=2 / 255, steps=20)
        adversarial = _as_uint8(attack.adversarial)[attack.success.numpy()]
        assert len(adversarial) >= ATTACKED, f"PGD reached {labels[target]} on {len(adversarial)} of 48 images"
        for i, image in enumerate(adversarial[:ATTACKED]):  # different signs: none folds into another
            if i % 2:
                sagemaker.invoke_endpoint(EndpointName=endpoint, Body=encode_png(image), ContentType="image/png")
            else:
                tensor = triton.InferInput("image_bytes", [1], "BYTES")
                tensor.set_data_from_numpy(np.array([encode_png(image)], dtype=np.object_), binary_data=True)
                v2.infer(endpoint, [tensor])
        bootstrap = stack["kafka"]["bootstrap"]
        violations = _consume(bootstrap, f"{endpoint}.violations",
                              lambda got: [v for v in got if v["state"] == "open"])
        [violation] = [v for v in violations if v["state"] == "open"]  # one incident
        assert violation["class_id"] == target and f"({labels[target]})" in violation["check"]["description"]
        assert violation["model_version"] == version and violation["baseline_id"] == baseline["baseline_id"]

        # 5. The explainer's FullGrad report (exact for the families built of piecewise-linear layers).
        explanations = _consume(bootstrap, f"{endpoint}.explanations",
                                lambda got: [e for e in got if e["violation_id"] == violation["violation_id"]])
        [explanation] = [e for e in explanations if e["violation_id"] == violation["violation_id"]]
        report = json.loads(s3.get_object(Bucket=s3conf["bucket"], Key=explanation["report"])["Body"].read())
        assert report["method"] == "fullgrad" and report["samples"]
        errors = [s["completeness_rel_error"] for s in report["samples"]]
        assert {s["predicted_class"] for s in report["samples"]} == {target}
        # The exact families miss completeness by float32 rounding only (2e-6 to 7e-5 measured here,
        # VGG's 25088-wide classifier the most); the others by their approximation, reported.
        assert max(errors) < architectures.get(name).fullgrad_warn_above, errors
        assert report["model"]["fullgrad"] == ("exact" if architectures.get(name).fullgrad_exact else "approximate")
        print(f"{name}: done in {time.monotonic() - started:.1f} s; FullGrad completeness error {max(errors):.1e}")

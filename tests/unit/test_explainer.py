from __future__ import annotations

import base64
import hashlib
import io
import json

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from signwatch.config import Settings
from signwatch.events import ViolationCheck, ViolationEvent, ViolationSample
from signwatch.explaining import Explainer, original_key, outside_share, sign_mask
from signwatch.imaging import encode_png
from signwatch.model import load_model
from signwatch.ports.store_file import FileStore
from signwatch.publishing import make_input_payload
from signwatch_services.explainer.routes import explain_router


@pytest.fixture(scope="module")
def model_and_spec():
    return load_model()


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)


def _sample(store, event_id: str, raw: bytes) -> ViolationSample:
    """A v2 sample: the bytes in the store, the violation holds the reference and the sha256."""
    digest = hashlib.sha256(raw).hexdigest()
    ref = f"inputs/ep/samples/{digest}.png"
    store.put(ref, raw, "image/png")
    return ViolationSample(event_id=event_id, ref=ref, sha256=digest, size=len(raw), content_type="image/png",
                           predicted_class=14, probability=0.9)


def _violation(images, ids=None, store=None) -> ViolationEvent:
    samples = [_sample(store, ids[i] if ids else f"e{i}", encode_png(img)) for i, img in enumerate(images)]
    samples.append(_sample(store, "broken", b"not an image"))
    return ViolationEvent(endpoint="ep", variant="v", count=30, total=40, window_seconds=3600, class_id=14,
                          check=ViolationCheck(feature_name="PredictedClass", constraint_check_type="baseline_drift_check",
                                               description="Class 14 (Stop) predicted 75.00% of the time"),
                          samples=samples)


def test_violation_report_panels_and_index_land_in_the_store(tmp_path, model_and_spec):
    model, spec = model_and_spec
    store = FileStore(tmp_path)
    images = [_image(i) for i in range(3)]
    store.put(original_key(hashlib.sha256(encode_png(images[0])).hexdigest()), encode_png(_image(99)), "image/png")
    violation = _violation(images, store=store)
    event = Explainer(model, spec, store).explain(violation)
    base = f"explanations/{violation.violation_id}"
    assert event.report == f"{base}/report.json"
    assert set(store.list(base)) == set(event.objects)
    assert sorted(k for k in event.objects if k.endswith(".png")) == [f"{base}/e{i}.png" for i in range(3)]
    report = json.loads(store.get(event.report))
    assert [s["event_id"] for s in report["samples"]] == ["e0", "e1", "e2"]
    assert report["skipped"][0]["event_id"] == "broken"
    assert [s["original_known"] for s in report["samples"]] == [True, False, False]
    assert all(s["completeness_rel_error"] < 1e-3 for s in report["samples"])
    panel_with_original = Image.open(io.BytesIO(store.get(f"{base}/e0.png")))
    panel_without = Image.open(io.BytesIO(store.get(f"{base}/e1.png")))
    assert panel_with_original.width > panel_without.width, "original | adversarial | map"
    assert "Class 14 (Stop)" in store.get(f"{base}/index.html").decode()


def test_a_replayed_violation_rewrites_the_same_objects(tmp_path, model_and_spec):
    model, spec = model_and_spec
    store = FileStore(tmp_path)
    violation = _violation([_image(1)], store=store)
    first = Explainer(model, spec, store).explain(violation)
    second = Explainer(model, spec, store).explain(violation)
    assert first.objects == second.objects and len(store.list("explanations")) == len(first.objects)


def test_sign_mask_and_looks_away_share():
    mask = sign_mask(64)
    assert mask[32, 32] and not mask[0, 0] and 0.5 < mask.mean() < 0.7
    centre = np.zeros((64, 64))
    centre[28:36, 28:36] = 1
    corners = np.zeros((64, 64))
    corners[:6, :6] = corners[-6:, -6:] = 1
    assert outside_share(centre, mask) == 0.0
    assert outside_share(corners, mask) == 1.0
    box = sign_mask(64, roi=(10, 10, 20, 20), image_size=32)
    assert box[30, 30] and not box[50, 50]


def test_post_explain_answers_json_or_png_and_rejects_bad_images(tmp_path, model_and_spec):
    model, spec = model_and_spec
    app = FastAPI()
    app.include_router(explain_router(Explainer(model, spec, FileStore(tmp_path)),
                                      Settings(max_body_bytes=1 << 20, max_image_side=1024)))
    client = TestClient(app)
    body = encode_png(_image(5))
    r = client.post("/explain?method=fullgrad", content=body, headers={"content-type": "image/png"})
    assert r.status_code == 200
    data = r.json()
    assert data["method"] == "fullgrad" and data["target"] == data["predicted"]["class_id"]
    assert data["completeness_rel_error"] < 1e-3 and isinstance(data["looks_away"], bool)
    assert base64.b64decode(data["panel_png_base64"])[:4] == b"\x89PNG"
    r = client.post("/explain?method=gradcam&target=14&format=png", content=body, headers={"content-type": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert client.post("/explain", content=b"nope", headers={"content-type": "image/png"}).status_code == 400
    assert client.post("/explain?target=99", content=body, headers={"content-type": "image/png"}).status_code == 422

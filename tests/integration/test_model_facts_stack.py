"""A model that is not GTSRB's, on the real Kafka, Redis and S3: the inference service publishes
its manifest; a monitor process started before it (without SIGNWATCH_MODEL_PATH) waits for it,
says so on /health/ready, then counts the model's 10 classes under its labels and version and
raises over-prediction without a baseline (none fits a 10-class model yet)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import httpx
import pytest

from signwatch.model.architectures import build
from signwatch.model.core import ModelSpec, save_model
from signwatch.model.published import published_key, read_published
from signwatch.monitoring import read_snapshot
from signwatch.ports import open_bus, open_state
from signwatch.runtime import open_ports
from tests.conftest import PROJECT, stop_processes, wait_until
from tests.integration.serving import live_server
from tests.integration.test_monitor_stack import _free_port, _read_topic, _settings
from tests.unit.helpers import png_bytes

pytestmark = pytest.mark.stack
LABELS = tuple(f"sign-{i}" for i in range(10))


def _ready(port: int) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2)
    except httpx.HTTPError:
        return None


def test_the_monitor_learns_a_ten_class_model_from_the_store(stack, unique, tmp_path):
    version = f"x-{unique}"
    weights = save_model(build("resnet18", 10), ModelSpec(architecture="resnet18", input_size=32,
                                                          class_names=LABELS, version=version),
                         tmp_path / "mine.safetensors", half=False)
    s = _settings(stack, f"facts-{unique}").model_copy(update={"model_path": str(weights)})
    open_bus(s.bus_url).ensure_topics([s.inference_topic, s.violations_topic], 3)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "SIGNWATCH_MODEL_PATH"} | {  # the monitor reads the store
        "SIGNWATCH_BUS_URL": s.bus_url, "SIGNWATCH_STATE_URL": s.state_url, "SIGNWATCH_STORE_URL": s.store_url,
        "SIGNWATCH_S3_ACCESS_KEY": s.s3_access_key.get_secret_value(),
        "SIGNWATCH_S3_SECRET_KEY": s.s3_secret_key.get_secret_value(),
        "SIGNWATCH_INFERENCE_TOPIC": s.inference_topic, "SIGNWATCH_VIOLATIONS_TOPIC": s.violations_topic,
        "SIGNWATCH_ENDPOINT": s.endpoint, "SIGNWATCH_MONITOR_PORT": str(port), "SIGNWATCH_TOPIC_PARTITIONS": "3",
        "SIGNWATCH_MONITOR_GROUP": s.monitor_group}
    log_path = tmp_path / "monitor.log"
    with log_path.open("w") as log:
        monitor = subprocess.Popen([sys.executable, "-m", "signwatch_services.cli", "serve", "monitor"], env=env,
                                   cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT)
    try:
        def waiting():
            assert monitor.poll() is None, log_path.read_text()[-3000:]
            r = _ready(port)
            return r is not None and r.status_code == 503 and r.json().get("waiting_for")

        reason = wait_until(waiting, 90, 0.3, "the monitor to say what it waits for")
        assert published_key(s.endpoint) in next(iter(reason.values()))

        with live_server(s) as (base, core):
            assert core.spec.num_classes == 10
            store = open_ports(s).store
            assert wait_until(lambda: read_published(store, s.endpoint), 30, 0.2, "the manifest").version == version
            wait_until(lambda: (r := _ready(port)) is not None and r.status_code == 200, 60, 0.3,
                       "the monitor to be ready once the manifest is there")
            # 40 different images (one image sent 40 times is one object: its frames fold into one
            # observation); an untrained model answers nearly all of them with one class
            answers = [httpx.post(f"{base}/invocations", content=png_bytes(seed=i, size=40),
                                  headers={"content-type": "image/png"}, timeout=30).json() for i in range(40)]
        tops = Counter(a["predictions"][0]["class_id"] for a in answers)
        top_id, top_n = tops.most_common(1)[0]
        assert top_n > 0.6 * len(answers), f"precondition: one class dominates the answers ({tops})"
        top = next(a["predictions"][0] for a in answers if a["predictions"][0]["class_id"] == top_id)
        assert top["label"] in LABELS and answers[0]["model_version"] == version

        def over_prediction():
            return [v for v in _read_topic(stack["kafka"]["bootstrap"], s.violations_topic)
                    if v.check_name == "over_prediction" and v.state == "open"]

        raised = wait_until(over_prediction, 90, 0.5, "the over-prediction violation")
        assert raised[0].class_id == top["class_id"] and raised[0].model_version == version
        assert raised[0].check.description.startswith(f"Class {top['class_id']} ({top['label']}) predicted")
        assert raised[0].baseline_id is None, "no baseline fits a 10-class model yet"
        snap = read_snapshot(open_state(s.state_url), s.endpoint)
        assert snap["num_classes"] == 10 and snap["model_version"] == version
        assert snap["baseline"] is None and "baseline suggest --capture" in snap["baseline_status"]
        assert not store.exists(f"baselines/{s.endpoint}/statistics.json"), "the GTSRB baseline was not written"
        assert "waiting for the served model's facts" in log_path.read_text()
    finally:
        stop_processes(monitor)

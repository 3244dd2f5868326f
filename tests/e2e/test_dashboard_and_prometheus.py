"""What an operator looks at, on the real stack: the live dashboard in a real browser, and real
Prometheus scraping the services and answering every query of the Grafana dashboard.

One ``signwatch serve all`` on the shared Kafka, Redis and S3 (its own endpoint and topics);
Debian's ``prometheus`` on loopback scraping its /metrics every second; Debian's ``chromium``
driven by selenium through ``chromedriver``. A clean stream, then a stream attacked towards
Stop (targeted PGD, 16/255): the page, left open, must show the live counts and then the
violation with its saliency panel, without a reload. Then labels for every served prediction
(``POST /ground-truth``, naming the event id the response gave or the inference id the client
sent): the page shows the realised accuracy beside the estimate and the confusion heat map. The
screenshot is kept under ``test-artifacts/`` (``SIGNWATCH_DASHBOARD_SCREENSHOT`` copies it
elsewhere, e.g. docs/images).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import boto3
import httpx
import numpy as np
import pytest

from signwatch.attacks import targeted_pgd
from signwatch.data import render_batch
from signwatch.explaining import original_key
from signwatch.imaging import encode_png
from signwatch.model import load_model
from signwatch.model.core import to_unit_tensor
from signwatch_services.demo import DEMO_EPS, DEMO_STEPS
from tests.conftest import PROJECT, running_service, stop_processes, wait_until
from tests.e2e.test_loop_on_real_stack import _free_port
from tests.integration.serving import endpoint_env

pytestmark = pytest.mark.stack
STOP = 14
ARTIFACTS = PROJECT / "test-artifacts"
GRAFANA = PROJECT / "deploy" / "grafana" / "signwatch.json"
ADMIN_TOKEN = "e2e-" + __import__("secrets").token_hex(8)


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: .ci/run installs it (apt-get install prometheus chromium chromium-driver)"
    return path


@pytest.fixture(scope="module")
def attack():
    """The attacked stream, computed in a thread while the services start (it takes a minute)."""
    out: dict = {}

    def run():
        model, spec = load_model()
        out["classes"] = np.random.default_rng(12).integers(0, 43, 60).tolist()
        to_attack = render_batch(out["classes"], seed=4321, size=spec.input_size)
        result = targeted_pgd(model, spec, to_unit_tensor(list(to_attack), spec.input_size), target=STOP,
                              eps=DEMO_EPS, steps=DEMO_STEPS)
        out["originals"] = to_attack
        out["adversarial"] = (result.adversarial.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)

    worker = threading.Thread(target=run, name="pgd")
    worker.start()

    def wait():
        worker.join(300)
        assert "adversarial" in out, "the attack did not finish"
        return out["originals"], out["adversarial"], out["classes"]
    yield wait
    worker.join(300)


@pytest.fixture(scope="module")
def loop(stack, tmp_path_factory):
    run = uuid.uuid4().hex[:8]
    port = _free_port()
    # 100 posts, of which the monitor folds look-alike frames of one sign seen within seconds
    # (tracks): the drift tests judge from 40 counted predictions, not the default 100.
    env = endpoint_env(f"dash-{run}", port, capture_flush_seconds=1, monitor_min_drift=40,
                       admin_token=ADMIN_TOKEN, ground_truth_topic=f"dash-{run}.ground-truth")
    log = tmp_path_factory.mktemp("dash") / "serve-all.log"
    base = f"http://127.0.0.1:{port}"
    with running_service(["serve", "all"], env, log, base):
        yield {"base": base, "port": port, "endpoint": env["SIGNWATCH_ENDPOINT"], "log": log,
               "bootstrap": stack["kafka"]["bootstrap"], "s3": stack["s3"], "inference_topic": env["SIGNWATCH_INFERENCE_TOPIC"]}


@pytest.fixture(scope="module")
def prometheus(loop, tmp_path_factory):
    root = tmp_path_factory.mktemp("prometheus")
    port = _free_port()
    (root / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: signwatch\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{loop['port']}']}}]\n")
    check = subprocess.run([_tool("promtool"), "check", "config", str(root / "prometheus.yml")],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen([_tool("prometheus"), f"--config.file={root / 'prometheus.yml'}",
                             f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=(root / "prometheus.log").open("w"), stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}"

    def up():
        assert proc.poll() is None, (root / "prometheus.log").read_text()[-2000:]
        try:  # /-/ready answers 503 in plain text until the TSDB has opened: not ready yet
            if httpx.get(f"{api}/-/ready", timeout=2).status_code != 200:
                return False
            r = httpx.get(f"{api}/api/v1/query", params={"query": "up"}, timeout=2)
        except httpx.HTTPError:
            return False
        if r.status_code != 200:
            return False
        return any(s["value"][1] == "1" for s in r.json()["data"]["result"])

    try:
        wait_until(up, 60, 0.3, "Prometheus to scrape the service")
        yield api
    finally:
        stop_processes(proc, grace_s=30)


@pytest.fixture(scope="module")
def browser(loop):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _tool("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1300"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(_tool("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _post(base, img, ids: list | None = None, inference_id: str | None = None) -> int:
    """The top-1 class; ``ids`` gets the id a label may name: the client's inference id when it
    sent one, else the event id the response names."""
    headers = {"content-type": "image/png"} | ({"X-Amzn-SageMaker-Inference-Id": inference_id} if inference_id else {})
    r = httpx.post(f"{base}/invocations", content=encode_png(img), headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    if ids is not None:
        ids.append(inference_id or r.headers["x-signwatch-event-id"])
    return r.json()["predictions"][0]["class_id"]


def _post_labels(base, labels: list[dict]) -> dict:
    def posted():
        r = httpx.post(f"{base}/ground-truth", json=labels, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                       timeout=30)
        assert r.status_code in (202, 503), r.text  # 503: the monitor does not know the model yet
        return r.json() if r.status_code == 202 else None
    body = wait_until(posted, 30, 0.5, "the labels accepted")
    assert body["published"] == len(labels) and not body["rejected"], body
    return body


def _grafana_queries(endpoint: str) -> list[tuple[str, str]]:
    dash = json.loads(GRAFANA.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$endpoint", endpoint)
            out.append((panel["title"], expr))
    return out


def test_dashboard_shows_counts_then_the_violation_and_prometheus_answers_every_panel(attack, loop, prometheus,
                                                                                      browser):
    from selenium.webdriver.common.by import By

    t0 = time.monotonic()
    browser.get(f"{loop['base']}/dashboard")
    polls = lambda: int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-polls") or 0)  # noqa: E731
    wait_until(lambda: polls() >= 1, 30, 0.2, "the page's first poll")
    assert browser.find_element(By.ID, "endpoint").text == loop["endpoint"]

    # 1. A clean stream: the page (never reloaded) shows the live counts.
    model, spec = load_model()
    rng = np.random.default_rng(11)
    clean_classes = rng.integers(0, 43, 40).tolist()
    clean = render_batch(clean_classes, seed=2024, size=spec.input_size)
    assert browser.find_element(By.ID, "total").text in ("–", "0"), "nothing counted yet"
    browser.execute_script("window.__notReloaded = true")  # gone if the page were reloaded
    ids: list[str] = []  # the clean stream's labels name the event ids, the attacked one's inference ids
    top1 = [_post(loop["base"], img, ids) for img in clean]
    assert top1.count(STOP) < 20
    wait_until(lambda: browser.find_element(By.ID, "total").text not in ("–", "", "0"), 60, 0.3,
               "live counts on the page")
    assert browser.execute_script("return window.__notReloaded === true"), "updated without a reload"
    assert browser.find_elements(By.CSS_SELECTOR, "#classes .bar"), "the class histogram is drawn"

    print(f"clean stream shown at {time.monotonic() - t0:.1f} s")
    # A poison message: the consumers dead-letter it (the "dead-lettered" panel has data).
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=loop["bootstrap"])
    producer.send(loop["inference_topic"], key=b"poison", value=b"not an event").get(timeout=10)
    producer.close()

    # 2. A stream attacked towards Stop: the violation and its saliency panel appear.
    to_attack, adversarial, attacked_classes = attack()
    print(f"attack computed at {time.monotonic() - t0:.1f} s")
    # As the demo does: the attacker's originals, so that the explainer draws triptychs
    # (original | adversarial input | saliency).
    s3conf = loop["s3"]
    s3 = boto3.client("s3", endpoint_url=s3conf["endpoint"], aws_access_key_id=s3conf["access_key"],
                      aws_secret_access_key=s3conf["secret_key"], region_name="us-east-1")
    for original, adv in zip(to_attack, adversarial):
        s3.put_object(Bucket=s3conf["bucket"], Key=original_key(hashlib.sha256(encode_png(adv)).hexdigest()),
                      Body=encode_png(original), ContentType="image/png")
    attacked = [_post(loop["base"], img, ids, inference_id=f"attacked-{i}") for i, img in enumerate(adversarial)]
    assert (top1 + attacked).count(STOP) / len(top1 + attacked) > 0.5, "the attack made Stop the majority"
    # Labels for all of them, while the violation is explained: the true classes of the rendered signs.
    truth = clean_classes + attacked_classes
    _post_labels(loop["base"], [{"id": i, "label": c} for i, c in zip(ids, truth)])
    realised = float(np.mean(np.array(truth) == np.array(top1 + attacked)))

    def panel_loaded():  # the Stop violation's block, with its panel image decoded by the browser
        for block in browser.find_elements(By.CSS_SELECTOR, ".violation"):
            if "Class 14 (Stop)" not in block.text:
                continue
            imgs = block.find_elements(By.CSS_SELECTOR, "img.panel")
            if imgs and browser.execute_script(
                    "return arguments[0].complete && arguments[0].naturalWidth > 0", imgs[0]):
                return True
        return False
    wait_until(panel_loaded, 120, 0.5, "the violation and its saliency panel on the page")
    print(f"violation and panel shown at {time.monotonic() - t0:.1f} s")

    def drift_shown():  # the drift statistics of the attacked window, as numbers
        cells = browser.find_elements(By.CSS_SELECTOR, "#drift tr td:nth-child(2)")
        return any(re.fullmatch(r"[0-9.e+-]+", c.text) for c in cells)
    try:
        wait_until(drift_shown, 30, 0.5, "the drift statistics on the page")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {browser.find_element(By.ID, 'drift').text!r}") from None
    text = browser.find_element(By.ID, "violations").text
    assert "Stop" in text, text

    # 3. The labels joined: realised accuracy beside the estimate, and the confusion heat map.
    def quality_shown():
        return browser.find_element(By.ID, "q-labels").text == str(len(truth))
    try:
        wait_until(quality_shown, 30, 0.3, "every label joined and shown on the page")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {browser.find_element(By.ID, 'quality').text!r}") from None
    assert browser.find_element(By.ID, "q-accuracy").text == f"{100 * realised:.1f}%"
    assert re.fullmatch(r"[0-9.]+%", browser.find_element(By.ID, "q-estimate").text)
    assert f"matched {len(truth)}" in browser.find_element(By.ID, "q-join").text
    total, diagonal = browser.execute_script(  # in one go: the page redraws the table when the counts change
        "const n = (sel) => [...document.querySelectorAll(sel)].reduce((a, c) => a + Number(c.dataset.count), 0);"
        "return [n('#confusion td'), n('#confusion td.diag')];")
    assert total == len(truth), "every labelled prediction in the heat map"
    assert diagonal == round(realised * len(truth)), "right answers on the diagonal"
    assert browser.find_elements(By.CSS_SELECTOR, "#q-chart polyline.realised, #q-chart circle.realised")
    print(f"labels shown at {time.monotonic() - t0:.1f} s")
    assert browser.execute_script("return window.__notReloaded === true")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    browser.find_element(By.ID, "quality").screenshot(str(ARTIFACTS / "dashboard-quality.png"))  # below the fold
    if os.environ.get("SIGNWATCH_DASHBOARD_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["SIGNWATCH_DASHBOARD_SCREENSHOT"])

    # 4. Real Prometheus scraped all that: every Grafana query returns data.
    queries = _grafana_queries(loop["endpoint"])
    assert len(queries) >= 10

    empty: list = []

    def every_query_answers():
        empty.clear()
        for title, expr in queries:
            r = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
            assert r["status"] == "success", (title, expr, r)
            if not r["data"]["result"]:
                empty.append((title, expr))
        return not empty
    try:
        wait_until(every_query_answers, 30, 1.0, "every Grafana query to return data")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; empty: {empty}") from None

    def accuracy_gauge():  # the realised accuracy the page showed, as Prometheus has it
        r = httpx.get(f"{prometheus}/api/v1/query", timeout=10, params={"query": (
            f'signwatch_monitor_quality_metric{{endpoint="{loop["endpoint"]}",metric="accuracy",window="time"}}')})
        found = r.json()["data"]["result"]
        return found and abs(float(found[0]["value"][1]) - realised) < 1e-9
    wait_until(accuracy_gauge, 10, 0.5, f"the realised accuracy gauge at {realised}")
    print(f"Prometheus answered at {time.monotonic() - t0:.1f} s")

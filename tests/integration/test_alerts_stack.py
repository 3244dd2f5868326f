"""An open violation reaches a person: the shipped rules (deploy/prometheus/alerts.yml) in Debian's
``prometheus``, routed by ``prometheus-alertmanager`` to a webhook, both on loopback.

The monitor (the service's loop and HTTP app, in this process) counts events published to the
shared Kafka, on its own endpoint and topics, with a 10 s time window, a 20-prediction count window
and no hysteresis (``monitor_resolve_after_*`` 0), so that an incident opens and resolves in
seconds. Prometheus scrapes it every second and evaluates the rules every second; Alertmanager waits
a second before it sends a group. Thirty predictions of Stop open an over-prediction incident: the
webhook receives the firing alert with the violation's description and the link to its explanation;
then varied predictions clear both windows, the incident resolves, and the webhook receives the
resolved alert.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from signwatch.config import Settings
from signwatch.model.core import load_spec
from signwatch.ports import open_bus
from signwatch.runtime import open_ports
from signwatch_services.health import loops_waiting, worker_app
from signwatch_services.monitor.server import build_loop
from tests.conftest import PROJECT, stop_processes, wait_until
from tests.integration.serving import free_port
from tests.unit.helpers import inference_event

pytestmark = pytest.mark.stack
RULES = PROJECT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = "https://signwatch.example.test"


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: deploy/install-test-tools.sh installs it (apt-get install {name})"
    return path


class _Webhook:
    """Alertmanager's webhook receiver: every POSTed notification, in order."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True).start()

    def alerts(self, status: str) -> list[dict]:
        return [a for n in list(self.received) for a in n["alerts"]
                if a["labels"]["alertname"] == "SignwatchViolationOpen" and a["status"] == status]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _process(argv: list[str], log: Path, ready_url: str) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT)

    def ready():
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            return httpx.get(ready_url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
    try:
        wait_until(ready, 30, 0.1, f"{Path(argv[0]).name} to be ready")
    except BaseException:
        stop_processes(proc, grace_s=10)
        raise
    return proc


@pytest.fixture
def monitor(stack, unique):
    """The monitor's loop and its /metrics on a free loopback port; yields (settings, url, loop)."""
    s3 = stack["s3"]
    name = f"alerts-{unique}"
    settings = Settings(
        bus_url=f"kafka://{stack['kafka']['bootstrap']}", state_url=stack["redis"]["url"],
        store_url=f"s3://{s3['bucket']}?endpoint={s3['endpoint']}", s3_access_key=s3["access_key"],
        s3_secret_key=s3["secret_key"], endpoint=name, inference_topic=f"{name}.inference",
        violations_topic=f"{name}.violations", baselines_topic=f"{name}.baselines",
        ground_truth_topic=f"{name}.ground-truth", topic_partitions=1, monitor_group=name,
        monitor_window_seconds=10, monitor_bucket_seconds=1, monitor_count_window=20,
        monitor_resolve_after_seconds=0, monitor_resolve_after_predictions=0, monitor_sequential=False,
        monitor_learn_baseline_seconds=0, monitor_track_window_seconds=0, monitor_ground_truth=False,
        dashboard_url=DASHBOARD)
    ports = open_ports(settings)
    registry = CollectorRegistry()
    loop = build_loop(settings, load_spec(), ports, registry=registry)
    thread = loop.start_thread()
    port = free_port()
    app = worker_app("signwatch monitor", [thread], ports, registry, waiting=loops_waiting([loop]))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, name="monitor-http", daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{url}/metrics"), 30, 0.1, "the monitor's /metrics")
        yield settings, url, loop
    finally:
        server.should_exit = True
        loop.stop()
        thread.join(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def webhook():
    hook = _Webhook()
    yield hook
    hook.close()


@pytest.fixture
def alerting(monitor, webhook, tmp_path):
    """Alertmanager routing every alert to the webhook, Prometheus with the shipped rules sending to it."""
    _, monitor_url, _ = monitor
    am_port, prom_port = free_port(), free_port()
    (tmp_path / "alertmanager.yml").write_text(
        "route: {receiver: webhook, group_by: [alertname, violation_id], group_wait: 1s, group_interval: 1s,"
        " repeat_interval: 1h}\n"
        f"receivers: [{{name: webhook, webhook_configs: [{{url: '{webhook.url}', send_resolved: true}}]}}]\n")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{RULES}']\n"
        f"alerting: {{alertmanagers: [{{static_configs: [{{targets: ['127.0.0.1:{am_port}']}}]}}]}}\n"
        "scrape_configs:\n"
        f"  - {{job_name: signwatch, static_configs: [{{targets: ['{monitor_url.removeprefix('http://')}']}}]}}\n")
    check = subprocess.run([_tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    procs = []
    try:
        procs.append(_process([_tool("prometheus-alertmanager"), f"--config.file={tmp_path / 'alertmanager.yml'}",
                               f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
                               "--cluster.listen-address="],  # no gossip port: one instance, loopback only
                              tmp_path / "alertmanager.log", f"http://127.0.0.1:{am_port}/-/ready"))
        procs.append(_process([_tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                               f"--storage.tsdb.path={tmp_path / 'prom'}",
                               f"--web.listen-address=127.0.0.1:{prom_port}"],
                              tmp_path / "prometheus.log", f"http://127.0.0.1:{prom_port}/-/ready"))
        yield f"http://127.0.0.1:{prom_port}"
    finally:
        stop_processes(*procs, grace_s=10)


def _publish(settings: Settings, events) -> None:
    bus = open_bus(settings.bus_url)
    try:
        for e in events:
            bus.publish(settings.inference_topic, e.event_id, e.to_bytes())
        bus.flush(30)
    finally:
        bus.close()


def _events(settings: Settings, classes: list[int], start: float) -> list:
    return [inference_event(class_id=c, probability=0.99, endpoint=settings.endpoint,
                            time=datetime.fromtimestamp(start + i * 0.1, timezone.utc))
            for i, c in enumerate(classes)]


def test_an_open_violation_reaches_the_webhook_with_its_link_then_resolves(monitor, webhook, alerting):
    settings, _, loop = monitor
    t0 = time.monotonic()
    # 30 predictions of Stop, 20 s ago: an over-prediction incident opens.
    _publish(settings, _events(settings, [14] * 30, time.time() - 20))
    [firing] = wait_until(lambda: webhook.alerts("firing"), 40, 0.1, "the firing alert at the webhook")
    print(f"firing alert at the webhook {time.monotonic() - t0:.1f} s after the events were published")
    labels, notes = firing["labels"], firing["annotations"]
    [record] = [r for r in loop.handler.monitor.incidents.open_records(["model"])]
    violation_id = record["violation_id"]
    assert labels["violation_id"] == violation_id and labels["endpoint"] == settings.endpoint
    assert labels["check"] == "over_prediction" and labels["class_id"] == "14" and labels["severity"] == "page"
    assert labels["description"] == record["description"] and "Class 14 (Stop) predicted" in labels["description"]
    link = f"{DASHBOARD}/dashboard/violations/{violation_id}/"
    assert notes["explanation_url"] == link and link in notes["description"]
    assert notes["summary"] == f"signwatch {settings.endpoint}: {record['description']}"

    # Varied predictions now: the Stop burst leaves the 10 s window and the count window; resolved.
    _publish(settings, _events(settings, [i % 43 for i in range(25)], time.time()))
    [resolved] = wait_until(lambda: webhook.alerts("resolved"), 40, 0.1, "the resolved alert at the webhook")
    print(f"resolved alert at the webhook {time.monotonic() - t0:.1f} s after the first events")
    assert resolved["labels"]["violation_id"] == violation_id and resolved["endsAt"] > resolved["startsAt"]
    assert [r["violation_id"] for r in loop.handler.monitor.incidents.recently_resolved()] == [violation_id]
    assert len(webhook.alerts("firing")) == 1, "one alert for the one violation"

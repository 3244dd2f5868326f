"""The alerting rules (deploy/prometheus/alerts.yml) and what they fire on.

The rules file is checked and unit-tested by Debian's ``promtool`` (``alerts.test.yml``: every alert
on synthetic series), Alertmanager's example routing by ``amtool``; the prod overlay's
PrometheusRule holds the same groups (it is made from the file); every metric a rule reads is one
the services export. The monitor's ``signwatch_violation_open`` follows the open incidents in the
state store, and the readiness and stall gauges follow the probes and the loops. A real Prometheus
and Alertmanager deliver an alert to a webhook in tests/integration/test_alerts_stack.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from tests.unit.test_deploy import render

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "alerts.yml"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (deploy/install-test-tools.sh installs it)")
    return path


def _groups() -> list[dict]:
    return yaml.safe_load(RULES.read_text())["groups"]


def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    promtool = _tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], cwd=PROM, capture_output=True,
                            text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {r["alert"] for g in _groups() for r in g["rules"]}
    tests = yaml.safe_load((PROM / "alerts.test.yml").read_text())["tests"]
    tested_alerts = {t["alertname"] for case in tests for t in case["alert_rule_test"]}
    assert tested_alerts == alerts, f"untested: {alerts - tested_alerts}"


def test_amtool_accepts_the_example_routing():
    amtool = _tool("amtool")
    check = subprocess.run([amtool, "check-config", str(PROM / "alertmanager.yml")], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_prometheusrule_is_made_from_the_rules_file():
    import importlib.util

    spec = importlib.util.spec_from_file_location("prometheusrule", PROM / "prometheusrule.py")
    made = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(made)
    assert made.TARGET.read_text() == made.render(), (
        "deploy/k8s/components/alerts/prometheusrule.yaml is stale: run deploy/prometheus/prometheusrule.py")


def test_prod_renders_a_prometheusrule_with_the_same_rules():
    [rule] = [d for d in render("overlays/prod") if d["kind"] == "PrometheusRule"]
    # The CRD's shape (kubernetes-validate has no schema for it): monitoring.coreos.com/v1
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["metadata"]["namespace"] == "signwatch"
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"} and set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == _groups()
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "partial_response_strategy", "limit"} and group["name"]
        for r in group["rules"]:
            assert set(r) <= {"alert", "record", "expr", "for", "labels", "annotations", "keep_firing_for"}, r
            assert isinstance(r["expr"], str) and ("alert" in r) != ("record" in r)
            assert re.fullmatch(r"(\d+[smhdwy])+", r.get("for", "0s")), r
            assert all(isinstance(v, str) for v in {**r.get("labels", {}), **r.get("annotations", {})}.values())
            assert r["labels"]["severity"] in ("page", "ticket")
    assert not [d for d in render("overlays/dev") if d["kind"] == "PrometheusRule"], "dev has no Operator"


def test_every_metric_a_rule_reads_is_exported_by_the_code():
    source = "\n".join(p.read_text() for d in ("shared", "services") for p in (ROOT / d).rglob("*.py"))
    for group in _groups():
        for r in group["rules"]:
            for name in re.findall(r"\b(signwatch_[a-z_]+)", r["expr"]):
                exported = name.removesuffix("_total") if name.endswith("_total") else name
                assert f'"{exported}' in source, f"{r['alert']}: {name} is exported nowhere"


def test_the_open_violation_gauge_follows_the_open_incidents(tmp_path):
    from signwatch.monitoring import Monitor, MonitorConfig
    from signwatch.monitoring.registry import INCIDENTS
    from signwatch.ports.state_memory import MemoryState
    from signwatch.ports.store_file import FileStore
    from signwatch_services.monitor.metrics import MonitorMetrics
    from signwatch.model import ModelSpec
    from tests.unit.helpers import Clock

    clock = Clock()
    monitor = Monitor(MemoryState(clock=clock), FileStore(tmp_path),
                      MonitorConfig(endpoint="ep", learn_baseline_s=0, resolve_after_s=0,
                                    resolve_after_predictions=0, count_n=20, window_s=10, sequential=False,
                                    track_window_s=0),
                      ModelSpec().class_names, clock=clock)
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, "ep", "https://sw.example.com/")
    raised = []
    for i in range(30):  # every prediction Stop: over-prediction
        clock.t += 0.1
        raised += monitor.observe(_event(clock, 14))
    [opened] = [v for v in raised if v.state == "open"]
    metrics.incidents_open(monitor.incidents.open_records(INCIDENTS))
    labels = {"endpoint": "ep", "violation_id": opened.violation_id, "check": "over_prediction", "class_id": "14",
              "description": opened.check.description,
              "explanation_url": f"https://sw.example.com/dashboard/violations/{opened.violation_id}/"}
    assert registry.get_sample_value("signwatch_violation_open", labels) == 1
    assert "Class 14 (Stop)" in opened.check.description
    clock.t += 30  # the burst leaves the time window; varied classes fill the count window
    for i in range(25):
        clock.t += 0.1
        raised += monitor.observe(_event(clock, i % 43))
    assert [v.violation_id for v in raised if v.state == "resolved"] == [opened.violation_id]
    metrics.incidents_open(monitor.incidents.open_records(INCIDENTS))
    assert registry.get_sample_value("signwatch_violation_open", labels) is None, "removed once resolved"
    assert "signwatch_violation_open{" not in _exposition(registry)


def _event(clock, class_id: int):
    from datetime import datetime, timezone

    from tests.unit.helpers import inference_event

    return inference_event(class_id=class_id, probability=0.99, endpoint="ep",
                           time=datetime.fromtimestamp(clock.t, timezone.utc))


def _exposition(registry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def test_readiness_is_a_gauge_set_at_each_probe(tmp_path):
    from signwatch.runtime import open_ports
    from signwatch.config import Settings
    from signwatch_services.health import worker_app

    registry = CollectorRegistry()
    ports = open_ports(Settings(bus_url="memory://", store_url=f"file://{tmp_path}", state_url="memory://"))
    waiting = {"model": "the served model's facts"}
    client = TestClient(worker_app("t", [threading.current_thread()], ports, registry, waiting=lambda: waiting))
    assert client.get("/health/ready").status_code == 503
    assert registry.get_sample_value("signwatch_ready") == 0
    waiting.clear()
    assert client.get("/health/ready").status_code == 200
    assert "signwatch_ready 1.0" in client.get("/metrics").text


def test_a_consumer_loops_time_without_progress_is_a_gauge():
    from signwatch.consuming import ConsumerLoop
    from signwatch.ports.bus_memory import MemoryBus

    registry = CollectorRegistry()
    loop = ConsumerLoop(MemoryBus(), ["t"], "g", handler=None, registry=registry)
    assert registry.get_sample_value("signwatch_consumer_stalled_seconds", {"group": "g"}) < 5
    loop.progress_at -= 200
    assert registry.get_sample_value("signwatch_consumer_stalled_seconds", {"group": "g"}) >= 200

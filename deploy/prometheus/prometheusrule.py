"""Writes deploy/k8s/components/alerts/prometheusrule.yaml from alerts.yml: the Prometheus
Operator's PrometheusRule holds the same groups, so the rules have one source. Run it after
editing alerts.yml (tests/unit/test_alerts.py fails while the two differ):

    .venv/bin/python deploy/prometheus/prometheusrule.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE / "alerts.yml"
TARGET = HERE.parent / "k8s" / "components" / "alerts" / "prometheusrule.yaml"
HEADER = ("# Made from deploy/prometheus/alerts.yml by deploy/prometheus/prometheusrule.py: edit that file, then\n"
          "# run the script. The labels are for the Operator's ruleSelector (docs/operations.md, Alerts).\n")


def prometheus_rule(groups: list[dict]) -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "signwatch", "labels": {"app.kubernetes.io/name": "signwatch",
                                                     "app.kubernetes.io/part-of": "signwatch",
                                                     "role": "alert-rules"}},
        "spec": {"groups": groups},
    }


def render() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return HEADER + yaml.safe_dump(prometheus_rule(groups), sort_keys=False, width=10_000, allow_unicode=True)


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET.relative_to(HERE.parents[1])}", file=sys.stderr)

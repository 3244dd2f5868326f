"""Switching the debugger on and off at run time through the authenticated admin endpoint."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from signwatch.config import Settings
from signwatch.debugger import create_trial
from signwatch_services.inference.server import build_core, create_app
from tests.unit.helpers import png_bytes

TOKEN = "t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def served(tmp_path, unique):
    core = build_core(Settings(bus_url=f"memory://dbg-{unique}", store_url=tmp_path.as_uri(),
                               state_url="memory://", admin_token=TOKEN))
    with TestClient(create_app(core)) as client:
        yield client, core, tmp_path
    core.close()


def invoke(client, seed: int = 0):
    r = client.post("/invocations", content=png_bytes(seed=seed, size=32), headers={"content-type": "image/png"})
    assert r.status_code == 200
    return r


def test_switched_on_and_off_without_restart(served):
    client, core, root = served
    assert core.debugger is core.classifier.debugger and not core.debugger.enabled
    invoke(client)  # off: nothing recorded
    assert not (root / "tensors").exists()

    r = client.put("/admin/debugger", json={"enabled": True}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["config"] == {"enabled": True, "include_regex": ".*bn|.*bias|.*downsample|.*ResNet_input|.*image",
                                  "sample_rate": 1.0, "max_steps": None}
    assert r.headers["cache-control"] == "no-store"
    ids = [invoke(client, seed).headers["X-Signwatch-Event-Id"] for seed in (1, 2)]
    assert core.debugger.drain(30)

    trial = create_trial((root / "tensors" / "signwatch").as_uri())
    assert trial.steps() == [0, 1]
    assert [trial.step_meta(s)["request_id"] for s in trial.steps()] == ids
    names = trial.tensor_names()
    for name in ("image", "gradient/image", "layer1.0.bn1_output", "gradient/layer1.0.bn1_output",
                 "layer1.0.bn1.running_mean"):
        assert name in names
    assert trial.tensor("image").value(0).shape == (1, 3, core.spec.input_size, core.spec.input_size)

    status = client.get("/admin/debugger", headers=AUTH).json()["status"]
    assert status["steps_recorded"] == 2 and status["next_step"] == 2
    metrics = client.get("/metrics").text
    assert 'signwatch_debugger_steps_total{outcome="recorded"} 2.0' in metrics
    assert "signwatch_debugger_enabled 1.0" in metrics

    r = client.put("/admin/debugger", json={"enabled": False}, headers=AUTH)
    assert r.status_code == 200 and r.json()["config"]["enabled"] is False
    invoke(client, 3)
    assert core.debugger.drain(30)
    assert trial.steps() == [0, 1]


def test_predictions_are_the_same_with_the_debugger_on(served):
    client, core, _ = served
    off = invoke(client, 5).json()
    client.put("/admin/debugger", json={"enabled": True, "include_regex": ".*"}, headers=AUTH)
    on = invoke(client, 5).json()
    # A recorded forward runs the eager model, a plain one its frozen graphs (batch norm folded
    # into the convolutions): the same classes, probabilities equal to float rounding.
    assert [p["class_id"] for p in on["predictions"]] == [p["class_id"] for p in off["predictions"]]
    assert [p["probability"] for p in on["predictions"]] == pytest.approx(
        [p["probability"] for p in off["predictions"]], abs=1e-5)
    assert {k: v for k, v in on.items() if k != "predictions"} == {k: v for k, v in off.items() if k != "predictions"}
    core.debugger.drain(30)


def test_include_regex_and_sample_rate_through_the_endpoint(served):
    client, core, root = served
    r = client.put("/admin/debugger", json={"enabled": True, "sample_rate": 0.0}, headers=AUTH)
    assert r.status_code == 200
    invoke(client)
    assert core.debugger.drain(30)
    assert not (root / "tensors").exists()

    client.put("/admin/debugger", json={"enabled": True, "include_regex": "^fc"}, headers=AUTH)
    invoke(client)
    assert core.debugger.drain(30)
    trial = create_trial((root / "tensors" / "signwatch").as_uri())
    assert trial.tensor_names() == ["fc.bias", "fc.weight", "fc_output"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dDp0"},
                                     {"Authorization": "Bearer"}, {"Authorization": f"Token {TOKEN}"}])
def test_missing_or_wrong_token_is_refused(served, headers):
    client, core, _ = served
    for method in ("get", "put"):
        r = client.request(method, "/admin/debugger", json={"enabled": True}, headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["error"]["code"] in ("unauthorized", "invalid_token")
    assert not core.debugger.enabled


def test_unauthenticated_bad_body_gets_401_not_422(served):
    client, _, _ = served
    r = client.put("/admin/debugger", content=b"{not json", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401


def test_no_token_configured_disables_admin(tmp_path, unique):
    core = build_core(Settings(bus_url=f"memory://dbg-{unique}", store_url=tmp_path.as_uri(), state_url="memory://"))
    with TestClient(create_app(core)) as client:
        for method in ("get", "put"):
            r = client.request(method, "/admin/debugger", json={"enabled": True}, headers={"Authorization": "Bearer "})
            assert r.status_code == 403
            assert r.json()["error"]["code"] == "admin_disabled"
    assert not core.debugger.enabled
    core.close()


@pytest.mark.parametrize("body, status", [
    (b'{"enabled": true, "include_regex": "("}', 422),
    (b'{"enabled": true, "sample_rate": 2}', 422),
    (b'{"enabled": true, "unknown": 1}', 422),
    (b'[1, 2]', 422),
    (b'{"enabled": tru', 400),
])
def test_invalid_body_is_refused_as_json(served, body, status):
    client, core, _ = served
    r = client.put("/admin/debugger", content=body, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == status
    assert r.json()["error"]["code"] in ("invalid_config", "invalid_json")
    assert not core.debugger.enabled


def test_each_replica_records_as_its_own_worker(tmp_path, unique):
    core = build_core(Settings(bus_url=f"memory://dbg-{unique}", store_url=tmp_path.as_uri(), state_url="memory://",
                               admin_token=TOKEN, debugger_worker="replica-1"))
    with TestClient(create_app(core)) as client:
        r = client.put("/admin/debugger", json={"enabled": True}, headers=AUTH)
        assert r.json()["status"]["worker"] == "replica-1"
        invoke(client)
        assert core.debugger.drain(30)
    core.close()
    trial = create_trial((tmp_path / "tensors" / "signwatch").as_uri())
    assert trial.workers() == ["replica-1"] and trial.step_meta(0)["worker"] == "replica-1"
    assert trial.tensor("layer1.0.bn1.num_batches_tracked").value(0).shape == ()  # as torch has it
    with pytest.raises(ValueError):
        Settings(debugger_worker="a_b")  # smdebug's file names split at underscores

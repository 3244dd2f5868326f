"""``POST /explain`` computes FullGrad in a worker thread: while explanations run, the event loop
(and so ``/invocations``, when every service runs in one process) keeps answering."""

from __future__ import annotations

import threading
import time

from fastapi.testclient import TestClient

from signwatch.config import Settings
from signwatch.runtime import open_ports
from signwatch_services.explainer.routes import explain_router
from signwatch_services.explainer.server import build_explainer
from signwatch_services.inference.server import build_core, create_app
from tests.unit.helpers import png_bytes


def test_invocations_are_served_while_explanations_compute(tmp_path):
    settings = Settings(bus_url="memory://explain-loop", store_url=tmp_path.as_uri(), state_url="memory://")
    ports = open_ports(settings)
    core = build_core(settings, ports)
    app = create_app(core)
    app.include_router(explain_router(build_explainer(settings, ports), settings))
    body = png_bytes(size=64)
    with TestClient(app) as client:
        t0 = time.monotonic()
        assert client.post("/explain?format=png", content=body, headers={"content-type": "image/png"}).status_code == 200
        one_explanation = time.monotonic() - t0

        done = threading.Event()

        def explain_many() -> None:
            for _ in range(3):
                client.post("/explain?format=png", content=body, headers={"content-type": "image/png"})
            done.set()

        worker = threading.Thread(target=explain_many)
        worker.start()
        latencies = []
        while not done.is_set():
            t = time.monotonic()
            r = client.post("/invocations", content=body, headers={"content-type": "image/png"})
            assert r.status_code == 200
            latencies.append(time.monotonic() - t)
        worker.join()
    core.close()
    assert len(latencies) >= 3, "invocations waited for the explanations"
    assert sorted(latencies)[len(latencies) // 2] < one_explanation, (latencies, one_explanation)

from __future__ import annotations

import threading

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from signwatch.config import Settings
from signwatch.runtime import open_ports
from signwatch_services.capture.server import build_loop
from signwatch_services.health import worker_app


def test_live_follows_the_consumer_thread_and_ready_the_ports(tmp_path, unique):
    settings = Settings(bus_url=f"memory://h-{unique}", store_url=tmp_path.as_uri(), state_url="memory://")
    ports = open_ports(settings)
    registry = CollectorRegistry()
    loop = build_loop(settings, ports, registry=registry)
    thread = loop.start_thread()
    client = TestClient(worker_app("capture", [thread], ports, registry))
    assert client.get("/health/live").status_code == 200
    ready = client.get("/health/ready").json()
    assert ready == {"ready": True, "checks": {"bus": True, "store": True, "state": True}}
    assert "signwatch_consumer_messages_total" in client.get("/metrics").text
    loop.stop()
    thread.join(10)
    assert client.get("/health/live").status_code == 503
    assert client.get("/health/ready").status_code == 503


def test_a_dead_thread_is_not_live():
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    from signwatch.runtime import Ports
    from signwatch.ports.bus_memory import MemoryBus
    from signwatch.ports.state_memory import MemoryState
    from signwatch.ports.store_file import FileStore
    import tempfile

    ports = Ports(MemoryBus("dead"), FileStore(tempfile.mkdtemp()), MemoryState())
    client = TestClient(worker_app("x", [dead], ports, CollectorRegistry()))
    assert client.get("/health/live").json() == {"alive": False}


def test_inference_is_live_only_while_its_micro_batcher_runs(tmp_path, unique):
    from signwatch_services.inference.server import build_core, create_app

    settings = Settings(bus_url=f"memory://live-{unique}", store_url=tmp_path.as_uri(), state_url="memory://")
    core = build_core(settings)
    try:
        with TestClient(create_app(core)) as client:
            assert client.get("/health/live").json() == {"alive": True}
            assert client.get("/health/ready").status_code == 200
            client.portal.call(core.batcher.stop)  # the batcher dies: the pod must be restarted
            assert client.get("/health/live").status_code == 503
            assert client.get("/health/ready").json()["ready"] is False
    finally:
        core.close()

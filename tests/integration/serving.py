"""A real inference server for tests: uvicorn on a free loopback port, in a thread of the test."""

from __future__ import annotations

import contextlib
import socket
import threading

import httpx

from tests.conftest import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(settings, ports=None):
    """Yields (base_url, core); the server and the core are stopped on exit."""
    import uvicorn

    from signwatch_services.inference.server import build_core, create_app

    core = build_core(settings, ports)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(core), host="127.0.0.1", port=port, log_level="warning",
                                           http="httptools", loop="uvloop", access_log=False))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/health/live", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 60, what="the inference server")
        yield url, core
    finally:
        server.should_exit = True
        thread.join(30)
        core.close()

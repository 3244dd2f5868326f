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


def endpoint_env(endpoint: str, port: int, **settings: object) -> dict[str, str]:
    """The environment of a `signwatch serve ...` process on the shared stack with an endpoint and
    topics of its own (``{endpoint}.inference`` ...), plus ``settings`` as SIGNWATCH_ variables."""
    import os

    from signwatch.stack import stack_env
    from tests.conftest import PROJECT

    return os.environ | stack_env(PROJECT) | {
        "SIGNWATCH_PORT": str(port), "SIGNWATCH_ENDPOINT": endpoint,
        "SIGNWATCH_INFERENCE_TOPIC": f"{endpoint}.inference", "SIGNWATCH_VIOLATIONS_TOPIC": f"{endpoint}.violations",
        "SIGNWATCH_EXPLANATIONS_TOPIC": f"{endpoint}.explanations",
    } | {f"SIGNWATCH_{k.upper()}": str(v) for k, v in settings.items()}


@contextlib.contextmanager
def live_server(settings, ports=None):
    """Yields (base_url, core); the server and the core are stopped on exit."""
    import uvicorn

    from signwatch_services.inference.server import build_core, create_app
    from signwatch_services.http_server import server_config

    core = build_core(settings, ports)
    port = free_port()
    server = uvicorn.Server(server_config(create_app(core), settings, port, host="127.0.0.1", log_level="warning"))
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

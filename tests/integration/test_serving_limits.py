"""Input limits that hold memory and time, on a running server (uvicorn on loopback):
decompression bombs, images just under the pixel limit, a body that never finishes, a client
that disconnects mid-body, and schemathesis fuzzing against the server's own OpenAPI spec."""

from __future__ import annotations

import io
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from signwatch.config import Settings
from tests.conftest import running_service, wait_until
from tests.integration.serving import live_server

MEMORY_LIMIT_BYTES = 2 * 1024**3  # the inference pod's limit (deploy/k8s)


def _bomb(side: int) -> bytes:
    """A 1-bit PNG: a few KB on the wire, side x side x 3 bytes once decoded to RGB."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * 4096


class PeakRSS:
    """Peak resident memory of the server process (its own process, as in a pod: the test
    runner's memory, grown by every test before, says nothing about the server's)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = self.peak = _rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak - self.start


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    settings = Settings(bus_url="memory://limits", store_url=root.as_uri(), state_url="memory://",
                        body_timeout_s=2.0)
    with live_server(settings) as (url, core):
        yield url, core


@pytest.fixture(scope="module")
def server_process(tmp_path_factory):
    """``signwatch serve inference`` in a process of its own, embedded ports, default limits."""
    root = tmp_path_factory.mktemp("limits-process")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # MALLOC_ARENA_MAX as the image sets it (deploy/Dockerfile): the memory bounds below are the pod's
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "SIGNWATCH_BUS_URL": "memory://limits", "SIGNWATCH_STATE_URL": "memory://",
           "SIGNWATCH_STORE_URL": (root / "store").as_uri()}
    url = f"http://127.0.0.1:{port}"
    with running_service(["serve", "inference", "--port", str(port)], env, root / "serve.log", url,
                         cwd=root) as proc:
        yield url, proc.pid


def _post_all(url: str, body: bytes, n: int = 32) -> list[int]:
    with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: client.post("/invocations", content=body,
                                                   headers={"content-type": "image/png"}).status_code, range(n)))


def test_32_concurrent_decompression_bombs_are_refused_before_decoding(server_process):
    url, pid = server_process
    bomb = _bomb(4096)
    assert len(bomb) < 8 * 1024  # 4096 x 4096 x 3 = 48 MiB decoded
    peak = PeakRSS(pid)
    statuses = _post_all(url, bomb)
    grew = peak.stop()
    assert statuses == [413] * 32
    assert grew < 64 * 1024**2, f"memory grew {grew / 2**20:.0f} MiB"


def test_32_concurrent_images_at_the_pixel_limit_are_served_within_the_memory_limit(server_process):
    url, pid = server_process
    side = int(Settings().max_image_pixels ** 0.5)  # the default, 1024 x 1024: decoded 3 MiB (RGB)
    peak = PeakRSS(pid)
    statuses = _post_all(url, _bomb(side))
    grew = peak.stop()
    assert statuses == [200] * 32
    assert peak.peak < MEMORY_LIMIT_BYTES and grew < 256 * 1024**2, f"memory grew {grew / 2**20:.0f} MiB"


def _raw_request(url: str, declared: int, send: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                 f"Content-Length: {declared}\r\n\r\n".encode() + send)
    return sock


def test_a_body_shorter_than_its_content_length_times_out_with_408(server):
    url, _ = server
    t0 = time.monotonic()
    sock = _raw_request(url, 5000, b"\x89PNG\r\n\x1a\n" + b"0" * 100)
    try:
        answer = sock.recv(65536).decode(errors="replace")
    finally:
        sock.close()
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert '"body_timeout"' in answer
    assert time.monotonic() - t0 < 10


def test_a_client_that_disconnects_mid_body_is_logged_in_one_line(server, caplog):
    url, _ = server
    with caplog.at_level(logging.WARNING, logger="signwatch_services.inference.routes"):
        _raw_request(url, 5000, b"\x89PNG\r\n\x1a\n" + b"0" * 100).close()
        wait_until(lambda: any("disconnected after" in r.getMessage() for r in caplog.records), 10,
                   what="the disconnect to be logged")
    [line] = [r.getMessage() for r in caplog.records if "disconnected after" in r.getMessage()]
    assert "108 of 5000 body bytes" in line and "\n" not in line


def test_the_openapi_spec_declares_bodies_and_errors(server):
    url, _ = server
    spec = httpx.get(f"{url}/openapi.json").json()
    for path in ("/invocations", "/endpoints/{EndpointName}/invocations"):
        op = spec["paths"][path]["post"]
        assert set(op["requestBody"]["content"]) >= {"image/png", "image/jpeg", "application/x-npy"}
        assert {"200", "400", "429", "503"} <= set(op["responses"])
    assert {"413", "415", "408"} <= set(spec["paths"]["/invocations"]["post"]["responses"])
    assert "424" in spec["paths"]["/endpoints/{EndpointName}/invocations"]["post"]["responses"]
    for path in ("/v2/models/{model_name}/infer", "/v2/models/{model_name}/versions/{model_version}/infer"):
        op = spec["paths"][path]["post"]
        assert set(op["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
        assert {"200", "400", "404", "413", "429", "503"} <= set(op["responses"])
    assert {"/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{model_name}",
            "/v2/models/{model_name}/ready"} <= set(spec["paths"])


def test_schemathesis_finds_no_5xx_and_no_hang(server):
    url, _ = server
    cli = Path(sys.executable).parent / "schemathesis"
    t0 = time.monotonic()
    # One worker: with several operations taking path parameters (the V2 routes), two workers
    # make hypothesis describe its filter lambdas concurrently, and CPython 3.11's ast.parse
    # is not thread-safe ("AST constructor recursion depth mismatch"): schemathesis crashed
    # before sending a request. One worker runs the same cases, in about 30 s.
    result = subprocess.run(
        [str(cli), "run", f"{url}/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", "100", "--request-timeout", "10", "--seed", "9", "--workers", "1",
         "--exclude-path-regex", "^/admin", "--phases", "examples,coverage,fuzzing",
         "--suppress-health-check", "all", "--generation-database", "none"],
        capture_output=True, text=True, timeout=180)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert time.monotonic() - t0 < 120

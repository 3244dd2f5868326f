"""Fair admission on the real stack: one ``signwatch serve all`` (its own process, the shared Kafka,
Redis and S3, its own endpoint and topics) that slow clients and explanations must not starve.

- 40 slow uploads (6 MB declared, trickled) and 200 slow header senders: the normal clients'
  p99 stays within 2x of theirs without the attack, measured side by side; none is refused; the
  slow uploads are cut off with 408 and the header senders closed at the header deadline
- 10 concurrent ``/explain`` calls: those beyond the limit are answered 429 (JSON) and
  ``/invocations`` keeps its p50
- ``/dashboard/panel`` answers 404 (JSON) for every key it refuses
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import PROJECT, running_service, wait_until
from tests.integration.serving import endpoint_env, free_port
from tests.unit.helpers import png_bytes

pytestmark = pytest.mark.stack

HEADER_TIMEOUT_S, BODY_TIMEOUT_S, SLOW_AFTER_S, MAX_SLOW = 2.0, 3.0, 0.5, 8
EXPLAIN_MAX_PENDING = 2
BODY = png_bytes(seed=3, size=32)


@pytest.fixture(scope="module")
def served(stack, tmp_path_factory):
    run = uuid.uuid4().hex[:8]
    port = free_port()
    env = endpoint_env(f"fair-{run}", port, header_timeout_s=HEADER_TIMEOUT_S, body_timeout_s=BODY_TIMEOUT_S,
                       slow_body_after_s=SLOW_AFTER_S, max_slow_uploads=MAX_SLOW,
                       explain_max_pending=EXPLAIN_MAX_PENDING)
    base = f"http://127.0.0.1:{port}"
    with running_service(["serve", "all"], env, tmp_path_factory.mktemp("fair") / "serve-all.log", base):
        yield base


class Clients:
    """``n`` closed-loop clients posting a small PNG to /invocations, each on its connection."""

    def __init__(self, base: str, n: int) -> None:
        self.base, self.results, self.stopping = base, [], threading.Event()
        self.pool = ThreadPoolExecutor(n)
        self.futures = [self.pool.submit(self._run) for _ in range(n)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self.stopping.is_set():
                t0 = time.monotonic()
                r = client.post("/invocations", content=BODY, headers={"content-type": "image/png"})
                self.results.append((t0, time.monotonic() - t0, r.status_code))

    def between(self, start: float, end: float) -> list[tuple[float, int]]:
        return [(d, s) for t, d, s in self.results if start <= t < end]

    def stop(self) -> None:
        self.stopping.set()
        for f in self.futures:
            f.result(60)
        self.pool.shutdown()


def _p(latencies: list[float], q: float) -> float:
    assert len(latencies) > 50, f"only {len(latencies)} requests"
    return sorted(latencies)[int(q * (len(latencies) - 1))]


def _metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def test_slow_uploads_and_slow_headers_leave_normal_clients_p99_within_2x(served):
    clients = Clients(served, 4)
    try:
        time.sleep(3.0)  # connections made, the model's graphs warm (the first batches are slower)
        b0 = time.monotonic()
        time.sleep(5.0)
        b1 = time.monotonic()
        attack = subprocess.run([sys.executable, "-m", "tests.integration.slow_clients", served, "7", "40", "200"],
                                cwd=PROJECT, capture_output=True, text=True, timeout=60)
        a1 = time.monotonic()
    finally:
        clients.stop()
    assert attack.returncode == 0, attack.stderr[-3000:]
    seen = json.loads(attack.stdout)
    a0 = b1 + 1.0  # the attack's connections are open by then
    base, under = clients.between(b0, b1), clients.between(a0, a1)
    normal, attacked = _p([d for d, _ in base], 0.99), _p([d for d, _ in under], 0.99)
    print(f"normal clients: p99 {normal * 1000:.1f} ms (p50 {_p([d for d, _ in base], 0.5) * 1000:.1f}) without "
          f"the attack ({len(base)} requests), {attacked * 1000:.1f} ms (p50 {_p([d for d, _ in under], 0.5) * 1000:.1f}) under 40 slow uploads + 200 slow header senders ({len(under)} requests); "
          f"{len(seen['upload_answers'])} uploads cut off, {len(seen['header_connections'])} header connections closed")
    assert {s for _, s in base + under} == {200}, "a normal client was refused"
    assert attacked <= 2 * normal + 0.005, f"p99 {attacked * 1000:.1f} ms under attack, {normal * 1000:.1f} ms before"
    # The slow uploads were cut off with 408: the first MAX_SLOW at the body deadline, the others
    # at once when they turned slow.
    assert seen["upload_answers"] and {a.split(" ")[1] for a in seen["upload_answers"]} == {"408"}
    assert len(seen["upload_answers"]) >= 40
    # Every header sender was closed at the header deadline (told 408: part of a request came).
    held = seen["header_connections"]
    assert len(held) >= 200 and all(line.startswith("HTTP/1.1 408") for _, line in held)
    assert max(s for s, _ in held) < HEADER_TIMEOUT_S + 1.5, max(s for s, _ in held)
    # Nothing is held once they are gone.
    wait_until(lambda: _metric(served, "signwatch_inference_inflight_bytes") == 0
               and _metric(served, "signwatch_inference_slow_uploads") == 0, 10, what="the budget released")


def test_explain_is_bounded_and_invocations_keep_their_p50_in_serve_all(served):
    clients = Clients(served, 2)
    statuses, stopping = [], threading.Event()

    def explain() -> None:
        with httpx.Client(base_url=served, timeout=60) as client:
            while not stopping.is_set():
                r = client.post("/explain?format=png", content=BODY, headers={"content-type": "image/png"})
                statuses.append((r.status_code, r.json() if r.status_code != 200 else None))
                if r.status_code == 429:
                    time.sleep(0.05)
    try:
        time.sleep(1.0)
        b0 = time.monotonic()
        time.sleep(4.0)
        b1 = time.monotonic()
        with ThreadPoolExecutor(10) as pool:
            explainers = [pool.submit(explain) for _ in range(10)]
            time.sleep(6.0)
            a1 = time.monotonic()
            stopping.set()
            for f in explainers:
                f.result(120)
    finally:
        clients.stop()
    base = [d for d, s in clients.between(b0, b1)]
    under = [d for d, s in clients.between(b1 + 0.5, a1)]
    normal, loaded = statistics.median(base), statistics.median(under)
    codes = [s for s, _ in statuses]
    print(f"/invocations p50 {normal * 1000:.1f} ms alone, {loaded * 1000:.1f} ms beside 10 /explain callers "
          f"({codes.count(200)} explained, {codes.count(429)} refused 429)")
    assert set(codes) == {200, 429}, set(codes)
    assert all(body["error"]["code"] == "busy" for s, body in statuses if s == 429)
    assert {s for _, _, s in clients.results} == {200}
    assert loaded <= 2 * normal, f"p50 {loaded * 1000:.1f} ms beside /explain, {normal * 1000:.1f} ms alone"


@pytest.mark.parametrize("key", ["explanations//x.png", "explanations/../secret.png", "/explanations/x.png",
                                 "datacapture/x.png", "explanations/./x.png", "explanations/none/missing.png"])
def test_the_panel_route_answers_404_for_every_key_it_refuses(served, key):
    r = httpx.get(f"{served}/dashboard/panel", params={"key": key}, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (r.status_code, r.text[:200])

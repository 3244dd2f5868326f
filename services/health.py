"""Health and metrics over HTTP, defined once for every service.

``/health/live``: the process can do its work (every consumer thread runs); a failing live probe
gets the pod restarted. ``/health/ready``: the service's ``checks`` pass; a failing ready probe
only takes the pod out of the Service. The split follows BentoML's. Each service's rule is in
docs/operations.md ("Probes"). ``dependencies``: servers the service uses but can answer without
(inference: the broker and the store, whose outages only make events wait in the buffer): asked
at each probe and shown in its body, in ``signwatch_dependency_up`` and in a log line when one
goes down or comes back, never by answering 503: every replica shares the same broker, and a
readiness that failed with it would take every replica out of the Service at once.
``/metrics``: the service's Prometheus registry. The probe paths are the ones in
``deploy/k8s`` (tests/unit/test_deploy.py checks that the manifests name these).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from typing import Callable

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from starlette.concurrency import run_in_threadpool

from signwatch.runtime import Ports

LIVE_PATH = "/health/live"
READY_PATH = "/health/ready"
METRICS_PATH = "/metrics"
# How long a probe waits for the dependencies' pings (asked side by side): well inside the
# manifests' 3 s probe timeout, so that a hung server never fails the probe by its slowness.
DEPENDENCY_DEADLINE_S = 1.5
log = logging.getLogger(__name__)
_READY: "weakref.WeakKeyDictionary[CollectorRegistry, Gauge]" = weakref.WeakKeyDictionary()


class DependencyWatch:
    """Servers a service uses but answers without: pinged at each probe, side by side, each
    within ``DEPENDENCY_DEADLINE_S`` (no answer: down); the result goes to the gauge, and a
    change of state to the log."""

    def __init__(self, pings: dict[str, Callable[[], bool]], registry: CollectorRegistry) -> None:
        self.pings = pings
        self.up = Gauge("signwatch_dependency_up", "1 while a server the service uses (not needs) answers; "
                        "asked at each readiness probe", ["dependency"], registry=registry)
        self.last: dict[str, bool] = {}

    async def check(self) -> dict[str, bool]:
        tasks = {name: asyncio.ensure_future(run_in_threadpool(ping)) for name, ping in self.pings.items()}
        await asyncio.wait(tasks.values(), timeout=DEPENDENCY_DEADLINE_S)
        results = {}
        for name, task in tasks.items():
            results[name] = bool(task.done() and not task.cancelled() and task.exception() is None and task.result())
            if not task.done():  # the ping's thread finishes by its own timeout; nobody waits for it
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self.up.labels(name).set(1 if results[name] else 0)
            if results[name] != self.last.get(name, True):
                if results[name]:
                    log.info("%s answers again", name)
                else:
                    log.warning("%s does not answer (readiness does not depend on it: see docs/operations.md)", name)
        self.last = results
        return results


def _ready_gauge(registry: CollectorRegistry) -> Gauge:
    """``signwatch_ready``: the last readiness answer (1: 200, 0: 503), set at each probe: what the
    kubelet saw; the NotReady alert fires on it (deploy/prometheus/alerts.yml)."""
    if registry not in _READY:
        _READY[registry] = Gauge("signwatch_ready", "1 when the last /health/ready answered 200, 0 when 503 "
                                 "(set at each readiness probe)", registry=registry)
    return _READY[registry]


def health_router(live: Callable[[], bool], checks: Callable[[], dict[str, bool]],
                  registry: CollectorRegistry, waiting: Callable[[], dict[str, str]] | None = None,
                  dependencies: dict[str, Callable[[], bool]] | None = None) -> APIRouter:
    """The three routes; ``live``, ``checks``, ``waiting`` and ``dependencies`` are asked at each
    probe. ``waiting``: what the service waits for before it can work, in words (not ready
    meanwhile). ``dependencies``: pings of servers it can answer without (shown, never 503)."""
    router = APIRouter()
    watch = DependencyWatch(dependencies, registry) if dependencies else None
    ready = _ready_gauge(registry)

    @router.get(LIVE_PATH)
    async def _live() -> JSONResponse:
        alive = bool(live())
        return JSONResponse(status_code=200 if alive else 503, content={"alive": alive})

    @router.get(READY_PATH)
    async def _ready() -> JSONResponse:
        results = await run_in_threadpool(checks)  # the checks ask servers now: off the event loop
        waits = waiting() if waiting is not None else {}
        ok = all(results.values()) and bool(live()) and not waits
        content = {"ready": ok, "checks": results} | ({"waiting_for": waits} if waits else {})
        if watch is not None:
            content["dependencies"] = await watch.check()
        ready.set(1 if ok else 0)
        return JSONResponse(status_code=200 if ok else 503, content=content)

    @router.get(METRICS_PATH)
    async def _metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router


def threads_alive(threads: list[threading.Thread]) -> Callable[[], bool]:
    return lambda: all(t.is_alive() for t in threads)


def port_checks(ports: Ports) -> Callable[[], dict[str, bool]]:
    return lambda: {"bus": ports.bus.ping(), "store": ports.store.ping(), "state": ports.state.ping()}


def loops_waiting(loops: list) -> Callable[[], dict[str, str]]:
    """What the consumer loops wait for before they consume (a loop with ``waiting_for``)."""
    return lambda: {loop.group: w for loop in loops if (w := getattr(loop, "waiting_for", None))}


def worker_app(title: str, threads: list[threading.Thread], ports: Ports,
               registry: CollectorRegistry, routers: list[APIRouter] = (),
               waiting: Callable[[], dict[str, str]] | None = None) -> FastAPI:
    """The HTTP side of a worker service (capture, monitor, explainer)."""
    app = FastAPI(title=title)
    app.include_router(health_router(threads_alive(threads), port_checks(ports), registry, waiting))
    for router in routers:
        app.include_router(router)
    return app

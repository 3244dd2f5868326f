"""Health and metrics over HTTP, defined once for every service.

``/health/live``: the process can do its work (every consumer thread runs); a failing live probe
gets the pod restarted. ``/health/ready``: the servers it needs answer; a failing ready probe
only takes the pod out of the Service while a server comes back. The split follows BentoML's.
``/metrics``: the service's Prometheus registry. The probe paths are the ones in
``deploy/k8s`` (tests/unit/test_deploy.py checks that the manifests name these).
"""

from __future__ import annotations

import threading
from typing import Callable

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool

from signwatch.runtime import Ports

LIVE_PATH = "/health/live"
READY_PATH = "/health/ready"
METRICS_PATH = "/metrics"


def health_router(live: Callable[[], bool], checks: Callable[[], dict[str, bool]],
                  registry: CollectorRegistry) -> APIRouter:
    """The three routes; ``live`` and ``checks`` are asked at each probe."""
    router = APIRouter()

    @router.get(LIVE_PATH)
    async def _live() -> JSONResponse:
        alive = bool(live())
        return JSONResponse(status_code=200 if alive else 503, content={"alive": alive})

    @router.get(READY_PATH)
    async def _ready() -> JSONResponse:
        results = await run_in_threadpool(checks)  # the checks ask servers now: off the event loop
        ok = all(results.values()) and bool(live())
        return JSONResponse(status_code=200 if ok else 503, content={"ready": ok, "checks": results})

    @router.get(METRICS_PATH)
    async def _metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router


def threads_alive(threads: list[threading.Thread]) -> Callable[[], bool]:
    return lambda: all(t.is_alive() for t in threads)


def port_checks(ports: Ports) -> Callable[[], dict[str, bool]]:
    return lambda: {"bus": ports.bus.ping(), "store": ports.store.ping(), "state": ports.state.ping()}


def worker_app(title: str, threads: list[threading.Thread], ports: Ports,
               registry: CollectorRegistry, routers: list[APIRouter] = ()) -> FastAPI:
    """The HTTP side of a worker service (capture, monitor, explainer)."""
    app = FastAPI(title=title)
    app.include_router(health_router(threads_alive(threads), port_checks(ports), registry))
    for router in routers:
        app.include_router(router)
    return app

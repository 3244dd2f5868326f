"""Health and metrics over HTTP for the worker services (capture, monitor, explainer).

Live: every consumer thread is running. Ready: the ports answer (bus, store, state). The split
follows BentoML's: a live-but-not-ready worker is left alone while a server comes back; a dead
one is restarted.
"""

from __future__ import annotations

import threading

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from signwatch.runtime import Ports


def worker_app(title: str, threads: list[threading.Thread], ports: Ports,
               registry: CollectorRegistry, routers: list[APIRouter] = ()) -> FastAPI:
    app = FastAPI(title=title)

    @app.get("/health/live")
    async def live() -> JSONResponse:
        alive = all(t.is_alive() for t in threads)
        return JSONResponse(status_code=200 if alive else 503, content={"alive": alive})

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        checks = {"bus": ports.bus.ping(), "store": ports.store.ping(), "state": ports.state.ping()}
        ok = all(checks.values()) and all(t.is_alive() for t in threads)
        return JSONResponse(status_code=200 if ok else 503, content={"ready": ok, "checks": checks})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    return app

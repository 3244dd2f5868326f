"""``signwatch serve``: composes one service, or all four in one process, and runs it.

The inference service (or ``all``) serves its API with uvicorn; a worker service runs its
consumer loop in a thread and serves health, metrics (and, for the explainer, ``POST /explain``)
on its own port. uvicorn owns the signals: on SIGTERM the HTTP server stops first, then the
consumer loops flush and commit.
"""

from __future__ import annotations

import uvicorn
from prometheus_client import CollectorRegistry

from signwatch.config import Settings
from signwatch.runtime import open_ports

SERVICES = ("inference", "capture", "monitor", "explainer", "all")


def serve(service: str, settings: Settings) -> None:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; choose from {SERVICES}")
    ports = open_ports(settings)
    registry = CollectorRegistry()
    core = None
    if service in ("inference", "all"):
        from signwatch_services.inference.server import build_core

        core = build_core(settings, ports)
        registry = core.registry
    loops, routers = [], []
    if service in ("capture", "all"):
        from signwatch_services.capture.server import build_loop

        loops.append(build_loop(settings, ports, registry=registry))
    if service in ("monitor", "all"):
        from signwatch_services.monitor.server import build_loop

        loops.append(build_loop(settings, core.spec if core else None, ports, registry=registry))
    if service in ("explainer", "all"):
        from signwatch_services.explainer.routes import explain_router
        from signwatch_services.explainer.server import build_explainer, build_loop

        explainer = build_explainer(settings, ports)
        loops.append(build_loop(settings, ports, explainer, registry=registry))
        routers.append(explain_router(explainer, settings.max_body_bytes, settings.max_image_side))

    threads = [loop.start_thread() for loop in loops]
    try:
        if core is not None:
            from signwatch_services.inference.server import create_app

            app = create_app(core)
            for router in routers:
                app.include_router(router)
            port = settings.port
        else:
            from signwatch_services.health import worker_app

            app = worker_app(f"signwatch {service}", threads, ports, registry, routers)
            port = {"capture": settings.capture_port, "monitor": settings.monitor_port,
                    "explainer": settings.explainer_port}[service]
        uvicorn.run(app, host=settings.host, port=port, log_level="info")
    finally:
        for loop in loops:
            loop.stop()
        for t in threads:
            t.join(60)
        if core is not None:
            core.close()
        else:
            ports.close()

"""``signwatch serve``: composes one service, or all four in one process, and runs it.

The inference service (or ``all``) serves its API with uvicorn; a worker service runs its
consumer loop in a thread and serves health, metrics (and, for the explainer, ``POST /explain``)
on its own port.

On SIGTERM (Kubernetes' stop) the shutdown runs in this order, so that nothing is lost or
processed twice: the consumer loops stop taking messages, make what they processed durable and
commit it (the rest stays uncommitted for the next consumer); then uvicorn stops accepting
connections and finishes the requests in flight; then the producer flushes every event those
requests submitted (inference's lifespan); then the ports close. The pod's
``terminationGracePeriodSeconds`` (deploy/k8s) covers ``SHUTDOWN_GRACE_S`` plus the flush.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading

import uvicorn
from prometheus_client import CollectorRegistry

from signwatch.config import Settings
from signwatch.runtime import open_ports
from signwatch_services.http_server import server_config

SERVICES = ("inference", "capture", "monitor", "explainer", "all")
_PORTS = ("bus_url", "store_url", "state_url", "s3_access_key", "s3_secret_key", "host")
# What each service must be given in a cluster (left unset, it would run embedded, in memory):
# deploy/k8s provides each of them (tests/unit/test_deploy.py checks every manifest).
REQUIRED_SETTINGS = {
    "inference": _PORTS + ("port", "admin_token"),
    "capture": _PORTS + ("capture_port",),
    "monitor": _PORTS + ("monitor_port", "admin_token"),  # admin_token: POST /ground-truth
    "explainer": _PORTS + ("explainer_port",),
}
SHUTDOWN_GRACE_S = 60  # the longest a consumer loop may take to finish its message and commit
log = logging.getLogger(__name__)


class _ConsumersFirstServer(uvicorn.Server):
    """uvicorn, but a stop signal first stops the consumer loops, then the HTTP server."""

    def __init__(self, config: uvicorn.Config, loops: list, threads: list[threading.Thread]) -> None:
        super().__init__(config)
        self.loops, self.threads = loops, threads
        self._stopping = False

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            yield
            # uvicorn re-raises the stop signal once served, which would kill the process before
            # the ``finally`` below closes the ports; a graceful stop exits 0 instead.
            self._captured_signals.clear()

    def handle_exit(self, sig, frame) -> None:
        if self._stopping:  # a second signal: uvicorn's forced exit
            return super().handle_exit(sig, frame)
        self._stopping = True
        # Joined in a thread: the event loop keeps answering the requests in flight meanwhile.
        threading.Thread(target=self._stop_consumers_then_http, args=(sig, frame),
                         name="graceful-shutdown", daemon=True).start()

    def _stop_consumers_then_http(self, sig, frame) -> None:
        for loop in self.loops:
            loop.stop()
        for t in self.threads:
            t.join(SHUTDOWN_GRACE_S)
            if t.is_alive():
                log.error("%s did not stop within %ss", t.name, SHUTDOWN_GRACE_S)
        log.info("consumers stopped and committed; stopping HTTP")
        super().handle_exit(sig, frame)


def serve(service: str, settings: Settings) -> None:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; choose from {SERVICES}")
    if settings.torch_threads and service in ("inference", "all"):  # process-wide: set where it starts
        import torch

        torch.set_num_threads(settings.torch_threads)
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
        from signwatch_services.monitor.ground_truth_routes import ground_truth_router
        from signwatch_services.monitor.server import build_label_loop, build_loop, build_screening_loop

        monitor_loop = build_loop(settings, core.spec if core else None, ports, registry=registry)
        loops.append(monitor_loop)
        loops.append(build_screening_loop(settings, monitor_loop, ports, registry))
        if label_loop := build_label_loop(settings, monitor_loop, ports, registry):  # None: labels not joined
            loops.append(label_loop)
            routers.append(ground_truth_router(settings, ports.bus, monitor_loop.class_names))
    if service in ("explainer", "all"):
        from signwatch_services.explainer.dashboard import dashboard_router, explainer_dashboard
        from signwatch_services.explainer.routes import explain_router
        from signwatch_services.explainer.server import build_explainer, build_loop, build_screening_loop

        explainer = build_explainer(settings, ports)
        loops.append(build_loop(settings, ports, explainer, registry=registry))
        if screening_loop := build_screening_loop(settings, ports, explainer, registry):  # None: screening off
            loops.append(screening_loop)
        routers.append(explain_router(explainer, settings))
        routers.append(dashboard_router(explainer_dashboard(settings, ports, explainer.spec)))

    threads = [loop.start_thread() for loop in loops]
    try:
        if core is not None:
            from signwatch_services.inference.server import create_app

            app = create_app(core)
            for router in routers:
                app.include_router(router)
            port = settings.port
        else:
            from signwatch_services.health import loops_waiting, worker_app

            app = worker_app(f"signwatch {service}", threads, ports, registry, routers, loops_waiting(loops))
            port = {"capture": settings.capture_port, "monitor": settings.monitor_port,
                    "explainer": settings.explainer_port}[service]
        config = server_config(app, settings, port)  # with a deadline on request headers (http_server.py)
        # Everything built so far (the model, its graphs, the app) lives as long as the process:
        # kept out of the collector's sight, a full collection in the loaded server took 2 ms, not
        # 155 ms with every thread stopped (the 2-core CPU, 32 clients).
        gc.collect()
        gc.freeze()
        _ConsumersFirstServer(config, loops, threads).run()
    finally:
        for loop in loops:
            loop.stop()
        for t in threads:
            t.join(60)
        if core is not None:
            core.close()
        else:
            ports.close()

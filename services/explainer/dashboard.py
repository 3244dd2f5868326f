"""``GET /dashboard``: the live page; ``GET /dashboard/data``: the JSON it polls;
``GET /dashboard/panel?key=...``: a saliency panel from the object store (explanations only);
``GET /dashboard/flagged``: the newest flagged requests (``?limit=``, up to the list's cap);
``GET /dashboard/flagged/image?key=...``: one image of a flagged request's triptych (that prefix only);
``GET /dashboard/violations/{violation_id}/``: one violation's explanation, the ``index.html`` the
explainer wrote beside its panels (which it names relatively: ``.../{violation_id}/{event}.png``).
Alerts link it (``signwatch_violation_open``'s ``explanation_url``; docs/operations.md, Alerts)."""

from __future__ import annotations

import html
import re
from importlib import resources

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response

from signwatch.dashboard import DashboardReader
from signwatch.events import NAME_PATTERN
from signwatch.ports.store import ObjectNotFound
from signwatch_services.http import error

PAGE = resources.files("signwatch_services.explainer").joinpath("static/dashboard.html")
VIOLATION_ID = re.compile(NAME_PATTERN)
PANEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.png$")


def dashboard_router(reader: DashboardReader) -> APIRouter:
    router = APIRouter()
    page = PAGE.read_text(encoding="utf-8")

    @router.get("/dashboard", response_class=HTMLResponse)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @router.get("/dashboard/data")
    async def data() -> JSONResponse:
        return JSONResponse(await run_in_threadpool(reader.read), headers={"Cache-Control": "no-store"})

    @router.get("/dashboard/panel")  # 404 for every key it does not serve, whatever the reason
    async def panel(key: str = Query(...)) -> Response:
        if not reader.owns(key):
            return error(404, "not_found", "only explanation panels can be shown")
        try:
            body = await run_in_threadpool(reader.store.get, key)
        except (ObjectNotFound, KeyError, ValueError):  # ValueError: a key the store refuses
            return error(404, "not_found", "no such panel")
        return Response(body, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @router.get("/dashboard/flagged")
    async def flagged(limit: int = Query(50, ge=1, le=5000)) -> JSONResponse:
        entries, listed = await run_in_threadpool(reader.flagged, limit)
        return JSONResponse({"endpoint": reader.endpoint, "flagged": entries, "listed": listed},
                            headers={"Cache-Control": "no-store"})

    @router.get("/dashboard/flagged/image")  # 404 for every key it does not serve, whatever the reason
    async def flagged_image(key: str = Query(...)) -> Response:
        if not reader.owns_flagged(key):
            return error(404, "not_found", "only the images of flagged requests can be shown")
        try:
            body = await run_in_threadpool(reader.store.get, key)
        except (ObjectNotFound, KeyError, ValueError):  # pushed off the list, or never drawn
            return error(404, "not_found", "no such image")
        return Response(body, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @router.get("/dashboard/violations/{violation_id}/", response_class=HTMLResponse)
    async def explanation(violation_id: str) -> Response:
        if not VIOLATION_ID.match(violation_id):
            return error(404, "not_found", "no such violation")
        try:
            body = await run_in_threadpool(reader.store.get, f"{reader.prefix}/{violation_id}/index.html")
        except (ObjectNotFound, KeyError, ValueError):  # not explained (yet): an alert may come first
            return HTMLResponse(
                f"<!doctype html><title>signwatch violation {html.escape(violation_id)}</title>"
                f"<p>Violation {html.escape(violation_id)} has no explanation yet: the explainer writes it "
                "seconds after the violation (reload), or explains no violation of this kind. The "
                "<a href='../../'>dashboard</a> shows the live figures.</p>", status_code=404)
        return HTMLResponse(body, headers={"Cache-Control": "no-cache"})

    @router.get("/dashboard/violations/{violation_id}/{name}")
    async def explanation_panel(violation_id: str, name: str) -> Response:
        key = f"{reader.prefix}/{violation_id}/{name}"
        if not (VIOLATION_ID.match(violation_id) and PANEL_NAME.match(name) and reader.owns(key)):
            return error(404, "not_found", "only explanation panels can be shown")
        try:
            body = await run_in_threadpool(reader.store.get, key)
        except (ObjectNotFound, KeyError, ValueError):
            return error(404, "not_found", "no such panel")
        return Response(body, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    return router


def explainer_dashboard(settings, ports, spec) -> DashboardReader:
    """The reader the explainer's composition root hands to the page: labels and version from the
    manifest the inference service published (re-read every 30 s), else from the explainer's
    own model (``spec``, the same SIGNWATCH_MODEL_PATH)."""
    from signwatch.model.published import ModelFacts, published_key, read_published

    facts = ModelFacts(lambda: read_published(ports.store, settings.endpoint), published_key(settings.endpoint),
                       reload_s=30.0)
    return DashboardReader(state=ports.state, store=ports.store, endpoint=settings.endpoint,
                           explanations_prefix=settings.explanations_prefix,
                           class_names=spec.class_names, model_version=spec.version, model_facts=facts,
                           flagged_prefix=settings.screening_flagged_prefix)

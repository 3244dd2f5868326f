"""``GET /dashboard``: the live page; ``GET /dashboard/data``: the JSON it polls;
``GET /dashboard/panel?key=...``: a saliency panel from the object store (explanations only)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response

from signwatch.dashboard import DashboardReader
from signwatch.ports.store import ObjectNotFound
from signwatch_services.http import error

PAGE = resources.files("signwatch_services.explainer").joinpath("static/dashboard.html")


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
                           class_names=spec.class_names, model_version=spec.version, model_facts=facts)

"""Admin endpoints of the inference service: the run-time debugger, switched on without a restart.

    PUT /admin/debugger   body: DebuggerConfig as JSON -> the new configuration and the recorder's status
    GET /admin/debugger   -> the current configuration and status

Every call needs ``Authorization: Bearer <SIGNWATCH_ADMIN_TOKEN>``. With no token configured the
admin API is off: every call answers 403. A missing or wrong token answers 401 with
``WWW-Authenticate: Bearer``. Errors use the service's JSON shape ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import hmac
import json
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from signwatch.debugger import DebuggerConfig

log = logging.getLogger(__name__)

MAX_ADMIN_BODY_BYTES = 16 * 1024
REALM = "signwatch-admin"
NO_STORE = {"Cache-Control": "no-store"}


def _error(status: int, code: str, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message, **extra}},
                        headers={**NO_STORE, **(headers or {})})


def _refusal(core, request: Request) -> JSONResponse | None:
    """None when the request carries the admin token, else the response that refuses it."""
    token = getattr(core.settings, "admin_token", None)
    expected = token.get_secret_value() if token is not None else ""
    if not expected:
        return _error(403, "admin_disabled",
                      "admin API is disabled: no admin token is configured (SIGNWATCH_ADMIN_TOKEN)")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return _error(401, "unauthorized", "admin calls need 'Authorization: Bearer <token>'",
                      headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'})
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        client = request.client.host if request.client else "?"
        log.warning("admin: wrong bearer token from %s for %s %s", client, request.method, request.url.path)
        return _error(401, "invalid_token", "the bearer token is not valid",
                      headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'})
    return None


def _debugger(core):
    return getattr(core, "debugger", None) or getattr(core.classifier, "debugger", None)


def _state(debugger) -> dict:
    return {"config": debugger.config.model_dump(mode="json"), "status": debugger.status()}


async def _read_limited(request: Request, limit: int) -> bytes | None:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def admin_router(core) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"])

    @router.get("/debugger", summary="The debugger's configuration and recorder status")
    async def get_debugger(request: Request) -> JSONResponse:
        if (refused := _refusal(core, request)) is not None:
            return refused
        debugger = _debugger(core)
        if debugger is None:
            return _error(503, "debugger_unavailable", "this service was built without a debugger")
        return JSONResponse(_state(debugger), headers=NO_STORE)

    @router.put(
        "/debugger",
        summary="Replace the debugger's configuration (switch it on or off)",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": DebuggerConfig.model_json_schema()}}}},
    )
    async def put_debugger(request: Request) -> JSONResponse:
        # Authentication first, then the body: an unauthenticated caller learns nothing of the schema.
        if (refused := _refusal(core, request)) is not None:
            return refused
        debugger = _debugger(core)
        if debugger is None:
            return _error(503, "debugger_unavailable", "this service was built without a debugger")
        body = await _read_limited(request, MAX_ADMIN_BODY_BYTES)
        if body is None:
            return _error(413, "payload_too_large", f"body exceeds {MAX_ADMIN_BODY_BYTES} bytes")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, "invalid_json", f"body is not JSON: {exc}")
        try:
            config = DebuggerConfig.model_validate(data)
        except ValidationError as exc:
            return _error(422, "invalid_config", "body is not a valid debugger configuration",
                          details=exc.errors(include_url=False, include_context=False, include_input=False))
        try:
            # Switching on lists the store once (to resume step numbers): not on the event loop.
            await run_in_threadpool(debugger.configure, config)
        except Exception as exc:  # noqa: BLE001 - the store could not be listed
            log.exception("admin: debugger configuration failed")
            return _error(503, "store_unavailable", f"could not prepare the tensor store: {exc}")
        log.info("admin: debugger configured by %s: %s",
                 request.client.host if request.client else "?", config.model_dump_json())
        return JSONResponse(_state(debugger), headers=NO_STORE)

    return router

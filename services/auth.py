"""The admin token, checked once for every service that has admin-only routes (the inference
service's ``/admin``, the monitor's ``POST /ground-truth``).

Every such call needs ``Authorization: Bearer <SIGNWATCH_ADMIN_TOKEN>``. With no token
configured those routes are off: every call answers 403. A missing or wrong token answers 401
with ``WWW-Authenticate: Bearer``. Errors use the services' JSON shape
``{"error": {"code", "message"}}`` and are never cached.
"""

from __future__ import annotations

import hmac
import logging

from fastapi import Request
from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)

REALM = "signwatch-admin"
NO_STORE = {"Cache-Control": "no-store"}


def json_error(status: int, code: str, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message, **extra}},
                        headers={**NO_STORE, **(headers or {})})


def admin_refusal(settings, request: Request) -> JSONResponse | None:
    """None when the request carries the admin token of ``settings``, else the response that
    refuses it."""
    token = getattr(settings, "admin_token", None)
    expected = token.get_secret_value() if token is not None else ""
    if not expected:
        return json_error(403, "admin_disabled",
                          "admin API is disabled: no admin token is configured (SIGNWATCH_ADMIN_TOKEN)")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return json_error(401, "unauthorized", "admin calls need 'Authorization: Bearer <token>'",
                          headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'})
    # Compared in constant time: the time taken says nothing of how much of the token was right.
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        client = request.client.host if request.client else "?"
        log.warning("admin: wrong bearer token from %s for %s %s", client, request.method, request.url.path)
        return json_error(401, "invalid_token", "the bearer token is not valid",
                          headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'})
    return None

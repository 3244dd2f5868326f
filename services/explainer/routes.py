"""``POST /explain``: saliency for any image, outside the violation flow.

An explanation is seconds of CPU (FullGrad: a forward and a backward pass). It runs in a pool of
its own (``SIGNWATCH_EXPLAIN_WORKERS`` threads, at a lower CPU priority), and at most
``SIGNWATCH_EXPLAIN_MAX_PENDING`` calls are admitted at once; one more is answered 429 at once
rather than queued. In ``signwatch serve all`` the inference routes share the process: through
the event loop's shared thread pool, 10 concurrent explanations raised ``/invocations`` p50 7.9x.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from signwatch.explaining import Explainer
from signwatch.imaging import ImageError, decode_image
from signwatch_services.http import error, read_limited

log = logging.getLogger(__name__)
EXPLAIN_NICE = 10  # the explain threads' niceness: the forward passes of /invocations get the CPU first
CODES = {408: "body_timeout", 413: "payload_too_large", 415: "unsupported_media_type"}


def _lower_priority() -> None:
    """In each explain thread: Linux schedules threads alone, so this thread alone yields the CPU."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), EXPLAIN_NICE)
    except (AttributeError, OSError) as exc:  # not Linux: the pool's bound is all there is
        log.debug("explain threads keep their priority: %s", exc)


class ExplainPool:
    """The explain computations' own threads, and how many calls may hold them or wait for them."""

    def __init__(self, workers: int, max_pending: int) -> None:
        self.max_pending = max_pending
        self.pending = 0  # admitted calls: reading their body, waiting, or running (event loop only)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="explain", initializer=_lower_priority)

    def admit(self) -> bool:
        if self.pending >= self.max_pending:
            return False
        self.pending += 1
        return True

    def done(self) -> None:
        self.pending -= 1

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def _explain_png(explainer: Explainer, body: bytes, content_type: str | None, max_image_side: int,
                 method: str, target: int | None):
    image = decode_image(body, content_type, max_image_side)
    [result] = explainer.explain_images([image], method=method, target=target)
    buf = io.BytesIO()
    result.panel.save(buf, format="PNG")
    return result, buf.getvalue()


def explain_router(explainer: Explainer, settings) -> APIRouter:
    router = APIRouter()
    pool = ExplainPool(settings.explain_workers, settings.explain_max_pending)

    @router.post("/explain")
    async def explain(
        request: Request,
        method: Literal["fullgrad", "input_x_gradient", "gradcam"] = "fullgrad",
        target: int | None = Query(None, ge=0, le=explainer.spec.num_classes - 1),
        format: Literal["json", "png"] = "json",
    ) -> Response:
        # Admitted before the body is read, so that bodies held are bounded too; a body that
        # trickles is cut off at SIGNWATCH_BODY_TIMEOUT_S and gives its place back.
        if not pool.admit():
            refused = error(429, "busy", f"{pool.max_pending} explanations are running or waiting; retry later")
            refused.headers["Retry-After"] = "1"
            return refused
        try:
            body = await read_limited(request, settings.max_body_bytes, settings.body_timeout_s)
            result, png = await pool.run(_explain_png, explainer, body, request.headers.get("content-type"),
                                         settings.max_image_side, method, target)
        except ImageError as exc:
            return error(exc.status, CODES.get(exc.status, "bad_image"), str(exc))
        finally:
            pool.done()
        if format == "png":
            return Response(png, media_type="image/png")
        return JSONResponse({
            "method": method,
            "predicted": {"class_id": result.predicted_class, "label": result.label,
                          "probability": result.probability},
            "target": target if target is not None else result.predicted_class,
            "completeness_rel_error": result.completeness_rel_error,
            "model": explainer.model_facts(),  # whether FullGrad is exact for it, and the error's bound
            "outside_sign_share": result.outside_sign_share,
            "looks_away": result.looks_away,
            "panel_png_base64": base64.b64encode(png).decode(),
        })

    return router

"""``POST /explain``: saliency for any image, outside the violation flow."""

from __future__ import annotations

import base64
import io
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from signwatch.explaining import Explainer
from signwatch.imaging import ImageError, decode_image
from signwatch_services.http import error, read_limited


def _explain_png(explainer: Explainer, image, method: str, target: int | None):
    [result] = explainer.explain_images([image], method=method, target=target)
    buf = io.BytesIO()
    result.panel.save(buf, format="PNG")
    return result, buf.getvalue()


def explain_router(explainer: Explainer, max_body_bytes: int, max_image_side: int) -> APIRouter:
    router = APIRouter()

    @router.post("/explain")
    async def explain(
        request: Request,
        method: Literal["fullgrad", "input_x_gradient", "gradcam"] = "fullgrad",
        target: int | None = Query(None, ge=0, le=explainer.spec.num_classes - 1),
        format: Literal["json", "png"] = "json",
    ) -> Response:
        try:
            body = await read_limited(request, max_body_bytes)
            image = await run_in_threadpool(decode_image, body, request.headers.get("content-type"), max_image_side)
        except ImageError as exc:
            return error(exc.status, "bad_image", str(exc))
        # FullGrad is seconds of CPU: in a worker thread, so that the event loop (and /invocations,
        # when every service runs in one process) keeps serving meanwhile
        result, png = await run_in_threadpool(_explain_png, explainer, image, method, target)
        if format == "png":
            return Response(png, media_type="image/png")
        return JSONResponse({
            "method": method,
            "predicted": {"class_id": result.predicted_class, "label": result.label,
                          "probability": result.probability},
            "target": target if target is not None else result.predicted_class,
            "completeness_rel_error": result.completeness_rel_error,
            "outside_sign_share": result.outside_sign_share,
            "looks_away": result.looks_away,
            "panel_png_base64": base64.b64encode(png).decode(),
        })

    return router

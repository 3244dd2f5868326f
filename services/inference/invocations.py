"""The two invocation routes, answered by a lean ASGI middleware: the service's hot path.

- ``POST /invocations``: SageMaker's container contract; errors ``{"error": {"code", "message"}}``
- ``POST /endpoints/{EndpointName}/invocations``: SageMaker's runtime API, as boto3 calls it;
  errors in the shape botocore parses (``signwatch.serving.sagemaker``)

Why not FastAPI routes: through FastAPI's stack (its middlewares, the router, dependency solving,
Request and Response objects) a request took 1.0 ms of event-loop time, here 0.5 ms (a stub model,
wrk with 64 connections on the 2-core CPU: 1,900 against 1,000 requests/s), and on two cores that
loop time is taken from the forward passes. Everything else the service answers is FastAPI's,
and its OpenAPI spec documents these two routes too (``routes.py``). This handler only reads the
body, calls the inference core, maps its answer or error to the protocol and, once the answer
is sent, publishes the events.
"""

from __future__ import annotations

import asyncio
import json
import logging

from signwatch.imaging import ImageError
from signwatch.serving import Invocation, InvocationError
from signwatch.serving import sagemaker

log = logging.getLogger(__name__)

CONTAINER_PATH = "/invocations"
RUNTIME_PREFIX, RUNTIME_SUFFIX = "/endpoints/", "/invocations"
INFERENCE_ID_HEADERS = ("x-amzn-sagemaker-inference-id", "x-inference-id")
JSON = (b"content-type", b"application/json")


class _Disconnected(Exception):
    """The client went away before its body arrived: nobody to answer."""


def _endpoint_name(path: str) -> str | None:
    """``EndpointName`` of a runtime-API path, None for any other path."""
    if path.startswith(RUNTIME_PREFIX) and path.endswith(RUNTIME_SUFFIX):
        name = path[len(RUNTIME_PREFIX):-len(RUNTIME_SUFFIX)]
        if name and "/" not in name:
            return name
    return None


class InvocationsMiddleware:
    """Answers the invocation routes; passes every other request to ``app`` (FastAPI)."""

    def __init__(self, app, core) -> None:
        self.app = app
        self.service = core.service
        self.settings = core.settings

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint_name = _endpoint_name(path)
        if path != CONTAINER_PATH and endpoint_name is None:
            return await self.app(scope, receive, send)
        if scope["method"] != "POST":
            return await _send(send, 405, {"error": {"code": "method_not_allowed", "message": "use POST"}},
                               [(b"allow", b"POST")])
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if endpoint_name is None:
            await self._container(scope, receive, send, headers)
        else:
            await self._runtime(scope, receive, send, headers, endpoint_name)

    async def _container(self, scope, receive, send, headers: dict) -> None:
        inference_id = next((headers[h] for h in INFERENCE_ID_HEADERS if h in headers), None)
        try:
            answer = await self._call(scope, receive, headers, inference_id)
        except InvocationError as exc:
            return await _send(send, exc.status, {"error": {"code": exc.code, "message": exc.message}})
        except _Disconnected:
            return await _send(send, 400, None)
        try:
            await _send_answer(send, answer, [(b"x-signwatch-event-id", ",".join(answer.event_ids).encode())])
        finally:
            self.service.publish(answer)

    async def _runtime(self, scope, receive, send, headers: dict, endpoint_name: str) -> None:
        s = self.settings
        try:
            sagemaker.check_call(endpoint_name, headers, s.endpoint, s.variant)
            answer = await self._call(scope, receive, headers, headers.get(sagemaker.INFERENCE_ID))
        except InvocationError as exc:
            status, extra, body = sagemaker.error_response(exc)
            return await _send(send, status, body, [(k.encode(), v.encode()) for k, v in extra.items()])
        except _Disconnected:
            return await _send(send, 400, None)
        out = [(sagemaker.INVOKED_VARIANT.lower().encode(), s.variant.encode()),
               (b"x-signwatch-event-id", ",".join(answer.event_ids).encode())]
        attributes = headers.get(sagemaker.CUSTOM_ATTRIBUTES)
        if attributes is not None:
            out.append((sagemaker.CUSTOM_ATTRIBUTES.encode(), attributes.encode("latin-1")))
        try:
            await _send_answer(send, answer, out)
        finally:
            self.service.publish(answer)

    async def _call(self, scope, receive, headers: dict, inference_id: str | None):
        """The body read and the core called, inside the admission bound."""
        declared = headers.get("content-length")
        service = self.service
        reservation = service.admit(int(declared) if declared and declared.isdigit() else None)
        try:
            body = await self._read_body(scope, receive, headers)
            return await service.invoke(Invocation(
                body=body, content_type=headers.get("content-type"), inference_id=inference_id,
                custom_attributes=headers.get(sagemaker.CUSTOM_ATTRIBUTES)))
        finally:
            service.release(reservation)

    async def _read_body(self, scope, receive, headers: dict) -> bytes:
        """The whole body, at most ``max_body_bytes``, within ``body_timeout_s`` (a Content-Length
        larger than what arrives would otherwise hold the request open for as long as the client likes)."""
        limit, timeout_s = self.settings.max_body_bytes, self.settings.body_timeout_s
        chunks, size = [], 0
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        client = scope.get("client") or ("?", "?")
                        log.warning("client %s:%s disconnected after %d of %s body bytes (POST %s)", client[0],
                                    client[1], size, headers.get("content-length", "?"), scope["path"])
                        raise _Disconnected()
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise self.service.refuse_input(ImageError(f"body exceeds the {limit}-byte limit", 413))
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise self.service.refuse_input(ImageError(
                f"the body did not arrive within {timeout_s:g} s ({size} bytes received)", 408)) from None
        return b"".join(chunks)


async def _send_answer(send, answer, headers: list) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", answer.content_type.encode()), (b"content-length", str(len(answer.body)).encode()),
        *headers]})
    await send({"type": "http.response.body", "body": answer.body})


async def _send(send, status: int, content: dict | None, headers: list | None = None) -> None:
    body = (json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
            if content is not None else b"")
    start = [(b"content-length", str(len(body)).encode()), *(headers or [])]
    if content is not None:
        start.insert(0, JSON)
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})

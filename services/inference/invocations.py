"""The invocation routes, answered by a lean ASGI middleware: the service's hot path.

- ``POST /invocations``: SageMaker's container contract; errors ``{"error": {"code", "message"}}``
- ``POST /endpoints/{EndpointName}/invocations``: SageMaker's runtime API, as boto3 calls it;
  errors in the shape botocore parses (``signwatch.serving.sagemaker``)
- ``POST /v2/models/{name}[/versions/{version}]/infer``: the Open Inference Protocol (KServe V2,
  Triton); errors ``{"error": "..."}`` (``signwatch.serving.v2``)

Why not FastAPI routes: through FastAPI's stack (its middlewares, the router, dependency solving,
Request and Response objects) a request took 1.0 ms of event-loop time, here 0.5 ms (a stub model,
wrk with 64 connections on the 2-core CPU: 1,900 against 1,000 requests/s), and on two cores that
loop time is taken from the forward passes. Everything else the service answers is FastAPI's,
and its OpenAPI spec documents these routes too (``routes.py``, ``v2_routes.py``). This handler
only reads the body within the limits and dispatches: the protocol module parses it and shapes
the answer, the core predicts; once the answer is sent, the events are published.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from signwatch.serving import ServingError
from signwatch.serving import container, sagemaker, v2

log = logging.getLogger(__name__)

CONTAINER_PATH = "/invocations"
RUNTIME_PREFIX, RUNTIME_SUFFIX = "/endpoints/", "/invocations"
INFERENCE_ID_HEADERS = ("x-amzn-sagemaker-inference-id", "x-inference-id")
EVENT_ID = b"x-signwatch-event-id"
JSON = (b"content-type", b"application/json")
IDENTITY = ("", "identity")
# A body cut off (408) or refused as too large (413) is not read to its end: the connection
# closes, rather than staying open for the rest of it to trickle in (uvicorn would keep reading,
# and discarding, what the client sends). A 413 for an image over the pixel limit, whose body was
# read, closes too: one reconnect is the price of a single rule.
CLOSE = [(b"connection", b"close")]
UNREAD_BODY = ("body_timeout", "payload_too_large")


def _closing(exc: ServingError) -> list:
    return CLOSE if exc.reason in UNREAD_BODY else []


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
        if path == CONTAINER_PATH:
            handler, target = self._container, None
        elif (target := _endpoint_name(path)) is not None:
            handler = self._runtime
        elif (target := v2.infer_target(path)) is not None:
            handler = self._v2
        else:
            return await self.app(scope, receive, send)
        if scope["method"] != "POST":
            content = ({"error": "use POST"} if handler == self._v2
                       else {"error": {"code": "method_not_allowed", "message": "use POST"}})
            return await _send(send, 405, content, [(b"allow", b"POST")])
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        await handler(scope, receive, send, headers, target)

    async def _container(self, scope, receive, send, headers: dict, _) -> None:
        inference_id = next((headers[h] for h in INFERENCE_ID_HEADERS if h in headers), None)
        try:
            result, body = await self._admitted(scope, receive, headers, self._container_call, inference_id)
        except ServingError as exc:
            self.service.count_refusal(exc)
            return await _send(send, container.status_of(exc), container.error_body(exc), _closing(exc))
        except _Disconnected:
            return await _send(send, 400, None)
        try:
            await _send_body(send, body, container.RESPONSE_TYPE, [(EVENT_ID, ",".join(result.event_ids).encode())])
        finally:
            self.service.publish(result)

    async def _runtime(self, scope, receive, send, headers: dict, endpoint_name: str) -> None:
        s = self.settings
        try:
            sagemaker.check_call(endpoint_name, headers, s.endpoint, s.variant)
            result, body = await self._admitted(scope, receive, headers, self._container_call,
                                                headers.get(sagemaker.INFERENCE_ID))
        except ServingError as exc:
            self.service.count_refusal(exc)
            status, extra, content = sagemaker.error_response(exc)
            return await _send(send, status, content,
                               [(k.encode(), v.encode()) for k, v in extra.items()] + _closing(exc))
        except _Disconnected:
            return await _send(send, 400, None)
        out = [(sagemaker.INVOKED_VARIANT.lower().encode(), s.variant.encode()),
               (EVENT_ID, ",".join(result.event_ids).encode())]
        attributes = headers.get(sagemaker.CUSTOM_ATTRIBUTES)
        if attributes is not None:
            out.append((sagemaker.CUSTOM_ATTRIBUTES.encode(), attributes.encode("latin-1")))
        try:
            await _send_body(send, body, container.RESPONSE_TYPE, out)
        finally:
            self.service.publish(result)

    async def _container_call(self, body: bytes, headers: dict, inference_id: str | None):
        started = time.perf_counter()
        request = await container.parse(self.service, body, headers.get("content-type"), inference_id,
                                        headers.get(sagemaker.CUSTOM_ATTRIBUTES))
        request.inference.started = started
        result = await self.service.infer(request.inference)
        return result, container.response_body(result, request.batch)

    async def _v2(self, scope, receive, send, headers: dict, target: tuple[str, str | None]) -> None:
        try:
            v2.check_model(*target, self.settings.endpoint, self.service.model_version)
            encoding = headers.get("content-encoding", "").strip().lower()
            if encoding not in IDENTITY:
                raise v2.bad_request(f"Content-Encoding {encoding!r} is not supported: send the body uncompressed")
            result, answer = await self._admitted(scope, receive, headers, self._v2_call, target[0])
        except ServingError as exc:
            self.service.count_refusal(exc)
            return await _send(send, *v2.error_response(exc), _closing(exc))
        except _Disconnected:
            return await _send(send, 400, None)
        out = [(EVENT_ID, ",".join(result.event_ids).encode())]
        if answer.header_length is not None:
            out.append((v2.HEADER_LENGTH.encode(), str(answer.header_length).encode()))
        try:
            await _send_body(send, answer.body, answer.content_type, out)
        finally:
            self.service.publish(result)

    async def _v2_call(self, body: bytes, headers: dict, model_name: str):
        started = time.perf_counter()
        request = await v2.parse_infer(self.service, body, headers.get(v2.HEADER_LENGTH))
        request.inference.started = started
        result = await self.service.infer(request.inference)
        return result, v2.response(request, result, model_name)

    async def _admitted(self, scope, receive, headers: dict, call, arg):
        """``call(body, headers, arg)``: the body read and handled inside the admission bound."""
        declared = headers.get("content-length")
        service = self.service
        ticket = service.admit(int(declared) if declared and declared.isdigit() else None)
        try:
            body = await self._read_body(scope, receive, headers, ticket)
            return await call(body, headers, arg)
        finally:
            service.release(ticket)

    async def _read_body(self, scope, receive, headers: dict, ticket) -> bytes:
        """The whole body, at most ``max_body_bytes``, its bytes counted in the in-flight budget as
        they arrive (``signwatch.serving.admission``). Two deadlines from the start of the read: a
        body still arriving after ``slow_body_after_s`` takes a slow-upload slot (none free: 408),
        and after ``body_timeout_s`` it is cut off (408): a Content-Length larger than what arrives
        would otherwise hold the request, and its bytes, for as long as the client likes."""
        s = self.settings
        limit, timeout_s = s.max_body_bytes, s.body_timeout_s
        started = asyncio.get_running_loop().time()
        phase_end = started + min(s.slow_body_after_s, timeout_s)
        chunks, size = [], 0
        while True:
            try:
                # A cancelled ``receive`` loses nothing: uvicorn keeps what arrived for the next call.
                async with asyncio.timeout_at(phase_end):
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
                            raise ServingError("input", "payload_too_large", f"body exceeds the {limit}-byte limit")
                        ticket.hold(len(chunk))
                        chunks.append(chunk)
                        if not message.get("more_body", False):
                            return b"".join(chunks)
            except TimeoutError:
                if ticket.slow or phase_end >= started + timeout_s:
                    raise ServingError("input", "body_timeout", f"the body did not arrive within {timeout_s:g} s "
                                       f"({size} bytes received)") from None
                ticket.become_slow(s.slow_body_after_s)
                phase_end = started + timeout_s


async def _send_body(send, body: bytes, content_type: str, headers: list) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


async def _send(send, status: int, content: dict | None, headers: list | None = None) -> None:
    body = (json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
            if content is not None else b"")
    start = [(b"content-length", str(len(body)).encode()), *(headers or [])]
    if content is not None:
        start.insert(0, JSON)
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})

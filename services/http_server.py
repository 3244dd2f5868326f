"""How every service's HTTP is run: uvicorn (httptools, uvloop), with a deadline on request headers.

uvicorn bounds only the idle time between two requests of a connection (``timeout_keep_alive``,
armed once a response was sent). A connection that opens and sends nothing, or sends its headers a
byte at a time, is held open for as long as the client likes: 200 such connections all stayed open
(issue 16). Its other knobs do not help: ``h11_max_incomplete_event_size`` bounds the size of
unfinished headers, not their time, and only for h11; ``limit_concurrency`` answers 503 to
*every* client once the slow ones hold the count. So the protocol below arms a deadline when the
connection opens and when the first byte of each request arrives, and disarms it once the
headers are complete; when it passes, the connection is closed (408 if part of a request came).
Bodies have their own deadline, in the handler that reads them (``inference/invocations.py``,
``http.read_limited``), which answers in its protocol's error shape.
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

_TOO_LATE = b"the request headers did not arrive in time"
TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
               b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TOO_LATE), _TOO_LATE))


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with ``header_timeout_s`` to receive a request's headers."""

    header_timeout_s: float = 10.0  # set per server by ``header_deadline_protocol``

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_deadline: asyncio.TimerHandle | None = None
        self._request_begun = False
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is closed too

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_begun = True
        if self._header_deadline is None:  # armed at connect: the first request counts from there
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._request_begun = False
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_late)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_late(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        if self._request_begun:  # part of a request came: say why; an idle connection just closes
            client = self.client or ("?", "?")
            log.warning("client %s:%s: request headers not complete within %g s; closing the connection",
                        client[0], client[1], self.header_timeout_s)
            self.transport.write(TIMEOUT_408)
        self.transport.close()


def header_deadline_protocol(header_timeout_s: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class for a server (uvicorn takes a class, and builds it per connection)."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": header_timeout_s})


def server_config(app, settings, port: int, host: str | None = None, log_level: str = "info") -> uvicorn.Config:
    """The uvicorn configuration every service runs with (and the tests' live servers)."""
    # httptools + uvloop, no access log by default: the measured fast path (benchmarks/serving.py)
    return uvicorn.Config(app, host=host or settings.host, port=port, log_level=log_level, loop="uvloop",
                          http=header_deadline_protocol(settings.header_timeout_s),
                          access_log=settings.access_log)

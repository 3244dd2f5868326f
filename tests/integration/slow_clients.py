"""Slow clients, as an attacker runs them: in a process of their own, so that their work does not
take the measuring clients' interpreter (``python -m tests.integration.slow_clients URL SECONDS
UPLOADS HEADERS``; prints one JSON line of what it saw).

- ``UPLOADS`` connections each declare a 6 MB body and trickle it (1 KiB every 0.25 s);
- ``HEADERS`` connections each send their request line and then one header byte every 0.5 s,
  never finishing the headers.

Each reconnects once the server closed it, until SECONDS passed. Reported: the status line of
every answer to an upload, and how long each header connection stayed open and what it was told.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

DECLARED = 6 * 1024 * 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def _slow_upload(host: str, port: int, until: float, seen: list) -> None:
    while time.monotonic() < until:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     f"Content-Length: {DECLARED}\r\n\r\n".encode() + PNG_MAGIC)
        answer = asyncio.ensure_future(reader.read(65536))
        try:
            while not answer.done() and time.monotonic() < until:
                writer.write(b"\0" * 1024)
                await writer.drain()
                await asyncio.wait([answer], timeout=0.25)
        except ConnectionError:
            pass
        if answer.done() and not answer.exception():
            seen.append(answer.result().split(b"\r\n", 1)[0].decode(errors="replace"))
        answer.cancel()
        writer.close()


async def _slow_headers(host: str, port: int, until: float, seen: list) -> None:
    while time.monotonic() < until:
        t0 = time.monotonic()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /invocations HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        closed = asyncio.ensure_future(reader.read(65536))
        try:
            while not closed.done() and time.monotonic() < until:
                writer.write(b"a")
                await writer.drain()
                await asyncio.wait([closed], timeout=0.5)
        except ConnectionError:
            pass
        if closed.done() and not closed.exception():
            seen.append([round(time.monotonic() - t0, 3), closed.result().split(b"\r\n", 1)[0].decode(errors="replace")])
        closed.cancel()
        writer.close()


async def main(url: str, seconds: float, uploads: int, headers: int) -> dict:
    host, port = url.removeprefix("http://").split(":")
    until = time.monotonic() + seconds
    answers, held = [], []
    await asyncio.gather(*[_slow_upload(host, int(port), until, answers) for _ in range(uploads)],
                         *[_slow_headers(host, int(port), until, held) for _ in range(headers)])
    return {"upload_answers": answers, "header_connections": held}


if __name__ == "__main__":
    url, seconds, uploads, headers = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(asyncio.run(main(url, seconds, uploads, headers))))

"""HTTP helpers every service's routes share: JSON errors and size-limited bodies."""

from __future__ import annotations

import asyncio

from fastapi import Request
from fastapi.responses import JSONResponse

from signwatch.imaging import ImageError


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


async def read_limited(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The body, at most ``limit`` bytes (413), within ``timeout_s`` from the start of its read
    (408): a body that trickles would otherwise hold whatever admitted it for as long as it likes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ImageError(f"body of {declared} bytes exceeds the {limit}-byte limit", 413)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ImageError(f"body exceeds the {limit}-byte limit", 413)
                chunks.append(chunk)
    except TimeoutError:
        raise ImageError(f"the body did not arrive within {timeout_s:g} s ({size} bytes received)", 408) from None
    return b"".join(chunks)

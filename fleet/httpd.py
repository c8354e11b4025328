"""A minimal HTTP/1.1 JSON endpoint on asyncio streams, for enrolment (loopback or behind a proxy).

One request per connection, bodies up to 4 KiB, JSON in and out; enough for
``POST /v1/enroll {"token": T}`` and ``GET /v1/health`` without a web framework.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

MAX_HEADER = 8192
MAX_BODY = 4096
Handler = Callable[[str, str, Any], Awaitable[tuple[int, dict[str, Any]]]]
REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error"}


async def _respond(writer: asyncio.StreamWriter, status: int, doc: dict[str, Any]) -> None:
    body = json.dumps(doc, sort_keys=True).encode()
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n")
    writer.write(head.encode() + body)
    await writer.drain()


async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     handler: Handler) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        await _respond(writer, 400, {"error": "request head missing or too long"})
        return
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        await _respond(writer, 400, {"error": "bad request line"})
        return
    method, path = parts[0], parts[1]
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (h.partition(":") for h in lines[1:] if h)}
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        length = -1
    if not 0 <= length <= MAX_BODY:
        await _respond(writer, 413, {"error": f"body must be 0..{MAX_BODY} bytes"})
        return
    body: Any = None
    if length:
        try:
            raw = await asyncio.wait_for(reader.readexactly(length), 10)
            body = json.loads(raw)
        except (asyncio.IncompleteReadError, TimeoutError, ValueError):
            await _respond(writer, 400, {"error": "body is not JSON"})
            return
    status, doc = await handler(method, path, body)
    await _respond(writer, status, doc)


async def serve_http(host: str, port: int, handler: Handler) -> asyncio.Server:
    """Start serving; the caller closes the returned server."""
    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _serve_one(reader, writer, handler)
        except Exception:  # one bad client must not take the endpoint down
            log.exception("enrolment endpoint: request failed")
        finally:
            writer.close()

    return await asyncio.start_server(on_client, host, port, limit=MAX_HEADER)

"""The enrolment endpoint: a minimal HTTP/1.1 JSON server on asyncio streams, normally over TLS.

One request per connection, JSON in and out: enough for ``POST /v1/enroll {"token": T}`` and
``GET /v1/health`` without a web framework. The intake is total: a request reaches the
handler only with a well-formed request line and headers, a declared and bounded body, and
that body parsed by the strict JSON reader (``edge_agent.protocol.jsonsafe``). Everything else
is answered 4xx with a reason (400 malformed, 404/405 wrong path or method, 408 too slow,
411 no Content-Length, 413 too large, 415 not JSON, 417 unknown Expect), logged and counted in
``HttpStats``. One deadline covers the TLS handshake, the head and the body of a request, so a
client that trickles bytes (slowloris) holds a connection for at most that long, and the
number of connections held at once is capped. No input ends the endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.protocol.errors import ConfigError
from edge_agent.protocol.jsonsafe import UnsafeJsonError, loads_strict, show
from edge_agent.protocol.rejections import Rejections

log = logging.getLogger(__name__)

Handler = Callable[[str, str, Any], Awaitable[tuple[int, dict[str, Any]]]]
# path -> the methods it answers; lets the endpoint answer 404/405 before reading a body
Routes = Mapping[str, Collection[str]]
REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           411: "Length Required", 413: "Payload Too Large", 415: "Unsupported Media Type",
           417: "Expectation Failed", 500: "Internal Server Error"}

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")  # RFC 9110 token, bounded
_TARGET = re.compile(rb"/[\x21-\x7e]*")                      # origin-form, printable ASCII
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")              # control characters but HT
_DIGITS = re.compile(r"[0-9]{1,12}")                          # not int(): it takes " +1_0"
_SINGLE = frozenset({"content-length", "content-type", "host", "expect", "transfer-encoding"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
LINGER_S = 1.0
LINGER_IDLE_S = 0.1
LINGER_BYTES = 256 * 1024


@dataclass(frozen=True)
class HttpLimits:
    """What one request may cost the endpoint; a request beyond any limit is refused."""

    max_line: int = 2048               # request line, bytes
    max_head: int = 8192               # request line and headers, bytes
    max_headers: int = 32
    max_body: int = 64 * 1024
    max_json_depth: int = 8
    max_json_items: int = 64
    max_json_str: int = 1024
    read_timeout_s: float = 10.0       # TLS handshake, head and body of one request together
    write_timeout_s: float = 10.0
    max_connections: int = 256


@dataclass
class HttpStats:
    """The endpoint's counters: answers by status, refusals by reason, connections cut."""

    connections: int = 0
    answered: Counter[int] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    cut: Counter[str] = field(default_factory=Counter)  # closed without an answer

    def snapshot(self) -> dict[str, Any]:
        """The counters as a JSON object (for a health answer or a log line)."""
        return {"connections": self.connections,
                "answered": {str(k): v for k, v in sorted(self.answered.items())},
                "refused": dict(sorted(self.refused.items())),
                "cut": dict(sorted(self.cut.items()))}


class Refused(Exception):
    """A request the endpoint answers itself: status, a counter key and the reason sent."""

    def __init__(self, status: int, key: str, reason: str,
                 headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.key = key
        self.reason = reason
        self.headers = dict(headers or {})
        super().__init__(f"{status} {reason}")


@dataclass(frozen=True)
class Request:
    """A request that passed every check: method, path (query removed), headers, JSON body."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


def server_tls_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A TLS (>= 1.2) server context with the PEM certificate chain and key; ConfigError if not."""
    for option, path in (("--tls-cert", cert_file), ("--tls-key", key_file)):
        try:
            path.read_bytes()  # for an error naming the file; ssl's own says only "PEM lib"
        except OSError as exc:
            raise ConfigError(f"{option} {path}: {exc.strerror or exc}") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise ConfigError(f"--tls-cert {cert_file} --tls-key {key_file}: not a PEM certificate "
                          f"and its private key ({exc.reason or exc})") from None
    if key_file.stat().st_mode & 0o077:
        log.warning("--tls-key %s is readable by other users; chmod 600 it", key_file)
    return ctx


def parse_head(head: bytes, limits: HttpLimits) -> tuple[str, str, str, dict[str, str]]:
    """(method, target, version, headers) of a request head ending in CRLF CRLF; Refused if
    any part is malformed. Header names are lower-cased."""
    lines = head[:-4].split(b"\r\n") if head.endswith(b"\r\n\r\n") else [b""]
    if len(lines[0]) > limits.max_line:
        raise Refused(400, "line-too-long", f"request line over {limits.max_line} bytes")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise Refused(400, "bad-request-line", "request line must be METHOD /PATH HTTP/1.1")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise Refused(400, "bad-method", f"method {show(method)} is not an HTTP token")
    if not _TARGET.fullmatch(target):
        raise Refused(400, "bad-target", "request target must be a path of printable ASCII "
                                         "starting with /")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise Refused(400, "bad-version", f"version {show(version)}: HTTP/1.1 expected")
    if len(lines) - 1 > limits.max_headers:
        raise Refused(400, "too-many-headers", f"{len(lines) - 1} header fields, the limit is "
                                               f"{limits.max_headers}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        # a name with white space around it, or a folded line, is how requests get smuggled
        if not colon or not _TOKEN.fullmatch(name):
            raise Refused(400, "bad-header", f"malformed header line {show(line)}")
        value = value.strip(b" \t")
        if _CTL.search(value):
            raise Refused(400, "bad-header", f"header {show(name)} holds control characters")
        key = name.decode("ascii").lower()
        if key in headers and key in _SINGLE:
            raise Refused(400, "repeated-header", f"header {key} given twice")
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    if version == b"HTTP/1.1" and "host" not in headers:
        raise Refused(400, "no-host", "an HTTP/1.1 request needs a Host header")
    return method.decode("ascii"), target.decode("ascii"), version.decode("ascii"), headers


def body_length(method: str, headers: Mapping[str, str], limits: HttpLimits) -> int:
    """The declared body length, checked against the limits and the method; Refused if not."""
    if "transfer-encoding" in headers:
        raise Refused(400, "transfer-encoding", "Transfer-Encoding is not accepted; send the "
                                                "body with a Content-Length")
    declared = headers.get("content-length")
    if declared is None:
        if method in _BODY_METHODS:
            raise Refused(411, "no-length", f"{method} needs a Content-Length")
        return 0
    if not _DIGITS.fullmatch(declared):
        raise Refused(400, "bad-length", f"Content-Length {show(declared)} is not a number")
    length = int(declared)
    if length > limits.max_body:
        raise Refused(413, "too-large", f"body of {length} bytes; the limit is "
                                        f"{limits.max_body}")
    if method in _BODY_METHODS:
        if length == 0:
            raise Refused(400, "no-body", f"{method} needs a JSON body")
        media, _, params = headers.get("content-type", "").partition(";")
        charset = params.strip().lower().replace(" ", "")
        if media.strip().lower() != "application/json" or charset not in ("", "charset=utf-8"):
            raise Refused(415, "not-json", "Content-Type must be application/json (UTF-8)")
    elif length:
        raise Refused(400, "unexpected-body", f"{method} takes no body")
    return length


def parse_body(raw: bytes, limits: HttpLimits) -> Any:
    """The body as strict JSON (UTF-8, no lone surrogates, bounded); Refused if not."""
    try:
        return loads_strict(raw, max_bytes=limits.max_body, max_depth=limits.max_json_depth,
                            max_items=limits.max_json_items, max_str=limits.max_json_str)
    except UnsafeJsonError as exc:
        raise Refused(400, "bad-json", f"body refused at {exc.path}: {exc.problem}") from None


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       limits: HttpLimits, routes: Routes | None) -> Request:
    """Read and check one request; Refused (to be answered) if it is not acceptable."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise Refused(400, "head-too-long", f"request head over {limits.max_head} bytes") \
            from None
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise  # connected and closed without a byte: no one to answer
        raise Refused(400, "head-incomplete", "connection closed before the end of the "
                                              "request head") from None
    method, target, _, headers = parse_head(head, limits)
    path = target.partition("?")[0]
    if routes is not None:
        if path not in routes:
            raise Refused(404, "no-path", f"no endpoint {show(path)}")
        if method not in routes[path]:
            allowed = ", ".join(sorted(routes[path]))
            raise Refused(405, "wrong-method", f"{path} answers {allowed}",
                          {"Allow": allowed})
    length = body_length(method, headers, limits)
    expect = headers.get("expect")
    if expect is not None:
        if expect.lower() != "100-continue":
            raise Refused(417, "bad-expect", f"Expect {show(expect)} is not supported")
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for it before a body
    try:
        raw = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise Refused(400, "body-incomplete", f"body ended after {len(exc.partial)} of "
                                              f"{length} bytes") from None
    return Request(method, path, headers, parse_body(raw, limits) if length else None)


async def _respond(writer: asyncio.StreamWriter, status: int, doc: dict[str, Any],
                   limits: HttpLimits, headers: Mapping[str, str] | None = None) -> None:
    body = json.dumps(doc, sort_keys=True).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n")
    writer.write(head.encode() + body)
    # a client that does not read its answer must not hold the connection either
    await asyncio.wait_for(writer.drain(), limits.write_timeout_s)


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


class Endpoint:
    """The per-connection work of one server: TLS, the request deadline, answers, counters."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None, limits: HttpLimits,
                 stats: HttpStats, routes: Routes | None,
                 rejections: Rejections | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.limits = limits
        self.stats = stats
        self.routes = routes
        # One client can send thousands of bad requests: the first of each reason is logged,
        # the rest counted (stats) and summarised.
        self.rejections = rejections or Rejections("enrolment endpoint", log)
        self.active = 0

    def _cut(self, peer: str, key: str, why: str, level: int = logging.WARNING) -> None:
        self.stats.cut[key] += 1
        if level >= logging.WARNING:
            self.rejections.reject(f"cut:{key}",
                                   f"{peer}: connection closed without an answer: {why}")
        else:
            log.log(level, "enrolment endpoint: %s: connection closed without an answer: %s",
                    peer, why)

    async def _answer(self, writer: asyncio.StreamWriter, peer: str, status: int,
                      doc: dict[str, Any], headers: Mapping[str, str] | None = None) -> None:
        self.stats.answered[status] += 1
        try:
            await _respond(writer, status, doc, self.limits, headers)
        except (OSError, TimeoutError) as exc:
            self._cut(peer, "write-failed", f"answer {status} not delivered: {exc!r}")

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      peer: str, refusal: Refused) -> None:
        self.stats.refused[refusal.key] += 1
        self.rejections.reject(refusal.key, f"{peer}: {refusal.status} {refusal.reason}")
        await self._answer(writer, peer, refusal.status, {"error": refusal.reason},
                           refusal.headers)
        # Closing with unread input makes the kernel send a reset, which can destroy the
        # answer before the client reads it: read what it is still sending (bounded in bytes
        # and time, and only while it keeps coming), as servers' "lingering close" does.
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(LINGER_S):
                left = LINGER_BYTES
                while left > 0:
                    chunk = await asyncio.wait_for(reader.read(min(left, 65536)), LINGER_IDLE_S)
                    if not chunk:
                        break
                    left -= len(chunk)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        peer: str) -> None:
        phase = "TLS handshake" if self.tls is not None else "request"
        try:
            async with asyncio.timeout(self.limits.read_timeout_s):
                if self.tls is not None:
                    await writer.start_tls(self.tls)
                    phase = "request"
                request = await read_request(reader, writer, self.limits, self.routes)
        except Refused as refusal:
            await self._refuse(reader, writer, peer, refusal)
            return
        except TimeoutError:
            if phase != "request":
                self._cut(peer, "tls-timeout", f"no TLS handshake within "
                                               f"{self.limits.read_timeout_s:g} s")
                return
            await self._refuse(reader, writer, peer, Refused(
                408, "timeout", f"request not complete within {self.limits.read_timeout_s:g} s"))
            return
        except asyncio.IncompleteReadError:
            # what a load balancer's TCP check does: counted, but no warning
            self._cut(peer, "empty", "closed before sending anything", logging.INFO)
            return
        except (ssl.SSLError, OSError) as exc:
            key = "tls-failed" if phase != "request" else "reset"
            self._cut(peer, key, f"{phase} failed: {exc!r}")
            return
        try:
            status, doc = await self.handler(request.method, request.path, request.body)
        except Exception:  # a bug behind one request must not take the endpoint down
            log.exception("enrolment endpoint: %s %s from %s failed", request.method,
                          request.path, peer)
            status, doc = 500, {"error": "internal error (logged by the fleet service)"}
        await self._answer(writer, peer, status, doc)

    async def on_client(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        """Serve one connection; never raises (one bad client must not end the endpoint)."""
        self.stats.connections += 1
        peer = _peer(writer)
        if self.active >= self.limits.max_connections:
            self._cut(peer, "busy", f"{self.active} connections already open")
            writer.transport.abort()
            return
        self.active += 1
        try:
            await self._exchange(reader, writer, peer)
        except Exception:
            self.stats.cut["internal"] += 1
            log.exception("enrolment endpoint: connection from %s failed", peer)
        finally:
            self.active -= 1
            await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        # a TLS peer that never acknowledges the close must not hold the connection
        await asyncio.wait_for(writer.wait_closed(), 2.0)
    except (OSError, TimeoutError, ssl.SSLError):
        writer.transport.abort()


async def serve_http(host: str, port: int, handler: Handler, *,
                     tls: ssl.SSLContext | None = None, limits: HttpLimits | None = None,
                     stats: HttpStats | None = None, routes: Routes | None = None,
                     rejections: Rejections | None = None) -> asyncio.Server:
    """Start serving (HTTPS with ``tls``, else plain HTTP); the caller closes the server.

    ``routes`` (path -> methods), if given, has wrong paths and methods answered 404/405
    before a body is read; ``stats`` receives the counters; ``rejections`` logs refusals
    without flooding (its owner calls ``maybe_summarise`` now and then).
    """
    limits = limits or HttpLimits()
    endpoint = Endpoint(handler, tls, limits, stats if stats is not None else HttpStats(),
                        routes, rejections)
    # The stream limit bounds the head: readuntil refuses a longer one without buffering it.
    return await asyncio.start_server(endpoint.on_client, host, port, limit=limits.max_head)

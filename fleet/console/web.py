"""What every console handler shares: the context, sessions, CSRF, bounded intake, rendering.

Every request is a total intake: a body is read only up to its limit, a form or query is
parsed under explicit counts and lengths, and anything else becomes a counted rejection (400,
403, 413 or 415) naming what was wrong; none changes state.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from edge_agent.fleet.console.accounts import Accounts, Session
from edge_agent.fleet.console.evaluator import Evaluator
from edge_agent.fleet.console.readings import ReadingsDb
from edge_agent.fleet.console.sender import Sender
from edge_agent.fleet.registry import Registry
from edge_agent.protocol.clock import Clock
from edge_agent.protocol.rejections import Rejections

log = logging.getLogger(__name__)
COOKIE = "edge_console"
LOGIN_COOKIE = "edge_console_login"
MAX_FORM = 16 * 1024
MAX_FIELDS = 16
MAX_FIELD = 1024
MAX_QUERY = 2048
MAX_BUNDLE = 2 * 1024 * 1024
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def when(ms: object) -> str:
    """A UTC time from integer ms, or '-'."""
    if type(ms) is not int or ms <= 0:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def num(value: object) -> str:
    """A reading's value for a table: floats to 6 significant digits, the rest as they are."""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


TEMPLATES.env.filters["when"] = when
TEMPLATES.env.filters["num"] = num


@dataclass
class Console:
    """One console instance's connections and counters (all state lives in the databases)."""

    registry: Registry
    accounts: Accounts
    readings: ReadingsDb
    evaluator: Evaluator
    clock: Clock
    secure: bool = False   # served over HTTPS: cookies get Secure
    sender: Sender | None = None  # with --operator-key: the Commands page can send
    rejections: Rejections = field(
        default_factory=lambda: Rejections("console", logging.getLogger("edge_agent.console")))

    def now_ms(self) -> int:
        """Wall time in integer ms."""
        return int(self.clock.now() * 1000)


class Refused(Exception):
    """A request the console refuses: status, counter key, reason."""

    def __init__(self, status: int, key: str, reason: str) -> None:
        self.status, self.key, self.reason = status, key, reason
        super().__init__(f"{status} {reason}")


def console_of(request: Request) -> Console:
    """The Console the app was built with."""
    c: Console = request.app.state.console
    return c


async def db(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking database call off the event loop."""
    return await run_in_threadpool(fn, *args)


def query(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query string's known fields (each once, bounded); Refused otherwise."""
    raw = request.url.query
    if len(raw) > MAX_QUERY:
        raise Refused(400, "query-too-long", f"query string over {MAX_QUERY} bytes")
    return _fields(raw, allowed, "query")


def _fields(raw: str, allowed: tuple[str, ...], what: str) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(raw, keep_blank_values=True, strict_parsing=False,
                                       max_num_fields=MAX_FIELDS, errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(400, f"bad-{what}", f"{what} does not parse: {str(exc)[:100]}") from None
    out: dict[str, str] = {}
    for key, value in pairs:
        if key not in allowed:
            raise Refused(400, f"unknown-{what}-field", f"{what} field {key[:40]!r} is not "
                          f"one of {', '.join(allowed)}")
        if key in out:
            raise Refused(400, f"repeated-{what}-field", f"{what} field {key!r} given twice")
        if len(value) > MAX_FIELD or any(ord(ch) < 32 and ch not in "\r\n\t" for ch in value):
            raise Refused(400, f"bad-{what}-value", f"{what} field {key!r}: over {MAX_FIELD} "
                          "characters or control characters")
        out[key] = value
    return out


async def body(request: Request, limit: int) -> bytes:
    """The request body, read only up to ``limit`` bytes; Refused beyond."""
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit() or len(declared) > 10:
        raise Refused(411, "no-length", "a Content-Length is required")
    if int(declared) > limit:
        raise Refused(413, "too-large", f"body of {declared} bytes; the limit is {limit}")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise Refused(413, "too-large", f"body over {limit} bytes")
    return bytes(data)


async def form(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """A urlencoded form's known fields under the limits; Refused otherwise."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise Refused(415, "not-form", "Content-Type must be application/x-www-form-urlencoded")
    raw = await body(request, MAX_FORM)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "bad-form", "form is not UTF-8") from None
    return _fields(text, allowed, "form")


async def session_of(request: Request) -> Session | None:
    """The signed-in user, or None."""
    c = console_of(request)
    s: Session | None = await db(c.accounts.session, request.cookies.get(COOKIE), c.now_ms())
    return s


def check_csrf(request: Request, s: Session, fields: dict[str, str] | None) -> None:
    """Refuse a state-changing request without this session's CSRF token."""
    token = request.headers.get("x-csrf-token") or (fields or {}).get("csrf")
    if not console_of(request).accounts.csrf_ok(s.sid, token):
        raise Refused(403, "csrf", "missing or wrong CSRF token: reload the page")


def render(request: Request, name: str, s: Session | None, status: int = 200,
           **ctx: Any) -> HTMLResponse:
    """A page from its template, with the session and the nav."""
    ctx.update(session=s, csrf=s.csrf if s else "", page=name.removesuffix(".html"))
    response: HTMLResponse = TEMPLATES.TemplateResponse(request, name, ctx, status_code=status)
    return response


Handler = Callable[[Request, Session], Awaitable[Response]]


def signed_in(fn: Handler, *, operator: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler: a session is required (else to /login), an operator role if asked, and
    a state-changing method's CSRF token is checked by the handler through ``check_csrf``."""

    async def handler(request: Request) -> Response:
        c = console_of(request)
        try:
            s = await session_of(request)
            if s is None:
                if request.method != "GET" or request.url.path.startswith(("/api/", "/events")):
                    raise Refused(401, "no-session", "sign in first")
                return RedirectResponse("/login", status_code=303)
            if operator and not s.operator:
                raise Refused(403, "not-operator", f"{s.user} is a viewer: only operators may "
                              "do this")
            return await fn(request, s)
        except Refused as r:
            c.rejections.reject(r.key, f"{request.method} {request.url.path[:100]}: {r.reason}")
            return PlainTextResponse(f"{r.status}: {r.reason}\n", status_code=r.status)

    return handler


def started() -> float:
    """A monotonic start time for a log line's duration."""
    return time.monotonic()

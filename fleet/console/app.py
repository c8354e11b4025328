"""The console's Starlette application: routes, static files, security headers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge_agent.fleet.console import cmdpage, pages, posts
from edge_agent.fleet.console.events import events
from edge_agent.fleet.console.web import Console, console_of, signed_in

# Scripts and styles only from the console itself (no inline code, no CDN); no framing.
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY")]


class SecurityHeaders:
    """Adds the security headers to every response (and HSTS under HTTPS)."""

    def __init__(self, app: ASGIApp, secure: bool = False) -> None:
        self.app = app
        self.extra = HEADERS + ([(b"strict-transport-security", b"max-age=31536000")]
                                if secure else [])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + self.extra
            await send(message)

        await self.app(scope, receive, wrapped)


async def healthz(request: Request) -> Response:
    """For a load balancer: this instance answers and reaches its database; counters."""
    c = console_of(request)
    return JSONResponse({"ok": True, "rejected": dict(sorted(c.rejections.counts.items())),
                         "evaluator": {"cycles": c.evaluator.cycles,
                                       "errors": c.evaluator.errors,
                                       "last_error": c.evaluator.last_error},
                         "streams": request.app.state.streams})


async def favicon(request: Request) -> Response:
    """Browsers ask for one on every page: no icon, and no rejection counted for it."""
    return Response(status_code=204)


async def root(request: Request) -> Response:
    """The console starts at the fleet."""
    return RedirectResponse("/fleet", status_code=303)


def build_app(console: Console, stop: asyncio.Event | None = None) -> Starlette:
    """The ASGI app over a Console."""
    op: dict[str, Any] = {"operator": True}
    routes = [
        Route("/", root),
        Route("/healthz", healthz),
        Route("/favicon.ico", favicon),
        Route("/login", posts.login_page, methods=["GET"]),
        Route("/login", posts.login, methods=["POST"]),
        Route("/logout", signed_in(posts.logout), methods=["POST"]),
        Route("/fleet", signed_in(pages.fleet)),
        Route("/gateways/{gw}", signed_in(pages.gateway)),
        Route("/rollouts", signed_in(pages.rollouts)),
        Route("/rollouts/upload", signed_in(posts.rollout_upload, **op), methods=["POST"]),
        Route("/rollouts/{rid}/{verb}", signed_in(posts.rollout_command, **op),
              methods=["POST"]),
        Route("/readings", signed_in(pages.readings)),
        Route("/alarms", signed_in(pages.alarms)),
        Route("/alarms/{aid}/ack", signed_in(posts.alarm_ack, **op), methods=["POST"]),
        Route("/commands", signed_in(cmdpage.commands), methods=["GET"]),
        Route("/commands", signed_in(cmdpage.command_send, **op), methods=["POST"]),
        Route("/audit", signed_in(pages.audit)),
        Route("/events", signed_in(events)),
        Mount("/static", StaticFiles(directory=str(Path(__file__).parent / "static")),
              name="static"),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        console.rejections.reject("no-path", f"{request.method} {request.url.path[:100]}")
        return PlainTextResponse("404: no such page\n", status_code=404)

    async def not_allowed(request: Request, exc: Exception) -> Response:
        console.rejections.reject("wrong-method", f"{request.method} {request.url.path[:100]}")
        return PlainTextResponse("405: method not allowed\n", status_code=405)

    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders,
                                                          secure=console.secure)],
                    exception_handlers={404: not_found, 405: not_allowed})
    app.state.console = console
    app.state.streams = 0
    app.state.stop = stop or asyncio.Event()
    return app

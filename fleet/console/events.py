"""Server-sent events: the rollouts' wave counts, the open alarms and (on the Commands page)
the commands' answers, pushed when they change.

Each stream polls the database (every instance can serve any client: nothing is kept between
requests) once a second and sends an event only when its JSON changed, plus a comment line
every 15 s so proxies keep the connection. A stream ends when the client goes or the console
stops; at most MAX_STREAMS are open per instance.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from edge_agent.fleet.console import cmdpage
from edge_agent.fleet.console.accounts import Session
from edge_agent.fleet.console.rollouts import all_views
from edge_agent.fleet.console.web import Console, Refused, console_of, db, query
from edge_agent.fleet.rollout_driver import RolloutStore

POLL_S = 1.0
KEEPALIVE_S = 15.0
MAX_STREAMS = 200


def _snapshot(c: Console, commands: bool) -> dict[str, Any]:
    alarms = c.registry.fetchall(
        "SELECT id, source, kind, acked_ms FROM console_alarms WHERE cleared_ms IS NULL "
        "ORDER BY id")
    snap: dict[str, Any] = {"rollouts": all_views(RolloutStore(c.registry)),
                            "alarms": [[int(i), str(s), str(k), a is not None]
                                       for i, s, k, a in alarms]}
    if commands:  # only the Commands page asks for its answers (?commands=1)
        snap["commands"] = cmdpage.snapshot(c.registry)
    return snap


async def _stream(request: Request, c: Console, stop: asyncio.Event,
                  commands: bool) -> AsyncIterator[str]:
    sent: dict[str, str] = {}
    quiet = 0.0
    request.app.state.streams += 1  # counted here, where the finally below is sure to run
    try:
        yield "retry: 2000\n\n"
        while not stop.is_set() and not await request.is_disconnected():
            snap = await db(_snapshot, c, commands)
            for name, doc in snap.items():
                text = json.dumps(doc, sort_keys=True)
                if sent.get(name) != text:
                    sent[name] = text
                    quiet = 0.0
                    yield f"event: {name}\ndata: {text}\n\n"
            if quiet >= KEEPALIVE_S:
                quiet = 0.0
                yield ": keep-alive\n\n"
            try:
                await asyncio.wait_for(stop.wait(), POLL_S)
            except TimeoutError:
                quiet += POLL_S
    finally:
        request.app.state.streams -= 1


async def events(request: Request, s: Session) -> Response:
    """The event stream of a signed-in user."""
    c = console_of(request)
    f = query(request, ("commands",))
    if request.app.state.streams >= MAX_STREAMS:
        raise Refused(503, "too-many-streams", f"{MAX_STREAMS} event streams are open")
    stream = _stream(request, c, request.app.state.stop, bool(f.get("commands")))
    return StreamingResponse(stream,
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

"""The console's state-changing requests (POST): sign in and out, rollout pause, resume and
abort, a rollout from an uploaded signed bundle, acknowledging an alarm. Each checks the CSRF
token and, but for signing in and out, the operator role; each operator action is audited."""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from edge_agent.fleet.console.accounts import Session
from edge_agent.fleet.console.rollouts import start_from_bundle
from edge_agent.fleet.console.web import (
    COOKIE,
    LOGIN_COOKIE,
    MAX_BUNDLE,
    Refused,
    body,
    check_csrf,
    console_of,
    db,
    form,
    query,
    render,
)
from edge_agent.fleet.rollout_driver import COMMANDS, RolloutStore
from edge_agent.protocol.errors import ConfigError, VerificationError


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict",
                        secure=console_of(request).secure, path="/")


async def login_page(request: Request) -> Response:
    """The sign-in form, with a CSRF token bound to a fresh nonce cookie."""
    c = console_of(request)
    try:
        query(request, ())
    except Refused as r:
        c.rejections.reject(r.key, f"GET /login: {r.reason}")
        return PlainTextResponse(f"{r.status}: {r.reason}\n", status_code=r.status)
    nonce = secrets.token_hex(16)
    response = render(request, "login.html", None, login_csrf=c.accounts.csrf_for(nonce),
                      message="")
    _cookie(response, request, LOGIN_COOKIE, nonce, 3600)
    return response


async def login(request: Request) -> Response:
    """Check the form's CSRF token, the rate limit and the password; set the session cookie."""
    c = console_of(request)
    try:
        f = await form(request, ("user", "password", "csrf"))
        nonce = request.cookies.get(LOGIN_COOKIE, "")[:64]
        if not nonce or not c.accounts.csrf_ok(nonce, f.get("csrf")):
            raise Refused(403, "csrf", "missing or wrong CSRF token: reload the sign-in page")
        address = request.client.host if request.client else "?"
        cookie, message = await db(c.accounts.login, f.get("user", ""), f.get("password", ""),
                                   address, c.now_ms())
    except Refused as r:
        c.rejections.reject(r.key, f"POST /login: {r.reason}")
        return PlainTextResponse(f"{r.status}: {r.reason}\n", status_code=r.status)
    if not cookie:
        c.rejections.reject("login-failed", f"POST /login from {address}: {message}")
        response: Response = render(request, "login.html", None, status=401,
                                    login_csrf=c.accounts.csrf_for(nonce), message=message)
        return response
    response = RedirectResponse("/fleet", status_code=303)
    _cookie(response, request, COOKIE, cookie, 12 * 3600)
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


async def logout(request: Request, s: Session) -> Response:
    """Forget the session cookie."""
    check_csrf(request, s, await form(request, ("csrf",)))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


async def rollout_command(request: Request, s: Session) -> Response:
    """Queue pause, resume or abort for the rollout's lease holder (the fleet service)."""
    c = console_of(request)
    f = await form(request, ("csrf", "reason"))
    check_csrf(request, s, f)
    rid, verb = request.path_params["rid"], request.path_params["verb"]
    if verb not in COMMANDS or len(rid) > 64:
        raise Refused(404, "no-command", f"no rollout command {verb[:20]!r}")
    reason = f"{s.user}: {f.get('reason') or 'from the console'}"[:200]
    try:
        await db(RolloutStore(c.registry).command, rid, verb, reason)
    except KeyError:
        raise Refused(404, "no-rollout", f"no rollout {rid[:64]!r}") from None
    await db(c.accounts.audit, s.user, f"rollout {verb}", rid, reason, c.now_ms())
    return RedirectResponse("/rollouts", status_code=303)


async def rollout_upload(request: Request, s: Session) -> Response:
    """Start a config rollout from a signed bundle sent as the raw body (the page's script
    reads the chosen file); the wave plan comes in the query string."""
    c = console_of(request)
    check_csrf(request, s, None)
    f = query(request, ("waves", "deadline_s", "abort_above", "abort_min"))
    if request.headers.get("content-type", "").split(";")[0] != "application/octet-stream":
        raise Refused(415, "not-bundle", "send the bundle as application/octet-stream")
    blob = await body(request, MAX_BUNDLE)
    try:
        deadline_s = float(f.get("deadline_s") or 600)
        abort_above = float(f.get("abort_above") or 10)
        abort_min = int(f.get("abort_min") or 3)
        if not (1 <= deadline_s <= 86400 and 0 <= abort_above <= 100 and 1 <= abort_min <= 10**6):
            raise ValueError("out of range")
    except ValueError:
        raise Refused(400, "bad-plan", "deadline_s 1..86400, abort_above 0..100, abort_min "
                                       "1..1000000") from None
    try:
        state = await db(lambda: start_from_bundle(
            c.registry, blob, waves=f.get("waves") or "1,10,50,100",
            abort_above_pct=abort_above, abort_min_count=abort_min,
            wave_deadline_s=deadline_s, now_ms=c.now_ms()))
    except (ConfigError, VerificationError) as exc:
        raise Refused(400, "bundle-refused", f"bundle refused: {exc}") from None
    plan = state["plan"]
    await db(c.accounts.audit, s.user, "rollout start", plan["id"],
             f"config v{plan['version']} to {len(plan['gateways'])} gateways, bundle "
             f"{plan['bundle_id'][:12]}", c.now_ms())
    return PlainTextResponse(f"rollout {plan['id']} started: config v{plan['version']} to "
                             f"{len(plan['gateways'])} gateways\n")


async def alarm_ack(request: Request, s: Session) -> Response:
    """Acknowledge an alarm (it stays open until its condition clears)."""
    c = console_of(request)
    f = await form(request, ("csrf",))
    check_csrf(request, s, f)
    raw = request.path_params["aid"]
    if not raw.isdigit() or len(raw) > 18:
        raise Refused(400, "bad-alarm", "alarm id is a number")
    changed = await db(c.registry.execute, "UPDATE console_alarms SET acked_ms = ?, acked_by = ? "
                       "WHERE id = ? AND acked_ms IS NULL", (c.now_ms(), s.user, int(raw)))
    if changed:
        await db(c.accounts.audit, s.user, "alarm ack", raw, "", c.now_ms())
    return RedirectResponse("/alarms", status_code=303)

"""The Commands page: the commands sent (by the console or ``edge-fleet cmd send``) with each
gateway's answers as the fleet service stored them, and, for operators of a console holding an
operator key, a form that sends one through the same signed path as ``cmd send``.

The page reads only the registry (``commands``, ``command_results``, the audit log for who
sent what), so any console instance serves it; the answers arrive there through the fleet
service's intake, not through this process.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import aiomqtt
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from edge_agent.fleet.cmdcli import FINAL
from edge_agent.fleet.console.accounts import Session
from edge_agent.fleet.console.sender import SendOptions
from edge_agent.fleet.console.web import Console, Refused, check_csrf, console_of, db, form, query
from edge_agent.fleet.console.web import render as render_page
from edge_agent.fleet.registry import Registry
from edge_agent.protocol.errors import CommandError, ConfigError

ACTIONS = ("dim", "switch", "override-clear", "plan", "flash")
FIELDS = ("csrf", "action", "value", "lamps", "device", "for", "target")
SHOWN = 50       # newest commands on the page
MAX_WRITES = 20  # read-backs shown per answer (a group command may write 256 lamps)
MAX_ROWS = 50    # gateways shown per command (refused and failed first, done last)
RANK = {"refused": 0, "failed": 0, "sent": 1, "accepted": 1, "done": 2}
AUDIT_ACTION = "command send"


def options_from_form(f: dict[str, str]) -> SendOptions:
    """The command a (bounded, already parsed) form describes; CommandError naming the field
    that is wrong. The checks of the values themselves are ``cmd send``'s (cmdcli)."""
    action = f.get("action", "")
    if action not in ACTIONS:
        raise CommandError(f"action {action[:20]!r}: expected one of {', '.join(ACTIONS)}")
    kind, _, name = f.get("target", "").partition(":")
    if kind not in ("gw", "site", "tag") or not name:
        raise CommandError("target: choose a gateway, a site or a tag")
    opts = SendOptions(action=action, value=f.get("value", "").strip() or None,
                       lamps=f.get("lamps", "").strip() or None,
                       device=f.get("device", "").strip() or None,
                       for_=f.get("for", "").strip() or None)
    {"gw": opts.gateway, "site": opts.site, "tag": opts.tag}[kind].append(name)
    return opts


def _answer(doc: dict[str, Any] | None, reason: str) -> dict[str, Any]:
    doc = doc or {}
    writes = [w for w in (doc.get("writes") or [])[:MAX_WRITES] if isinstance(w, dict)]
    return {"reason": reason, "replayed": doc.get("replayed") is True,
            "exception_code": doc.get("exception_code"),
            "writes": [{"target": f"{w.get('device')}.{w.get('point')}",
                        "value": w.get("value"), "ok": w.get("ok") is True,
                        "readback": w.get("readback"), "error": w.get("error"),
                        "exception_code": w.get("exception_code")} for w in writes],
            "more_writes": max(0, len(doc.get("writes") or []) - MAX_WRITES)}


def _signed(envelope: str) -> dict[str, Any]:
    try:  # the registry's own row, written by prepare(); a damaged one shows as such
        signed = json.loads(envelope)["signed"]
        return signed if isinstance(signed, dict) else {}
    except (ValueError, KeyError, TypeError):
        return {}


def command_views(registry: Registry, limit: int = SHOWN) -> list[dict[str, Any]]:
    """The newest commands, each with its targets, who sent it, and per gateway the outcome
    (done, refused, failed; else accepted; else no answer yet) with its reason and writes."""
    rows = registry.fetchall("SELECT id, action, envelope, targets, created_ms FROM commands "
                             "ORDER BY created_ms DESC, id DESC LIMIT ?", (limit,))
    if not rows:
        return []
    ids = [str(r[0]) for r in rows]
    marks = ", ".join("?" for _ in ids)
    answers: dict[tuple[str, str], dict[str, tuple[str, int, dict[str, Any] | None]]] = {}
    for cid, gw, status, reason, ms, text in registry.fetchall(
            f"SELECT id, gateway, status, reason, received_ms, doc FROM command_results "
            f"WHERE id IN ({marks})", tuple(ids)):
        try:
            doc = json.loads(text)
        except (TypeError, ValueError):
            doc = None
        answers.setdefault((str(cid), str(gw)), {})[str(status)] = (
            str(reason or ""), int(ms), doc if isinstance(doc, dict) else None)
    senders = {str(t): str(a) for t, a in registry.fetchall(
        f"SELECT target, actor FROM console_audit WHERE action = ? AND target IN ({marks})",
        (AUDIT_ACTION, *ids))}
    out = []
    for cid, action, envelope, targets, created in rows:
        signed = _signed(str(envelope))
        try:
            gateways = [str(g) for g in json.loads(targets)]
        except (TypeError, ValueError):
            gateways = []
        per_gw = []
        for gw in gateways:
            got = answers.get((str(cid), gw), {})
            status = next((s for s in FINAL if s in got), "accepted" if "accepted" in got
                          else "sent")
            reason, ms, doc = got.get(status, ("no answer yet", 0, None))
            per_gw.append({"gateway": gw, "status": status, "ms": ms, **_answer(doc, reason)})
        counts = {s: sum(1 for g in per_gw if g["status"] == s)
                  for s in ("done", "refused", "failed", "accepted", "sent")}
        # a site of a thousand gateways: the counts are of all, the rows the ones to look at
        per_gw.sort(key=lambda g: (RANK[g["status"]], g["gateway"]))
        out.append({"id": str(cid), "action": str(action), "created_ms": int(created),
                    "args": signed.get("args") or {}, "targets": signed.get("targets") or {},
                    "expires": signed.get("expires"), "by": senders.get(str(cid), "edge-fleet "
                                                                         "cmd send"),
                    "gateways": per_gw[:MAX_ROWS], "hidden": max(0, len(per_gw) - MAX_ROWS),
                    "counts": counts})
    return out


def snapshot(registry: Registry) -> list[list[Any]]:
    """What the page's event stream watches: each shown command's answers, and how many
    commands there are (one sent by ``cmd send`` or another instance appears too)."""
    row = registry.fetchone("SELECT COUNT(*) FROM commands")
    return [[str(c), str(g), str(s)] for c, g, s in registry.fetchall(
        "SELECT r.id, r.gateway, r.status FROM command_results r JOIN (SELECT id FROM commands "
        "ORDER BY created_ms DESC, id DESC LIMIT ?) c ON c.id = r.id "
        "ORDER BY r.id, r.gateway, r.status", (SHOWN,))] + [
        ["commands", str(row[0] if row else 0), ""]]


def _targets(registry: Registry) -> list[tuple[str, str]]:
    """(value, label) of every target the form offers: gateways, sites, tags."""
    gws = [(str(g), str(s)) for g, s in registry.fetchall(
        "SELECT id, site FROM gateways ORDER BY id")]
    tags = sorted({str(t) for (t,) in registry.fetchall("SELECT DISTINCT tag FROM gateway_tags")})
    return ([(f"gw:{g}", f"gateway {g} ({s})") for g, s in gws]
            + [(f"site:{s}", f"site {s}") for s in sorted({s for _, s in gws})]
            + [(f"tag:{t}", f"tag {t}") for t in tags])


def _page(c: Console, partial: bool) -> dict[str, Any]:
    ctx: dict[str, Any] = {"commands": command_views(c.registry)}
    if not partial:
        ctx.update(targets=_targets(c.registry), sender=c.sender,
                   key_problem=c.sender.key_problem(c.registry) if c.sender else "")
    return ctx


def render(request: Request, s: Session, status: int = 200, **extra: Any) -> Response:
    """The whole page (the form keeps what was typed when a send was refused)."""
    ctx = {"message": "", "error": "", "typed": {}, **extra}
    return render_page(request, "commands.html", s, status=status, **ctx)


async def commands(request: Request, s: Session) -> Response:
    """The commands and their answers; ``?partial=1`` is the list alone (the script's refresh
    when the event stream says an answer came in)."""
    c = console_of(request)
    f = query(request, ("partial", "sent", "target"))
    ctx = await db(_page, c, bool(f.get("partial")))
    if f.get("partial"):
        return render_page(request, "commands_list.html", s, **ctx)
    sent = f.get("sent", "")[:64]
    return render(request, s, message=f"command {sent} signed and published" if sent else "",
                  typed={"target": f.get("target", "")}, **ctx)  # the next one: same target


async def command_send(request: Request, s: Session) -> Response:
    """Sign, store and publish one command (operators; CSRF; audited); back to the page.

    A command ``cmd send`` would refuse is refused here with its reason (400, counted,
    nothing stored or published); a broker that cannot be reached is a 502 with nothing
    stored."""
    c = console_of(request)
    f = await form(request, FIELDS)
    check_csrf(request, s, f)
    if c.sender is None:
        raise Refused(503, "no-operator-key", "this console has no --operator-key: it cannot "
                      "sign commands (docs/console.md)")
    typed = {k: v for k, v in f.items() if k != "csrf"}
    try:
        opts = options_from_form(f)
        cid, gateways = await c.sender.send(c.registry, opts, int(c.now_ms() / 1000))
    except (CommandError, ConfigError) as exc:  # what cmd send would refuse, and why
        c.rejections.reject("bad-command", f"POST /commands by {s.user}: {exc}")
        return render(request, s, status=400, error=f"not sent: {exc}", typed=typed,
                      **await db(_page, c, False))
    except (OSError, TimeoutError, aiomqtt.MqttError) as exc:
        c.rejections.reject("broker", f"POST /commands by {s.user}: {exc}")
        return render(request, s, status=502, error=f"not sent: the broker {c.sender.mqtt.host}"
                      f" did not take it ({exc or type(exc).__name__})", typed=typed,
                      **await db(_page, c, False))
    detail = " ".join(f"{k}={v}" for k, v in typed.items() if v)
    await db(c.accounts.audit, s.user, AUDIT_ACTION, cid,
             f"{detail} -> {len(gateways)} gateways: {', '.join(gateways)}", c.now_ms())
    return RedirectResponse(f"/commands?{urlencode({'sent': cid, 'target': f['target']})}",
                            status_code=303)

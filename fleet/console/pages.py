"""The console's pages (GET): fleet, a gateway, rollouts, readings, alarms, audit."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from edge_agent.fleet.console import views
from edge_agent.fleet.console.accounts import Session
from edge_agent.fleet.console.evaluator import light_gateways
from edge_agent.fleet.console.rollouts import all_views
from edge_agent.fleet.console.web import Refused, console_of, db, query, render
from edge_agent.fleet.ingest.schema import value_from
from edge_agent.fleet.rollout_driver import RolloutStore
from edge_agent.protocol.ids import check_gateway_id


async def fleet(request: Request, s: Session) -> Response:
    """Every gateway, filtered by site, tag, state and a search."""
    c = console_of(request)
    f = query(request, ("site", "tag", "state", "q"))
    rows = views.fleet_rows(await db(light_gateways, c.registry))
    shown = views.filtered(rows, site=f.get("site", ""), tag=f.get("tag", ""),
                           state=f.get("state", ""), q=f.get("q", ""))
    return render(request, "fleet.html", s, rows=shown, total=len(rows), f=f,
                  sites=sorted({r.site for r in rows}),
                  tags=sorted({t for r in rows for t in r.tags}),
                  online=sum(r.online for r in rows), overview=views.site_overview(rows))


def _gateway_detail(c: Any, gw: str) -> dict[str, Any] | None:
    rows = light_gateways(c.registry, gw)
    if not rows:
        return None
    history = c.registry.fetchall(
        "SELECT ts_ms, online, devices_offline, spool_batches, spool_dropped, rss_bytes FROM "
        "console_health WHERE gateway = ? ORDER BY ts_ms DESC LIMIT 50", (gw,))
    latest = c.registry.fetchall(
        "SELECT device, point, ts_ms, quality, kind, value_int, value_real, value_text FROM "
        "console_latest WHERE gateway = ? ORDER BY device, point", (gw,))
    devices: dict[str, list[tuple[str, int, str, object]]] = {}
    for d, p, t, q, k, vi, vr, vt in latest:
        devices.setdefault(str(d), []).append((str(p), int(t), str(q), value_from(k, vi, vr, vt)))
    health = rows[0].health or {}
    status = {str(k): v.get("status", "?") for k, v in (health.get("devices") or {}).items()
              if isinstance(v, dict)}
    for name in status:
        devices.setdefault(name, [])
    return {"g": views.fleet_rows(rows)[0], "history": history, "devices": devices,
            "dev_status": status}


async def gateway(request: Request, s: Session) -> Response:
    """One gateway: health history, devices and their last readings."""
    c = console_of(request)
    query(request, ())
    try:
        gw = check_gateway_id(request.path_params["gw"])
    except ValueError as exc:
        raise Refused(400, "bad-gateway", str(exc)) from None
    detail = await db(_gateway_detail, c, gw)
    if detail is None:
        raise Refused(404, "no-gateway", f"no gateway {gw!r}")
    return render(request, "gateway.html", s, **detail)


async def rollouts(request: Request, s: Session) -> Response:
    """Every recent rollout with its waves; buttons for operators."""
    c = console_of(request)
    query(request, ())
    items = await db(all_views, RolloutStore(c.registry))
    return render(request, "rollouts.html", s, rollouts=items)


def _series_page(c: Any, f: dict[str, str]) -> dict[str, Any]:
    points = [(str(g), str(d), str(p)) for g, d, p in c.registry.fetchall(
        "SELECT gateway, device, point FROM console_latest ORDER BY gateway, device, point")]
    gw, dev, pt = f.get("gw", ""), f.get("dev", ""), f.get("pt", "")
    if (gw, dev, pt) not in points and points:
        gw, dev, pt = next((x for x in points if x[0] == gw and x[1] == dev), points[0])
    name, span_s = views.pick_range(f.get("range", "1h"))
    now_ms = c.now_ms()
    end_ms = int(f["end"]) if f.get("end", "").isdigit() and len(f["end"]) <= 15 else now_ms
    start_ms = int(f["start"]) if f.get("start", "").isdigit() and len(f["start"]) <= 15 \
        else end_ms - span_s * 1000
    if not 0 <= start_ms < end_ms:
        start_ms = end_ms - span_s * 1000
    buckets = c.readings.series(gw, dev, pt, start_ms, end_ms, views.BUCKETS) if points else []
    latest = [(str(p), int(t), str(q), value_from(k, vi, vr, vt))
              for p, t, q, k, vi, vr, vt in c.registry.fetchall(
                  "SELECT point, ts_ms, quality, kind, value_int, value_real, value_text FROM "
                  "console_latest WHERE gateway = ? AND device = ? ORDER BY point", (gw, dev))]
    return {"points": points, "gw": gw, "dev": dev, "pt": pt, "range": name,
            "ranges": list(views.RANGES), "start_ms": start_ms, "end_ms": end_ms,
            "chart": views.chart(buckets, start_ms, end_ms), "latest": latest,
            "devices": sorted({(g, d) for g, d, _ in points})}


async def readings(request: Request, s: Session) -> Response:
    """A point's chart over a range preset (or a zoomed start..end) and its device's latest."""
    c = console_of(request)
    f = query(request, ("gw", "dev", "pt", "range", "start", "end"))
    return render(request, "readings.html", s, **await db(_series_page, c, f))


def _alarms(c: Any, show_all: bool) -> dict[str, Any]:
    open_ = c.registry.fetchall(
        "SELECT id, source, kind, detail, raised_ms, acked_ms, acked_by FROM console_alarms "
        "WHERE cleared_ms IS NULL ORDER BY raised_ms DESC, id DESC LIMIT 500")
    history = c.registry.fetchall(
        "SELECT id, source, kind, detail, raised_ms, cleared_ms, acked_ms, acked_by FROM "
        "console_alarms WHERE cleared_ms IS NOT NULL ORDER BY cleared_ms DESC, id DESC LIMIT ?",
        (500 if show_all else 50,))
    return {"open": open_, "history": history, "evaluator": c.evaluator}


async def alarms(request: Request, s: Session) -> Response:
    """Open alarms (acknowledge buttons for operators) and the cleared ones."""
    c = console_of(request)
    f = query(request, ("show", "partial"))
    ctx = await db(_alarms, c, f.get("show") == "all")
    name = "alarms_table.html" if f.get("partial") else "alarms.html"
    return render(request, name, s, **ctx)


async def audit(request: Request, s: Session) -> Response:
    """The newest operator actions."""
    c = console_of(request)
    query(request, ())
    return render(request, "audit.html", s, entries=await db(c.accounts.audit_log, 200),
                  users=await db(c.accounts.users))

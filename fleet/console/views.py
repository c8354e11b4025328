"""Pure helpers of the pages: fleet rows and their filters, range presets, the chart's SVG
geometry. Values in, values out; no request, no database."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edge_agent.fleet.console.evaluator import health_numbers
from edge_agent.fleet.console.readings import Bucket
from edge_agent.fleet.registry import GatewayRow

RANGES: dict[str, int] = {"1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400,
                          "30d": 30 * 86400}
CHART_W, CHART_H, PAD = 900, 260, 40
BUCKETS = 450  # two screen pixels per bucket at the chart's width


@dataclass(frozen=True, slots=True)
class FleetRow:
    """One line of the fleet table."""

    id: str
    site: str
    tags: tuple[str, ...]
    online: bool
    software: str
    config_version: int
    last_seen_ms: int | None
    devices_offline: int
    spool_backlog: int
    spool_dropped: int
    result: str
    error: str | None


def fleet_rows(gateways: Iterable[GatewayRow]) -> list[FleetRow]:
    """The fleet table's rows from the registry's gateways."""
    out = []
    for g in gateways:
        down, backlog, dropped, _ = health_numbers(g)
        out.append(FleetRow(g.id, g.site, g.tags, g.online, software_text(g), g.config_version,
                            g.last_seen_ms, len(down), backlog, dropped,
                            f"{g.result or '-'}" + (f" v{g.result_version}"
                                                    if g.result_version else ""),
                            g.health_error))
    return out


def software_text(g: GatewayRow) -> str:
    """The version a gateway runs and, while an update is under way or failed, its last
    software report ('0.1.0 (downloading 0.2.0 50%)')."""
    sw, version = g.software, (g.health or {}).get("version")
    running = (sw.running if sw else None) or (version if isinstance(version, str) else "-")
    if sw is None or sw.result in (None, "applied", "current"):
        return running
    return f"{running} ({sw.text()})"


def filtered(rows: Sequence[FleetRow], *, site: str = "", tag: str = "", state: str = "",
             q: str = "") -> list[FleetRow]:
    """The rows matching every given filter (the search looks in id, site and tags)."""
    needle = q.strip().lower()
    return [r for r in rows
            if (not site or r.site == site) and (not tag or tag in r.tags)
            and (not state or (state == "online") == r.online)
            and (not needle or needle in r.id.lower() or needle in r.site.lower()
                 or any(needle in t.lower() for t in r.tags))]


def site_overview(rows: Sequence[FleetRow]) -> list[tuple[str, int, int, int, int]]:
    """Per site: (site, gateways, online, devices offline, spool drops)."""
    out: dict[str, list[int]] = {}
    for r in rows:
        agg = out.setdefault(r.site, [0, 0, 0, 0])
        agg[0] += 1
        agg[1] += r.online
        agg[2] += r.devices_offline
        agg[3] += r.spool_dropped
    return [(site, a[0], a[1], a[2], a[3]) for site, a in sorted(out.items())]


def chart(buckets: Sequence[Bucket], start_ms: int, end_ms: int) -> dict[str, Any]:
    """SVG geometry for a series: the mean line, the min..max band, axis labels."""
    values = [v for b in buckets for v in (b.low, b.high) if v is not None]
    if not values:
        return {"empty": True, "w": CHART_W, "h": CHART_H}
    lo, hi = min(values), max(values)
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    span_ms = max(1, end_ms - start_ms)

    def x(t: int) -> float:
        return round(PAD + (t - start_ms) * (CHART_W - 2 * PAD) / span_ms, 1)

    def y(v: float) -> float:
        return round(CHART_H - PAD - (v - lo) * (CHART_H - 2 * PAD) / (hi - lo), 1)

    pts = [b for b in buckets if b.mean is not None]
    line = " ".join(f"{x(b.ts_ms)},{y(b.mean)}" for b in pts if b.mean is not None)
    upper = [f"{x(b.ts_ms)},{y(b.high)}" for b in pts if b.high is not None]
    lower = [f"{x(b.ts_ms)},{y(b.low)}" for b in reversed(pts) if b.low is not None]
    ticks = [(round(y(lo + (hi - lo) * i / 4), 1), f"{lo + (hi - lo) * i / 4:.4g}")
             for i in range(5)]
    # labels as precise as the span needs: seconds within an hour, days beyond two
    fmt = "%H:%M:%S" if span_ms <= 3_600_000 else "%m-%d %H:%M" if span_ms <= 172_800_000 \
        else "%Y-%m-%d"
    xticks = [(x(t), datetime.fromtimestamp(t / 1000, UTC).strftime(fmt))
              for t in (start_ms + span_ms * i // 4 for i in range(5))]
    bad = [x(b.ts_ms) for b in buckets if b.bad]
    # too few buckets for a line to show: mark each mean with a dot
    dots = [(x(b.ts_ms), y(b.mean)) for b in pts if b.mean is not None] if len(pts) < 3 else []
    return {"empty": False, "w": CHART_W, "h": CHART_H, "pad": PAD, "line": line,
            "band": " ".join(upper + lower), "yticks": ticks, "xticks": xticks, "bad": bad,
            "dots": dots, "count": sum(b.count for b in buckets), "buckets": len(buckets),
            "last": pts[-1].mean if pts else None}


def pick_range(name: str) -> tuple[str, int]:
    """A known range preset and its length in s (1 h when unknown)."""
    return (name, RANGES[name]) if name in RANGES else ("1h", RANGES["1h"])

"""The alarm evaluator's pure core: facts in, conditions out; conditions and memory in,
raise/clear decisions out. No database, no clock: the shell (``evaluator``) passes both in.

An alarm is raised when its condition has held for the alarm delay (a flicker shorter than
that raises nothing) and cleared as soon as the condition is gone; an operator's
acknowledgement only marks it seen. Point rules are a table: a point of that name, read with
good quality, whose value meets the test, is that kind of alarm on its device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

# (source, kind): source is "GATEWAY" or "GATEWAY/DEVICE"
Key = tuple[str, str]


def _truthy(v: object) -> bool:
    return v not in (None, 0, False, "", "0", 0.0)


def _falsy(v: object) -> bool:
    return v is not None and not _truthy(v)


# point name -> (alarm kind, test on its value, what the detail says)
POINT_RULES: dict[str, tuple[str, Callable[[object], bool], str]] = {
    "lamp_fault": ("lamp_fault", _truthy, "lamp fault reported"),
    "lamp_faults": ("lamp_fault", _truthy, "signal lamp faults reported"),
    "driver_fault": ("driver_fault", _truthy, "driver fault reported"),
    "sensor_fault": ("driver_fault", _truthy, "sensor fault reported"),
    "detector_faults": ("driver_fault", _truthy, "detector faults reported"),
    "leak_alarm": ("leak", _truthy, "leak alarm"),
    "door_open": ("door_open", _truthy, "cabinet door open"),
    "mains_power": ("mains_lost", _falsy, "mains power lost"),
}
KINDS = ("gateway_offline", "device_offline", "lamp_fault", "driver_fault", "leak",
         "door_open", "mains_lost", "data_gap", "spool_drops")
DEVICE_DOWN = frozenset({"offline"})  # a device status in health meaning it does not answer


@dataclass(frozen=True, slots=True)
class Latest:
    """A point's latest reading as the console keeps it."""

    gateway: str
    device: str
    point: str
    ts_ms: int
    quality: str
    value: object


@dataclass(frozen=True, slots=True)
class GatewayFacts:
    """What the registry and the ingest know of one gateway at one moment."""

    gateway: str
    seen: bool                       # ever reported (a never-seen gateway is not "offline")
    online: bool
    devices_down: tuple[str, ...] = ()   # devices its health calls offline
    open_gaps: int = 0
    recent_drops: int = 0            # spool batches dropped within the drop window


@dataclass
class Decision:
    """What the shell does: raise and clear alarms, remember and forget pending conditions."""

    raise_: list[tuple[Key, str]] = field(default_factory=list)
    clear: list[Key] = field(default_factory=list)
    pend: list[Key] = field(default_factory=list)
    forget: list[Key] = field(default_factory=list)


def conditions(gateways: Iterable[GatewayFacts], latest: Iterable[Latest],
               now_ms: int, stale_ms: int) -> dict[Key, str]:
    """Every condition that holds now, with its detail text."""
    out: dict[Key, str] = {}
    online: dict[str, bool] = {}
    for g in gateways:
        online[g.gateway] = g.online
        if g.seen and not g.online:
            out[(g.gateway, "gateway_offline")] = "gateway offline (its will or its last state)"
        for dev in g.devices_down:
            out[(f"{g.gateway}/{dev}", "device_offline")] = "device offline in gateway health"
        if g.open_gaps:
            out[(g.gateway, "data_gap")] = f"{g.open_gaps} open gaps in the received batches"
        if g.recent_drops:
            out[(g.gateway, "spool_drops")] = f"{g.recent_drops} batches dropped by the spool"
    newest: dict[tuple[str, str], list[Latest]] = {}
    for r in latest:
        rows = newest.setdefault((r.gateway, r.device), [])
        if not rows or r.ts_ms > rows[0].ts_ms:
            rows[:] = [r]
        elif r.ts_ms == rows[0].ts_ms:
            rows.append(r)
        rule = POINT_RULES.get(r.point)
        if rule and r.quality == "good" and rule[1](r.value):
            out[(f"{r.gateway}/{r.device}", rule[0])] = f"{rule[2]} ({r.point}={r.value})"
    for (gw, dev), rows in newest.items():
        source = f"{gw}/{dev}"
        bad = sorted({r.quality for r in rows if r.quality == "comm_error"})
        if bad:
            out[(source, "device_offline")] = "no answer on its bus (readings comm_error)"
        elif online.get(gw, False) and now_ms - rows[0].ts_ms > stale_ms:
            out[(source, "device_offline")] = (f"no reading for {(now_ms - rows[0].ts_ms) // 1000}"
                                               " s while its gateway is online")
    return out


def decide(now: Mapping[Key, str], pending: Mapping[Key, int], open_: Iterable[Key],
           now_ms: int, delay_ms: int) -> Decision:
    """Raise what held for ``delay_ms``, clear what stopped, track what just started."""
    d = Decision()
    opened = set(open_)
    for key, detail in sorted(now.items()):
        if key in opened:
            if key in pending:
                d.forget.append(key)
            continue
        since = pending.get(key)
        if since is None and delay_ms > 0:
            d.pend.append(key)
        elif since is None or now_ms - since >= delay_ms:
            d.raise_.append((key, detail))
            if since is not None:
                d.forget.append(key)
    for key in sorted(opened - now.keys()):
        d.clear.append(key)
    for key in sorted(pending.keys() - now.keys()):
        d.forget.append(key)
    return d

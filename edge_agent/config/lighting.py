"""The [lighting] section of a site config: where the site is, lamp groups, night schedules.

The gateway switches its street lamps itself, from this section, whether or not the broker is
reachable (``edge_agent.control.lighting`` evaluates it, ``control.lighting_task`` writes it).
docs/lighting.md describes the keys; every problem names the file, key, value and expectation.
"""

from __future__ import annotations

import math
import re
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge_agent.config.model import (
    GROUP_PREFIX,
    SAFE_ID,
    SAFE_ID_TEXT,
    ZENITHS,
    DimStep,
    LightingConfig,
    LightSchedule,
)
from edge_agent.drivers.bus import DeviceConfig
from edge_agent.drivers.model import Access
from edge_agent.protocol.tomlcheck import Checker

LIGHTING_KEYS = ("latitude", "longitude", "timezone", "relay_point", "dim_point", "groups",
                 "schedules")
SCHEDULE_KEYS = ("lamps", "zenith", "dusk_offset_min", "dawn_offset_min", "steps", "dates")
STEP_KEYS = ("until", "level")
MAX_GROUPS = 256
MAX_SCHEDULES = 64
MAX_MEMBERS = 4096
MAX_STEPS = 24
MAX_DATE_RANGES = 366
MAX_OFFSET_MIN = 240.0
DAWN = "dawn"
_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


def _zone_ok(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _writable(d: DeviceConfig, point: str) -> bool:
    return any(p.name == point and p.access is Access.READ_WRITE for p in d.points)


def _lamps(devices: list[DeviceConfig], relay: str, dim: str) -> tuple[str, ...]:
    return tuple(d.name for d in devices if _writable(d, relay) and _writable(d, dim))


def _targets(chk: Checker, raw: object, path: str, lamps: tuple[str, ...],
             groups: dict[str, tuple[str, ...]], *, allow_groups: bool) -> tuple[str, ...]:
    """Lamp names (and ``group:NAME`` where allowed) resolved to lamp names, in order."""
    what = "lamp device names" + (" or group:NAME" if allow_groups else "")
    if not isinstance(raw, list) or not raw or len(raw) > MAX_MEMBERS:
        chk.problem(path, raw, f"a non-empty array of at most {MAX_MEMBERS} {what}")
        return ()
    out: list[str] = []
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(item, str):
            chk.problem(where, item, f"a string: one of the {what}")
        elif allow_groups and item.startswith(GROUP_PREFIX):
            name = item[len(GROUP_PREFIX):]
            if name not in groups:
                chk.problem(where, item, "a group defined in [lighting.groups]"
                            + (f": one of {', '.join(sorted(groups))}" if groups else
                               " (there are none)"))
            out.extend(groups.get(name, ()))
        elif item not in lamps:
            chk.problem(where, item, "a lamp: a device whose profile has the relay and dim "
                        "points, read-write" + (f" (one of {', '.join(lamps)})" if lamps
                                                else " (this site has none)"))
        else:
            out.append(item)
    return tuple(dict.fromkeys(out))


def _night_order(minute: int) -> int:
    """Minutes into the night counted from noon: 18:00 sorts before 23:00 before 05:00."""
    return (minute - 720) % 1440


def _steps(chk: Checker, raw: object, path: str) -> tuple[DimStep, ...]:
    expected = (f"an array of 1 to {MAX_STEPS} {{ until = \"HH:MM\" or \"dawn\", level = 0..100 "
                "}} tables in night order, the last until \"dawn\"")
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_STEPS:
        chk.problem(path, raw, expected)
        return (DimStep(None, 100),)
    steps: list[DimStep] = []
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(item, dict):
            chk.problem(where, item, "a table { until = \"HH:MM\" or \"dawn\", level = 0..100 }")
            continue
        chk.keys(item, where, STEP_KEYS)
        until = chk.get(item, where, "until", str, check=lambda v: v == DAWN or bool(
            _HHMM.fullmatch(v)), expected="a local time \"HH:MM\" (24 h) or \"dawn\"")
        level = chk.get(item, where, "level", int, check=lambda v: 0 <= v <= 100,
                        expected="a dim level: an integer from 0 to 100 %")
        if until is None or level is None:
            continue
        if until == DAWN:
            steps.append(DimStep(None, level))
            continue
        m = _HHMM.fullmatch(until)
        assert m is not None
        steps.append(DimStep(int(m[1]) * 60 + int(m[2]), level))
    if steps and steps[-1].until_min is not None:
        chk.note(path, "the last step must be { until = \"dawn\", ... }: the level that holds "
                 "until the lamps switch off")
    if any(s.until_min is None for s in steps[:-1]):
        chk.note(path, "only the last step may run until \"dawn\"")
    times = [_night_order(s.until_min) for s in steps if s.until_min is not None]
    if times != sorted(set(times)):
        chk.note(path, "step times must rise through the night (evening times 12:00-23:59 "
                 "first, then morning times 00:00-11:59), each once")
    return tuple(steps) or (DimStep(None, 100),)


def _dates(chk: Checker, raw: object, path: str) -> tuple[tuple[date, date], ...]:
    expected = (f"an array of at most {MAX_DATE_RANGES} dates (2026-12-24) or "
                "[first, last] date pairs")
    if not isinstance(raw, list) or len(raw) > MAX_DATE_RANGES:
        chk.problem(path, raw, expected)
        return ()
    out: list[tuple[date, date]] = []
    for i, item in enumerate(raw):
        if type(item) is date:
            out.append((item, item))
        elif (isinstance(item, list) and len(item) == 2 and all(type(x) is date for x in item)
              and item[0] <= item[1]):
            out.append((item[0], item[1]))
        else:
            chk.problem(f"{path}[{i}]", item, "a TOML date (2026-12-24, unquoted) or a pair "
                        "[first, last] of them, first <= last")
    return tuple(out)


def _zenith(chk: Checker, raw: dict[str, Any], path: str) -> float:
    value = raw.get("zenith", "official")
    if isinstance(value, str) and value in ZENITHS:
        return ZENITHS[value]
    if isinstance(value, int | float) and not isinstance(value, bool) \
            and math.isfinite(value) and 85.0 <= value <= 110.0:
        return float(value)
    chk.problem(f"{path}.zenith", value, "one of " + ", ".join(f"{k!r} ({v})" for k, v in
                                                               ZENITHS.items())
                + ", or a zenith angle in degrees from 85 to 110")
    return ZENITHS["official"]


def _schedule(chk: Checker, name: str, raw: object, lamps: tuple[str, ...],
              groups: dict[str, tuple[str, ...]]) -> LightSchedule | None:
    path = f"lighting.schedules.{name}"
    if not isinstance(raw, dict):
        chk.problem(path, raw, "a table [lighting.schedules.NAME]")
        return None
    chk.keys(raw, path, SCHEDULE_KEYS)
    if not SAFE_ID.fullmatch(name):
        chk.problem(path, name, f"a schedule name of {SAFE_ID_TEXT}")
    members = _targets(chk, raw.get("lamps"), f"{path}.lamps", lamps, groups, allow_groups=True)
    offset = f"minutes from -{MAX_OFFSET_MIN:.0f} to {MAX_OFFSET_MIN:.0f}"
    dusk = chk.get(raw, path, "dusk_offset_min", float, 0.0,
                   check=lambda v: abs(v) <= MAX_OFFSET_MIN, expected=offset)
    dawn = chk.get(raw, path, "dawn_offset_min", float, 0.0,
                   check=lambda v: abs(v) <= MAX_OFFSET_MIN, expected=offset)
    steps = _steps(chk, raw["steps"], f"{path}.steps") if "steps" in raw \
        else (DimStep(None, 100),)
    dates = _dates(chk, raw["dates"], f"{path}.dates") if "dates" in raw else ()
    return LightSchedule(name, members, _zenith(chk, raw, path), dusk, dawn, steps, dates)


def parse_lighting(chk: Checker, raw: dict[str, Any] | None,
                   devices: list[DeviceConfig]) -> LightingConfig | None:
    """The [lighting] table (None when absent); problems go to ``chk``."""
    if raw is None:
        return None
    p = "lighting"
    chk.keys(raw, p, LIGHTING_KEYS)
    lat = chk.get(raw, p, "latitude", float, check=lambda v: -90 <= v <= 90,
                  expected="the site's latitude in degrees, -90 (south) to 90 (north)")
    lon = chk.get(raw, p, "longitude", float, check=lambda v: -180 <= v <= 180,
                  expected="the site's longitude in degrees, -180 (west) to 180 (east)")
    tz = chk.get(raw, p, "timezone", str, check=_zone_ok,
                 expected="an IANA time zone name such as \"Asia/Shanghai\" (zoneinfo)")
    relay = chk.get(raw, p, "relay_point", str, "relay_on", check=bool, expected="a point name")
    dim = chk.get(raw, p, "dim_point", str, "dim_command", check=bool, expected="a point name")
    lamps = _lamps(devices, relay, dim)
    groups: dict[str, tuple[str, ...]] = {}
    graw = chk.get(raw, p, "groups", dict, {})
    if len(graw) > MAX_GROUPS:
        chk.problem(f"{p}.groups", f"{len(graw)} groups", f"at most {MAX_GROUPS} groups")
    for gname, members in list(graw.items())[:MAX_GROUPS]:
        if not SAFE_ID.fullmatch(gname):
            chk.problem(f"{p}.groups.{gname}", gname, f"a group name of {SAFE_ID_TEXT}")
        groups[gname] = _targets(chk, members, f"{p}.groups.{gname}", lamps, {},
                                 allow_groups=False)
    sraw = chk.get(raw, p, "schedules", dict, {})
    if len(sraw) > MAX_SCHEDULES:
        chk.problem(f"{p}.schedules", f"{len(sraw)} schedules", f"at most {MAX_SCHEDULES}")
    schedules = [s for name, body in list(sraw.items())[:MAX_SCHEDULES]
                 if (s := _schedule(chk, name, body, lamps, groups)) is not None]
    if lat is None or lon is None or tz is None:
        return None
    return LightingConfig(lat, lon, tz, lamps, groups, tuple(schedules), relay, dim)

"""What every lamp should be doing at an instant: the night schedules and overrides, pure.

A night belongs to the local date of its dusk: it runs from dusk (sunset at the schedule's
zenith angle, plus ``dusk_offset_min``) to the next morning's dawn (sunrise plus
``dawn_offset_min``), both from ``control.solar`` at the site's latitude and longitude. Within
it the dim steps hold in turn; a step's ``until`` is a local time of night in the site's time
zone (zoneinfo, so daylight-saving changes are followed): times from 12:00 belong to the
evening of the dusk date, times before 12:00 to the next morning, so "until 23:00" then
"until 05:00" works whatever time dusk comes. A step whose time has passed before dusk (dusk
after 23:00 in a high-latitude summer) is skipped.

Which schedule a lamp follows on a night: one whose ``dates`` cover the dusk date (a holiday)
before one without ``dates``; among equals, the first in the file. An override (a command's
"hold group:north at 40 % for 2 h", ``control.lighting_overrides``) wins over any schedule
until it ends: a lamp's own override over its groups', and among groups the latest set. A lamp
no schedule or override covers is not controlled at all.

Polar day (the sun never sets at that zenith) gives no night; polar night gives a night from
local midnight to local midnight. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from edge_agent.config.model import LightingConfig, LightSchedule
from edge_agent.control.lighting_overrides import Override
from edge_agent.control.solar import sun_times

NOON_MIN = 720


@dataclass(frozen=True, slots=True)
class LampState:
    """What one lamp should do: relay on or off, the dim level, and what decided it."""

    on: bool
    level_pct: int
    source: str   # "schedule:NAME", "override:TARGET" or "day:NAME" (a schedule, not night)


def _midnight(day: date, zone: ZoneInfo) -> float:
    return datetime.combine(day, time(0), tzinfo=zone).timestamp()


def night(cfg: LightingConfig, sched: LightSchedule, dusk_date: date,
          zone: ZoneInfo) -> tuple[float, float] | None:
    """(dusk, dawn) in Unix seconds of the night starting on ``dusk_date``, or None (no night)."""
    return _night(cfg.latitude, cfg.longitude, sched.zenith_deg, sched.dusk_offset_min,
                  sched.dawn_offset_min, dusk_date, zone)


@functools.lru_cache(maxsize=4096)
def _night(lat: float, lon: float, zenith: float, dusk_offset_min: float,
           dawn_offset_min: float, dusk_date: date, zone: ZoneInfo) -> tuple[float, float] | None:
    # Cached: every lamp of a schedule shares its nights, and a night is asked for each minute.
    evening = sun_times(dusk_date, lat, lon, zenith)
    morning = sun_times(dusk_date + timedelta(days=1), lat, lon, zenith)
    if evening.sunset_s is not None:
        dusk = evening.sunset_s + dusk_offset_min * 60
    elif evening.polar == "night":
        dusk = _midnight(dusk_date, zone)
    else:
        return None
    if morning.sunrise_s is not None:
        dawn = morning.sunrise_s + dawn_offset_min * 60
    elif morning.polar == "night":
        dawn = _midnight(dusk_date + timedelta(days=2), zone)
    else:
        dawn = _midnight(dusk_date + timedelta(days=1), zone)
    return (dusk, dawn) if dawn > dusk else None


def step_bounds(sched: LightSchedule, dusk_date: date, dusk: float, dawn: float,
                zone: ZoneInfo) -> list[tuple[float, float, int]]:
    """The night's steps as (start, end, level), clipped to dusk..dawn, empty ones left out."""
    out: list[tuple[float, float, int]] = []
    start = dusk
    for step in sched.steps:
        if step.until_min is None:
            end = dawn
        else:
            day = dusk_date if step.until_min >= NOON_MIN else dusk_date + timedelta(days=1)
            at = datetime.combine(day, time(step.until_min // 60, step.until_min % 60),
                                  tzinfo=zone).timestamp()
            end = min(max(at, dusk), dawn)
        if end > start:
            out.append((start, end, step.level_pct))
            start = end
    return out


def _covers(sched: LightSchedule, day: date) -> bool:
    return any(first <= day <= last for first, last in sched.dates)


def chosen(cfg: LightingConfig, lamp: str, dusk_date: date) -> LightSchedule | None:
    """The schedule ``lamp`` follows on the night starting ``dusk_date``, if any."""
    mine = [s for s in cfg.schedules if lamp in s.lamps]
    for s in mine:
        if s.dates and _covers(s, dusk_date):
            return s
    return next((s for s in mine if not s.dates), None)


def _from_schedule(cfg: LightingConfig, lamp: str, t: float, zone: ZoneInfo) -> LampState | None:
    today = datetime.fromtimestamp(t, zone).date()
    covered = False
    for dusk_date in (today - timedelta(days=1), today):
        sched = chosen(cfg, lamp, dusk_date)
        if sched is None:
            continue
        covered = True
        window = night(cfg, sched, dusk_date, zone)
        if window is None or not window[0] <= t < window[1]:
            continue
        for start, end, level in step_bounds(sched, dusk_date, *window, zone):
            if start <= t < end:
                return LampState(level > 0, level, f"schedule:{sched.name}")
    if not covered:
        return None
    sched = chosen(cfg, lamp, today) or chosen(cfg, lamp, today - timedelta(days=1))
    return LampState(False, 0, f"day:{sched.name if sched else '?'}")


def _override_for(cfg: LightingConfig, lamp: str,
                  overrides: Mapping[str, Override]) -> Override | None:
    own = overrides.get(lamp)
    if own is not None:
        return own
    groups = [o for target, o in overrides.items()
              if target.startswith("group:") and lamp in cfg.members(target)]
    return max(groups, key=lambda o: o.set_at_s, default=None)


def desired(cfg: LightingConfig, t: float,
            overrides: Mapping[str, Override] | None = None) -> dict[str, LampState]:
    """Every controlled lamp's state at ``t`` (Unix seconds); ``overrides`` already active."""
    zone = cfg.zone
    active = {k: o for k, o in (overrides or {}).items() if o.until_s > t}
    lamps = dict.fromkeys(name for s in cfg.schedules for name in s.lamps)
    for target in active:
        lamps.update(dict.fromkeys(cfg.members(target)))
    out: dict[str, LampState] = {}
    for lamp in lamps:
        ov = _override_for(cfg, lamp, active)
        if ov is not None:
            level = round(ov.level_pct)
            out[lamp] = LampState(level > 0, level, f"override:{ov.target}")
            continue
        state = _from_schedule(cfg, lamp, t, zone)
        if state is not None:
            out[lamp] = state
    return out


def transitions(cfg: LightingConfig, t: float,
                overrides: Iterable[Override] = ()) -> list[float]:
    """Every instant after ``t`` within about two days at which a lamp's state may change."""
    zone = cfg.zone
    today = datetime.fromtimestamp(t, zone).date()
    marks: set[float] = {o.until_s for o in overrides if o.until_s > t}
    for sched in cfg.schedules:
        for dusk_date in (today - timedelta(days=1), today, today + timedelta(days=1)):
            window = night(cfg, sched, dusk_date, zone)
            if window is None:
                continue
            marks.update(window)
            marks.update(end for _, end, _ in step_bounds(sched, dusk_date, *window, zone))
    return sorted(m for m in marks if m > t)


def next_transition(cfg: LightingConfig, t: float,
                    overrides: Iterable[Override] = ()) -> float | None:
    """The first instant after ``t`` at which a lamp's state may change (None: none soon)."""
    marks = transitions(cfg, t, overrides)
    return marks[0] if marks else None


def _hhmm(t: float, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(t, zone).strftime("%H:%M")


def describe(cfg: LightingConfig, now_s: float) -> list[str]:
    """Lines for ``check-config``: each schedule, and the night after ``now_s`` it gives."""
    zone = cfg.zone
    today = datetime.fromtimestamp(now_s, zone).date()
    lines = [f"lighting at {cfg.latitude:.4f}, {cfg.longitude:.4f} ({cfg.timezone}): "
             f"{len(cfg.lamps)} lamps, {len(cfg.groups)} groups, {len(cfg.schedules)} schedules"]
    for s in cfg.schedules:
        steps = ", ".join(f"{st.level_pct} % to " + ("dawn" if st.until_min is None else
                                                     f"{st.until_min // 60:02d}:"
                                                     f"{st.until_min % 60:02d}")
                          for st in s.steps)
        when = ("on " + ", ".join(f"{a}..{b}" if a != b else str(a) for a, b in s.dates)
                if s.dates else "every night")
        lines.append(f"  schedule {s.name}: {len(s.lamps)} lamps, zenith {s.zenith_deg:g} deg, "
                     f"{steps}; {when}")
        window = night(cfg, s, today, zone)
        if window is None:
            lines.append(f"    night of {today}: none (the sun does not set that far)")
        elif not s.dates or _covers(s, today):
            lines.append(f"    night of {today}: on {_hhmm(window[0], zone)}, off "
                         f"{_hhmm(window[1], zone)}")
    return lines

"""DL/T 645 meters in a site config: devices on a ``protocol = "dlt645"`` serial bus.

A meter gives its twelve-digit communication ``address`` (as on its nameplate; DL/T 645-2007
4.2.2) where a Modbus device gives ``unit_id``, a DL/T 645 profile (shipped, or a file
beside the config), ``poll_interval_s``, and per-point overrides under ``points.NAME``
(``interval_s``, ``deadband``, ``scale``, ``unit``, ``enabled``). Problems go to the loader's
Checker with the rest of the config's.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from edge_agent.config.paths import FileRoots
from edge_agent.drivers.bus import Bus, DeviceConfig, FieldProtocol, SerialBus
from edge_agent.drivers.dlt645.meter import (
    MeterPoint,
    MeterProfile,
    parse_meter_profile,
    shipped_meter_profiles,
)
from edge_agent.drivers.model import POLL_TEXT, poll_interval_ok
from edge_agent.drivers.profile import DeviceProfile, shipped_profiles
from edge_agent.protocol.errors import ConfigError
from edge_agent.protocol.tomlcheck import Checker, load_toml

METER_KEYS = ("bus", "address", "profile", "poll_interval_s", "points")
METER_OVERRIDE_KEYS = ("interval_s", "deadband", "scale", "unit", "enabled")
ADDRESS_TEXT = ("a meter address of 12 decimal digits as on the nameplate, e.g. "
                "'000102030425' (DL/T 645-2007 4.2.2)")


def is_meter_bus(buses: dict[str, Bus], name: object) -> bool:
    """True if ``name`` is a serial bus speaking DL/T 645."""
    bus = buses.get(name) if isinstance(name, str) else None
    return isinstance(bus, SerialBus) and bus.protocol is FieldProtocol.DLT645


def _address_ok(text: str) -> bool:
    # 99 x 6 is the broadcast of time sync and AA the wildcard (4.2.2): never one meter's.
    return len(text) == 12 and text.isdigit() and text != "999999999999"


def parse_meter_device(chk: Checker, name: str, d: dict[str, Any], buses: dict[str, Bus],
                       base: Path, roots: FileRoots, units: dict[tuple[str, int], str],
                       cache: dict[str, MeterProfile | None]) -> DeviceConfig | None:
    """One meter's table (its bus known to be DL/T 645); None after recording its problems."""
    p = f"devices.{name}"
    before = len(chk.problems)
    chk.keys(d, p, METER_KEYS)
    bus = chk.get(d, p, "bus", str)
    address = chk.get(d, p, "address", str, check=_address_ok, expected=ADDRESS_TEXT)
    if address is not None:
        key = (bus, int(address))
        if key in units:
            chk.problem(f"{p}.address", address, f"an address not already used on bus {bus!r} "
                        f"(devices.{units[key]} has it)")
        units.setdefault(key, name)
    poll = chk.get(d, p, "poll_interval_s", float, check=poll_interval_ok, expected=POLL_TEXT)
    profile = _meter_profile(chk, d, p, base, roots, cache)
    points = _meter_points(chk, d, p, profile)
    if len(chk.problems) > before or profile is None or address is None or bus not in buses:
        return None
    return DeviceConfig(name=name, bus=bus, unit_id=int(address),
                        profile=DeviceProfile(profile.name, profile.description, ()),
                        poll_interval_s=poll, points=(), address=address,
                        meter_points=tuple(points))


def _meter_profile(chk: Checker, raw: dict[str, Any], p: str, base: Path, roots: FileRoots,
                   cache: dict[str, MeterProfile | None]) -> MeterProfile | None:
    shipped = shipped_meter_profiles()
    ref = chk.get(raw, p, "profile", str, check=bool,
                  expected="a DL/T 645 profile (" + ", ".join(shipped) + ") or a profile file")
    if ref is None:
        return None
    if ref in shipped:
        path = shipped[ref]
    elif ref in shipped_profiles():
        chk.problem(f"{p}.profile", ref, "a DL/T 645 profile (" + ", ".join(shipped) + "): "
                    f"{ref!r} is a Modbus profile and this bus speaks DL/T 645")
        return None
    else:
        placed, why = roots.place(base, ref)
        if placed is None:
            chk.problem(f"{p}.profile", ref, f"a shipped DL/T 645 profile or a file: {why}")
            return None
        path = placed
    key = str(path)
    if key not in cache:
        cache[key] = None
        try:
            found = path.is_file()
        except OSError:
            found = False
        if not found:
            chk.problem(f"{p}.profile", ref, "a shipped DL/T 645 profile ("
                        + ", ".join(shipped) + f") or a profile file; there is no file at "
                        f"{base / ref}")
            return None
        inner = Checker(str(path))
        try:
            profile = parse_meter_profile(load_toml(path), str(path), inner)
        except ConfigError as exc:
            inner.problems += exc.problems
        if inner.problems:
            for problem in inner.problems:
                chk.note(f"{p}.profile", f"profile {ref!r} is invalid: {problem}")
        else:
            cache[key] = profile
    return cache[key]


def _meter_points(chk: Checker, raw: dict[str, Any], p: str,
                  profile: MeterProfile | None) -> list[MeterPoint]:
    """The profile's points with this meter's overrides applied."""
    overrides = chk.get(raw, p, "points", dict, {})
    known = {pt.name: pt for pt in profile.points} if profile is not None else {}
    changed: dict[str, MeterPoint | None] = {}
    for pname, o in overrides.items():
        op = f"{p}.points.{pname}"
        if not isinstance(o, dict):
            chk.problem(op, o, "a table of point overrides")
            continue
        chk.keys(o, op, METER_OVERRIDE_KEYS)
        target = known.get(pname)
        if profile is not None and target is None:
            chk.note(op, f"profile {profile.name!r} has no point {pname!r}; expected one of: "
                     + ", ".join(known))
        changes: dict[str, Any] = {}
        for key, kind, check, expected in (
            ("interval_s", float, poll_interval_ok, POLL_TEXT),
            ("deadband", float, lambda v: v >= 0, "a number >= 0"),
            ("scale", float, lambda v: v != 0, "a non-zero number"),
            ("unit", str, None, "a string"),
        ):
            value = chk.get(o, op, key, kind, None, check=check, expected=expected)
            if value is not None:
                changes[key] = value
        enabled = chk.get(o, op, "enabled", bool, True)
        changed[pname] = replace(target, **changes) if target and enabled else None
    result = [pt for pt in (changed.get(n, pt) for n, pt in known.items()) if pt is not None]
    if profile is not None and not result:
        chk.note(p, "every point is disabled; expected at least one point to poll")
    return result

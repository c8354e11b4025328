"""The ``[interlocks.DEVICE]`` tables of a site config: what a signal cabinet may be ordered to.

Each table names a signal cabinet device (the ``signal_cabinet`` profile's points) and its
limits for commands (docs/commands.md, "Interlocks")::

    [interlocks.signal-1]
    plans = [1, 2, 3]          # the only plans a command may select
    min_plan_change_s = 300    # at least this long between two plan changes
    flash_from_modes = [2, 3]  # controller modes flashing may be entered from
    manual_modes = [4]         # controller modes that mean a person has the cabinet (default)
    fault_points = ["lamp_faults", "detector_faults"]  # any non-zero refuses (default: those
                                                       # of the two the profile has)

A cabinet without such a table takes no plan or flash command at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.drivers.bus import DeviceConfig
from edge_agent.protocol.tomlcheck import Checker

INTERLOCK_KEYS = ("plans", "min_plan_change_s", "flash_from_modes", "manual_modes",
                  "fault_points")
# Fault counters a cabinet reports; a plan change is refused while any of them is non-zero.
FAULT_POINTS = ("lamp_faults", "detector_faults")
# The points the interlocks read fresh from the cabinet and write (profile signal_cabinet).
CABINET_POINTS = ("controller_mode", "lamp_faults", "door_open", "mains_power", "plan_command",
                  "flash_request")
MAX_PLAN = 255
DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class Interlocks:
    """One signal cabinet's command interlocks."""

    device: str
    plans: tuple[int, ...]
    min_plan_change_s: float = 300.0
    flash_from_modes: tuple[int, ...] = (2, 3)
    manual_modes: tuple[int, ...] = (4,)
    fault_points: tuple[str, ...] = ("lamp_faults",)


def _ints(chk: Checker, raw: dict[str, Any], path: str, key: str, lo: int, hi: int,
          default: Sequence[int] | None) -> tuple[int, ...]:
    expected = f"a list of integers from {lo} to {hi}"
    values = chk.get(raw, path, key, list, None if default is None else list(default),
                     check=lambda v: all(type(x) is int and lo <= x <= hi for x in v),
                     expected=expected)
    return tuple(values or ())


def _fault_points(chk: Checker, raw: dict[str, Any], path: str,
                  names: set[str]) -> tuple[str, ...]:
    def known(values: list[Any]) -> bool:
        return 0 < len(values) <= 16 and all(isinstance(x, str) and x in names for x in values)

    default = [p for p in FAULT_POINTS if p in names]
    return tuple(chk.get(raw, path, "fault_points", list, default, check=known,
                         expected=f"a non-empty list of the device's points (e.g. {default})"))


def parse_interlocks(chk: Checker, raw: dict[str, Any], devices: Sequence[DeviceConfig],
                     declared: set[str]) -> dict[str, Interlocks]:
    """The interlocks by device; problems recorded in ``chk`` (unknown device, missing points).

    ``declared`` are the [devices] names, also those not built for a problem of their own."""
    by_name = {d.name: d for d in devices}
    out: dict[str, Interlocks] = {}
    for name, table in raw.items():
        path = f"interlocks.{name}"
        if not isinstance(table, dict):
            chk.problem(path, table, "a table [interlocks.DEVICE]")
            continue
        chk.keys(table, path, INTERLOCK_KEYS)
        dev = by_name.get(name)
        if dev is None:
            if name not in declared:
                chk.note(path, f"no device {name!r} in [devices]")
            continue
        names = {p.name for p in dev.points}
        missing = [p for p in CABINET_POINTS if p not in names]
        if missing:
            chk.note(path, f"device {name!r} (profile {dev.profile.name}) lacks the signal "
                     f"cabinet points {', '.join(missing)}")
            continue
        plans = _ints(chk, table, path, "plans", 1, MAX_PLAN, None)
        if "plans" in table and not plans:
            chk.note(f"{path}.plans", "empty; list the plans a command may select")
        out[name] = Interlocks(
            device=name, plans=plans,
            min_plan_change_s=chk.get(table, path, "min_plan_change_s", float, 300.0,
                                      check=lambda v: 0 <= v <= DAY_S,
                                      expected="seconds from 0 to 86400"),
            flash_from_modes=_ints(chk, table, path, "flash_from_modes", 0, 65535, (2, 3)),
            manual_modes=_ints(chk, table, path, "manual_modes", 0, 65535, (4,)),
            fault_points=_fault_points(chk, table, path, names))
    return out

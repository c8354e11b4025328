"""Commands, the pure core: a verified command and the site config in, the writes out.

``plan_command`` turns a command (``edge_agent.protocol.command``) into the writes that carry it
out, or into a refusal that names why, before anything touches a bus:

- lamps (``switch``, ``dim``, ``override-clear``): every named lamp must be a device of the
  site with the point the action writes (``relay_on``, ``dim_command``) read-write, and the
  value must be inside the profile's limits (``encode_write``); ``group:NAME`` names a lamp
  group of the site's lighting config. One bad name refuses the whole command.
- signal cabinets (``plan``, ``flash``): the device must have ``[interlocks.DEVICE]``; a plan
  must be inside the profile's limits and the allow-list, and the last plan change must be
  ``min_plan_change_s`` ago (the time is passed in); the rest of the interlocks need the
  cabinet's state read fresh, so they travel with the write as a ``Guard`` that the bus's
  scheduler runs between polls, just before writing (``cabinet_guard``, ``flash_guard``).

Every refusal names the interlock or the limit, and the value seen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from edge_agent.config.interlocks import Interlocks
from edge_agent.config.model import SiteConfig
from edge_agent.drivers.bus import DeviceConfig
from edge_agent.drivers.modbus.decode import encode_write
from edge_agent.drivers.model import Access
from edge_agent.protocol.command import DEVICE, FOR_S, LAMPS, LEVEL, ON, PLAN, Command
from edge_agent.protocol.readings import Value
from edge_agent.runtime.writes import Guard

RELAY, DIM = "relay_on", "dim_command"
PLAN_POINT, FLASH_POINT = "plan_command", "flash_request"
GROUP = "group:"
# What the cabinet guard reads, fresh, before a plan change or leaving flashing mode.
GUARD_POINTS = ("controller_mode", "door_open", "mains_power")  # and the fault points


@dataclass(frozen=True, slots=True)
class Write:
    """One write a command needs: a point of a device, its value, its guard if any."""

    device: str
    point: str
    value: Value
    guard: Guard | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a command is refused: the interlock or limit (a short name) and the sentence."""

    interlock: str
    reason: str


@dataclass(frozen=True, slots=True)
class CommandPlan:
    """The writes of a command, and the override to hold (targets, level, seconds) if any."""

    writes: tuple[Write, ...]
    targets: tuple[str, ...] = ()       # lamps and group:NAME as the command named them
    override_level: float | None = None  # set an override at this level (0: off) ...
    override_s: int | None = None        # ... for this long
    clear_override: bool = False


def _writable(dev: DeviceConfig, point: str, value: Value) -> Refusal | None:
    """None if ``point`` of ``dev`` is read-write and takes ``value`` (profile limits)."""
    p = next((p for p in dev.points if p.name == point), None)
    if p is None or p.access is not Access.READ_WRITE:
        return Refusal("writable", f"device {dev.name} (profile {dev.profile.name}) has no "
                       f"writable point {point}")
    try:
        encode_write(p, value)
    except ValueError as exc:
        return Refusal("limits", f"{dev.name}.{exc}")
    return None


def resolve_lamps(names: Sequence[str], cfg: SiteConfig,
                  groups: Mapping[str, Sequence[str]]) -> list[str] | Refusal:
    """The lamps a command names (groups expanded, in order, once each), or a refusal."""
    out: list[str] = []
    for name in names:
        if name.startswith(GROUP):
            members = groups.get(name[len(GROUP):])
            if members is None:
                known = ", ".join(sorted(groups)) or "none"
                return Refusal("target", f"no lamp group {name[len(GROUP):]!r} in the site "
                               f"config (groups: {known})")
            out += [m for m in members if m not in out]
        elif name not in out:
            out.append(name)
    return out


def plan_command(cmd: Command, cfg: SiteConfig, groups: Mapping[str, Sequence[str]], *,
                 last_plan_change_s: Callable[[str], float | None],
                 now_s: float) -> CommandPlan | Refusal:
    """The writes of ``cmd`` on this site, or why it is refused (pure; nothing is written)."""
    devices = {d.name: d for d in cfg.devices}
    args = cmd.args
    if LAMPS in args:
        lamps = resolve_lamps(args[LAMPS], cfg, groups)
        if isinstance(lamps, Refusal):
            return lamps
        unknown = [n for n in lamps if n not in devices]
        if unknown:
            return Refusal("target", f"no device {unknown[0]!r} on gateway {cfg.gateway_id}")
        targets = tuple(args[LAMPS])
        if cmd.action == "override-clear":
            return CommandPlan((), targets, clear_override=True)
        point, value = (RELAY, bool(args[ON])) if cmd.action == "switch" else (DIM, args[LEVEL])
        for name in lamps:
            refused = _writable(devices[name], point, value)
            if refused is not None:
                return refused
        level = (100.0 if value else 0.0) if cmd.action == "switch" else float(args[LEVEL])
        return CommandPlan(tuple(Write(n, point, value) for n in lamps), targets,
                           override_level=level if FOR_S in args else None,
                           override_s=args.get(FOR_S))
    name = args[DEVICE]
    dev = devices.get(name)
    if dev is None:
        return Refusal("target", f"no device {name!r} on gateway {cfg.gateway_id}")
    locks = cfg.interlocks.get(name)
    if locks is None:
        return Refusal("interlocks", f"device {name} has no [interlocks.{name}] in the site "
                       "config: it takes no plan or flash command")
    if cmd.action == "plan":
        plan = args[PLAN]
        refused = _writable(dev, PLAN_POINT, plan)
        if refused is not None:
            return refused
        if plan not in locks.plans:
            return Refusal("plans", f"interlock plans: plan {plan} is not in the allow-list "
                           f"{list(locks.plans)} of {name}")
        last = last_plan_change_s(name)
        if last is not None and now_s - last < locks.min_plan_change_s:
            return Refusal("min_plan_change_s", f"interlock min_plan_change_s: the last plan "
                           f"change of {name} was {now_s - last:.0f} s ago, the minimum is "
                           f"{locks.min_plan_change_s:g} s")
        return CommandPlan((Write(name, PLAN_POINT, plan, cabinet_guard(locks)),))
    on = bool(args[ON])
    refused = _writable(dev, FLASH_POINT, on)
    if refused is not None:
        return refused
    guard = flash_guard(locks) if on else cabinet_guard(locks)
    return CommandPlan((Write(name, FLASH_POINT, on, guard),))


def cabinet_refusal(locks: Interlocks, seen: Mapping[str, Value]) -> str | None:
    """Why the cabinet's fresh state forbids a plan change (or leaving flashing), or None."""
    mode = seen["controller_mode"]
    if mode in locks.manual_modes:
        return (f"interlock manual: {locks.device} is under manual control "
                f"(controller_mode = {mode})")
    for point in locks.fault_points:
        if seen[point]:
            return f"interlock fault: {locks.device} reports {point} = {seen[point]}"
    if seen["door_open"]:
        return f"interlock door_open: the door of {locks.device} is open (door_open = true)"
    if not seen["mains_power"]:
        return (f"interlock mains_power: {locks.device} runs without mains "
                "(mains_power = false)")
    return None


def cabinet_guard(locks: Interlocks) -> Guard:
    """The fresh-read guard of a plan change (fault, manual, door, mains)."""
    return Guard(GUARD_POINTS + locks.fault_points, lambda seen: cabinet_refusal(locks, seen))


def flash_refusal(locks: Interlocks, seen: Mapping[str, Value]) -> str | None:
    """Why flashing may not be entered from the cabinet's fresh mode, or None."""
    mode = seen["controller_mode"]
    if mode not in locks.flash_from_modes:
        return (f"interlock flash_from_modes: {locks.device} is in controller_mode {mode}; "
                f"flashing is allowed only from {list(locks.flash_from_modes)}")
    return None


def flash_guard(locks: Interlocks) -> Guard:
    """The fresh-read guard of entering flashing mode (only from the listed modes)."""
    return Guard(("controller_mode",), lambda seen: flash_refusal(locks, seen))

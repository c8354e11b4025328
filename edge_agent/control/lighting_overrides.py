"""Lighting schedule overrides: a lamp or group held at a level until a stated end time.

An override is set by an operator's command ("dim group:north to 40 % for 2 h") and ends by
itself at ``until_s`` (Unix seconds, wall clock), after which the lamp follows its schedule
again. The store is persisted atomically in the state dir (``lighting-overrides.json``, 0600),
so a gateway restart in the middle of an override keeps the override and its end time: the end
is an absolute instant, never a remaining duration.

Targets are a lamp's device name (``lamp-101``) or a group from the site config
(``group:north``); which lamps a target covers, and which override wins, is decided by the
schedule evaluation (``control.lighting``), not here.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_agent.protocol.clock import Clock
from edge_agent.protocol.errors import EdgeError
from edge_agent.protocol.fileio import atomic_write
from edge_agent.protocol.jsonsafe import UnsafeJsonError, loads_strict

log = logging.getLogger(__name__)

OVERRIDES_FILE = "lighting-overrides.json"
MAX_OVERRIDES = 1024
MAX_TARGET_CHARS = 128
MAX_COMMAND_ID_CHARS = 128
# An override is for "a duration", not forever: a year is far beyond any operator's intent.
MAX_OVERRIDE_S = 366 * 86400.0


class OverrideError(EdgeError):
    """An override cannot be set as asked (bad target, level or end time)."""


@dataclass(frozen=True, slots=True)
class Override:
    """One lamp or group held at ``level_pct`` (0 = off) until ``until_s``."""

    target: str
    level_pct: float
    until_s: float
    command_id: str
    set_at_s: float

    def to_json(self) -> dict[str, object]:
        """The override as stored."""
        return asdict(self)


def overrides_path(state_dir: Path) -> Path:
    """Where the override store lives in a state dir."""
    return state_dir / OVERRIDES_FILE


def _check(target: str, level_pct: float, until_s: float, command_id: str,
           now_s: float) -> None:
    """Raise OverrideError naming the first bad field."""
    if not isinstance(target, str) or not target or len(target) > MAX_TARGET_CHARS:
        raise OverrideError(f"override target {target!r}: expected a lamp name or group:NAME "
                            f"of 1..{MAX_TARGET_CHARS} characters")
    if target.startswith("group:") and len(target) == len("group:"):
        raise OverrideError(f"override target {target!r}: the group has no name")
    if isinstance(level_pct, bool) or not isinstance(level_pct, int | float) \
            or not math.isfinite(level_pct) or not 0.0 <= level_pct <= 100.0:
        raise OverrideError(f"override level {level_pct!r} for {target}: expected 0..100 %")
    if isinstance(until_s, bool) or not isinstance(until_s, int | float) \
            or not math.isfinite(until_s):
        raise OverrideError(f"override end {until_s!r} for {target}: expected Unix seconds")
    if until_s <= now_s:
        raise OverrideError(f"override end {until_s} for {target} is not after now ({now_s:.0f})")
    if until_s - now_s > MAX_OVERRIDE_S:
        raise OverrideError(f"override end {until_s} for {target} is {until_s - now_s:.0f} s "
                            f"away: expected at most {MAX_OVERRIDE_S:.0f} s")
    if not isinstance(command_id, str) or len(command_id) > MAX_COMMAND_ID_CHARS:
        raise OverrideError(f"override command id {command_id!r}: expected a string of at most "
                            f"{MAX_COMMAND_ID_CHARS} characters")


def _parse(doc: object, where: str) -> dict[str, Override]:
    """The stored overrides, or UnsafeJsonError naming the bad entry."""
    if not isinstance(doc, dict) or not isinstance(doc.get("overrides"), list):
        raise UnsafeJsonError("$", f"{where}: expected {{\"overrides\": [...]}}")
    out: dict[str, Override] = {}
    for i, item in enumerate(doc["overrides"]):
        try:
            ov = Override(target=str(item["target"]), level_pct=float(item["level_pct"]),
                          until_s=float(item["until_s"]), command_id=str(item["command_id"]),
                          set_at_s=float(item["set_at_s"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UnsafeJsonError(f"$.overrides[{i}]", f"{where}: bad override ({exc})") from None
        out[ov.target] = ov
    return out


class OverrideStore:
    """The active overrides, persisted atomically at ``path`` (a file in the state dir)."""

    def __init__(self, path: Path, clock: Clock, *, fsync: bool = True) -> None:
        self.path = path
        self.clock = clock
        self.fsync = fsync
        self._listeners: list[Callable[[], None]] = []
        self._overrides = self._load()

    def _load(self) -> dict[str, Override]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.error("lighting overrides %s unreadable (%s): starting with none", self.path, exc)
            return {}
        try:
            doc = loads_strict(raw, max_bytes=1 << 20, max_depth=3, max_items=MAX_OVERRIDES,
                               max_str=max(MAX_TARGET_CHARS, MAX_COMMAND_ID_CHARS),
                               allow_float=True)
            return _parse(doc, str(self.path))
        except UnsafeJsonError as exc:
            # Our own file, so damage means a disk fault: keep the evidence, run the schedule.
            aside = self.path.with_name(self.path.name + ".bad")
            self.path.replace(aside)
            log.error("lighting overrides %s damaged (%s): moved to %s, starting with none",
                      self.path, exc, aside)
            return {}

    def _save(self) -> None:
        doc = {"overrides": [o.to_json() for o in sorted(self._overrides.values(),
                                                         key=lambda o: o.target)]}
        atomic_write(self.path, json.dumps(doc, sort_keys=True, indent=1).encode(),
                     fsync=self.fsync)
        for listener in list(self._listeners):
            listener()

    def _prune(self, now_s: float) -> bool:
        """Forget ended overrides; True if any was dropped."""
        ended = [t for t, o in self._overrides.items() if o.until_s <= now_s]
        for t in ended:
            del self._overrides[t]
        return bool(ended)

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (no arguments) after every change (the schedule task re-evaluates)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener`` (a schedule task that ended)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def set(self, target: str, level_pct: float, until_s: float, command_id: str) -> Override:
        """Hold ``target`` at ``level_pct`` until ``until_s``; replaces an earlier override."""
        now_s = self.clock.now()
        _check(target, level_pct, until_s, command_id, now_s)
        self._prune(now_s)
        if target not in self._overrides and len(self._overrides) >= MAX_OVERRIDES:
            raise OverrideError(f"{MAX_OVERRIDES} overrides are active: clear one first")
        ov = Override(target, float(level_pct), float(until_s), command_id, now_s)
        self._overrides[target] = ov
        self._save()
        log.info("lighting override %s at %.0f %% until %.0f (command %s)", target,
                 ov.level_pct, ov.until_s, command_id)
        return ov

    def clear(self, target: str) -> bool:
        """End ``target``'s override now; True if there was one."""
        self._prune(self.clock.now())
        had = self._overrides.pop(target, None) is not None
        self._save()
        if had:
            log.info("lighting override %s cleared", target)
        return had

    def active(self, now_s: float) -> dict[str, Override]:
        """The overrides in force at ``now_s``, by target (ended ones are left out)."""
        return {t: o for t, o in self._overrides.items() if o.until_s > now_s}

    def next_end(self, now_s: float) -> float | None:
        """When the next active override ends (the schedule task wakes then), if any."""
        ends = [o.until_s for o in self._overrides.values() if o.until_s > now_s]
        return min(ends) if ends else None

"""The lamps' local autonomy: the night schedule written to the lamps, broker or no broker.

Each minute, and at the exact instant of every transition (dusk, a dim step, dawn, the end of
an override) or when an override is set or cleared, the task evaluates ``control.lighting``
for the current time and writes only what changed to each lamp, through its bus's own write
path (``BusPoller.write``: between two polls, never racing one on the wire). Switching on
writes the dim level before the relay, so a lamp never flashes at full power first;
switching off opens the relay and leaves the dim level alone.

What was written is remembered only in memory, so after a restart every lamp is written once
(re-asserted); a lamp whose device went offline is skipped while it is offline and
re-asserted when it answers again, as is one that missed a poll since the last evaluation (a
power blip shorter than the offline detection); a write that fails is retried at the next
evaluation.
Nothing here touches MQTT: the schedule runs from the config and the clock alone.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import Protocol

from edge_agent.config.model import LightingConfig
from edge_agent.control.lighting import LampState, desired, next_transition
from edge_agent.control.lighting_overrides import OverrideStore
from edge_agent.protocol.clock import Clock
from edge_agent.protocol.readings import Value
from edge_agent.protocol.tasks import sleep_or_event
from edge_agent.runtime.poller import DeviceState, WriteResult

log = logging.getLogger(__name__)

TICK_S = 60.0


class LampBus(Protocol):
    """What the task needs of a bus poller: its devices' states and its write path."""

    @property
    def devices(self) -> Mapping[str, DeviceState]: ...

    async def write(self, device: str, point: str, value: Value) -> WriteResult: ...


class LightingTask:
    """Writes the desired lamp states to the lamps' buses; ``run`` is a supervised task."""

    def __init__(self, cfg: LightingConfig, buses: Mapping[str, LampBus],
                 overrides: OverrideStore, clock: Clock, *, tick_s: float = TICK_S) -> None:
        self.cfg = cfg
        self.clock = clock
        self.tick_s = tick_s   # the regular re-evaluation (transitions wake it at their instant)
        self.overrides = overrides
        # Which bus each lamp is on (a lamp the running config does not poll is skipped).
        self.bus_of: dict[str, LampBus] = {
            name: bus for bus in buses.values() for name in bus.devices if name in cfg.lamps}
        self.written: dict[tuple[str, str], Value] = {}   # (lamp, point) -> value last written
        self.state: dict[str, LampState] = {}
        self.offline: set[str] = set()
        self.writes = 0
        self.failed_writes = 0
        self.evaluations = 0
        self.last_error = ""
        self._failing: set[str] = set()
        self._failed_polls: dict[str, int] = {}
        self._wake = asyncio.Event()

    def _status(self, lamp: str) -> tuple[str, int]:
        """The lamp's device status and how many of its polls failed so far."""
        state = self.bus_of[lamp].devices.get(lamp)
        return (state.status, state.failed_polls) if state is not None else ("unknown", 0)

    async def apply(self, now_s: float) -> None:
        """Evaluate the schedule at ``now_s`` and write what differs from what was written."""
        self.evaluations += 1
        wanted = desired(self.cfg, now_s, self.overrides.active(now_s))
        for gone in set(self.state) - set(wanted):   # an unscheduled lamp's override ended
            del self.state[gone]
        for lamp, state in wanted.items():
            if lamp not in self.bus_of:
                continue
            if self.state.get(lamp) != state:
                log.info("lighting: %s %s (%s)", lamp,
                         f"on at {state.level_pct} %" if state.on else "off", state.source)
                self.state[lamp] = state
            status, failed = self._status(lamp)
            if failed != self._failed_polls.setdefault(lamp, failed):
                # It missed a poll since the last look: it may have lost power and come back
                # at its defaults before it was ever seen offline. Written again.
                self._failed_polls[lamp] = failed
                self._forget(lamp)
            if status == "offline":
                if lamp not in self.offline:
                    self.offline.add(lamp)
                    self._forget(lamp)   # re-asserted when it answers again
                continue
            self.offline.discard(lamp)
            await self._write_lamp(lamp, state)

    def _forget(self, lamp: str) -> None:
        for key in [k for k in self.written if k[0] == lamp]:
            del self.written[key]

    async def _write_lamp(self, lamp: str, state: LampState) -> None:
        relay, dim = self.cfg.relay_point, self.cfg.dim_point
        # Dim level first: a relay closed before it would light the lamp at the old level.
        points: list[tuple[str, Value]] = [(dim, state.level_pct), (relay, True)] if state.on \
            else [(relay, False)]
        for point, value in points:
            if self.written.get((lamp, point)) == value:
                continue
            result = await self.bus_of[lamp].write(lamp, point, value)
            if not result.ok:
                self.failed_writes += 1
                self.last_error = f"{lamp}.{point} = {value!r}: {result.error}"
                if lamp not in self._failing:
                    self._failing.add(lamp)
                    log.warning("lighting: writing %s failed (%s); retrying each minute",
                                self.last_error, "device refused" if result.exception_code
                                else "no answer")
                self.written.pop((lamp, point), None)
                return
            self.writes += 1
            self.written[(lamp, point)] = value
        if lamp in self._failing:
            self._failing.discard(lamp)
            log.info("lighting: %s written again", lamp)

    def next_wake_s(self, now_s: float) -> float:
        """The next evaluation: the next whole minute, or a transition before it."""
        tick = (math.floor(now_s / self.tick_s) + 1) * self.tick_s
        ends = self.overrides.active(now_s).values()
        change = next_transition(self.cfg, now_s, ends)
        return tick if change is None else min(tick, change)

    async def run(self) -> None:
        """Evaluate and write until cancelled."""
        log.info("lighting: %d lamps under %d schedules (%.3f, %.3f, %s)", len(self.bus_of),
                 len(self.cfg.schedules), self.cfg.latitude, self.cfg.longitude,
                 self.cfg.timezone)
        # An override set or cleared (a command) is applied at once, not at the next minute.
        self.overrides.add_listener(self._wake.set)
        try:
            while True:
                self._wake.clear()
                now = self.clock.now()
                await self.apply(now)
                wait_s = self.next_wake_s(now) - self.clock.now()
                if wait_s > 0:
                    await sleep_or_event(self.clock.sleep, wait_s, self._wake)
        finally:
            self.overrides.remove_listener(self._wake.set)

    def health(self) -> dict[str, object]:
        """The lighting part of the health document."""
        now = self.clock.now()
        change = next_transition(self.cfg, now, self.overrides.active(now).values())
        return {
            "next_change_ms": None if change is None else int(change * 1000),
            "lamps": {name: {"on": s.on, "level": s.level_pct, "source": s.source,
                             "offline": name in self.offline}
                      for name, s in sorted(self.state.items())},
            "overrides": len(self.overrides.active(now)),
            "writes": self.writes, "failed_writes": self.failed_writes,
            "evaluations": self.evaluations, "last_error": self.last_error,
        }

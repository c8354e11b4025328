"""Bring up a whole simulated site: every bus of a site served with its devices."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

from edge_agent.drivers.bus import FieldSite, SerialBus
from edge_agent.drivers.sim.control import control_server
from edge_agent.drivers.sim.device import DeviceSim
from edge_agent.drivers.sim.meter import MeterSim
from edge_agent.drivers.sim.meter_server import serve_meter_bus
from edge_agent.drivers.sim.server import Served, SiteSim, serve_bus
from edge_agent.protocol.clock import Clock, SystemClock
from edge_agent.protocol.errors import DeviceError

_SYSTEM_CLOCK = SystemClock()


def build_site(cfg: FieldSite, clock: Clock, seed: int) -> SiteSim:
    """The simulated devices of ``cfg`` (not yet served)."""
    site = SiteSim(clock=clock)
    for d in cfg.devices:
        if d.meter_points:
            site.meters[d.name] = MeterSim(d, seed)
        else:
            site.devices[d.name] = DeviceSim(d, seed)
    return site


async def run_site(cfg: FieldSite, *, control_path: Path | None, stop: asyncio.Event,
                   clock: Clock = _SYSTEM_CLOCK, seed: int = 0,
                   on_ready: Callable[[list[Served]], None] | None = None,
                   site: SiteSim | None = None) -> None:
    """Serve every device of ``cfg`` until ``stop`` is set, then stop servers and socat.

    ``on_ready`` is called once every bus is served (with where each one is); ``site`` lets a
    test pass a prebuilt SiteSim to inspect. Buses without devices are not served. The control
    socket is created last, so once it exists every bus is being served. If a bus's socat
    dies, everything is stopped and DeviceError raised.
    """
    sim = site if site is not None else build_site(cfg, clock, seed)
    async with contextlib.AsyncExitStack() as stack:
        served: list[Served] = []
        for bus in cfg.buses.values():
            names = [d.name for d in cfg.devices_on(bus.name)]
            meters = [sim.meters[n] for n in names if n in sim.meters]
            devices = [sim.devices[n] for n in names if n in sim.devices]
            if meters and isinstance(bus, SerialBus):
                served.append(await stack.enter_async_context(serve_meter_bus(sim, bus, meters)))
            elif devices:
                served.append(await stack.enter_async_context(serve_bus(sim, bus, devices)))
        if control_path is not None:
            await stack.enter_async_context(control_server(sim, control_path))
        if on_ready is not None:
            on_ready(served)
        await _until_stop_or_helper_exit(stop, served)


async def _until_stop_or_helper_exit(stop: asyncio.Event, served: list[Served]) -> None:
    """Wait for ``stop``; raise DeviceError if a bus's socat dies first (the bus would be dead)."""
    waits = {asyncio.create_task(s.helper.wait(), name=f"watch {s.bus}"): s
             for s in served if s.helper is not None}
    stopped = asyncio.create_task(stop.wait(), name="sim-stop")
    try:
        done, _ = await asyncio.wait([stopped, *waits], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in [stopped, *waits]:
            task.cancel()
        await asyncio.gather(stopped, *waits, return_exceptions=True)
    if stopped not in done:
        dead = next(waits[t] for t in done if t in waits)
        assert dead.helper is not None
        raise DeviceError(f"bus {dead.bus}: socat exited with status {dead.helper.returncode}; "
                          "its PTY pair is gone")

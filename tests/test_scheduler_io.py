"""The bus scheduler against a real simulated device over Modbus TCP: polls and writes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from edge_agent.config.loader import load_config
from edge_agent.drivers.bus import TcpBus
from edge_agent.drivers.modbus.transport import BusTransport
from edge_agent.drivers.sim import run_site
from edge_agent.protocol.clock import SystemClock
from edge_agent.protocol.readings import Reading
from edge_agent.runtime.scheduler import BusScheduler
from tests.support.brokers import free_port


def _site(tmp: Path, extra: str = "", port: int | None = None) -> Path:
    path = tmp / ("agent.toml" if extra else "site.toml")
    path.write_text(f"""
[gateway]
id = "gw"
[mqtt]
url = "mqtt://127.0.0.1:1"
[buses.lan]
type = "tcp"
host = "127.0.0.1"
port = {port or free_port()}
[devices.lamp]
bus = "lan"
unit_id = 3
profile = "streetlight"
poll_interval_s = 0.2
""" + extra)
    return path


Body = Callable[[BusScheduler, list[Reading]], Awaitable[None]]


async def _with_scheduler(tmp: Path, body: Body, extra: str = "") -> list[Reading]:
    sim_cfg = load_config(_site(tmp))
    lan = sim_cfg.buses["lan"]
    assert isinstance(lan, TcpBus)
    # The agent may know points the simulated device lacks.
    cfg = load_config(_site(tmp, extra, lan.port)) if extra else sim_cfg
    stop = asyncio.Event()
    ready = asyncio.Event()
    sim = asyncio.create_task(run_site(sim_cfg, control_path=None, stop=stop,
                                       on_ready=lambda _s: ready.set()))
    await asyncio.wait_for(ready.wait(), 10)
    readings: list[Reading] = []
    transport = BusTransport(cfg.buses["lan"])
    sched = BusScheduler(transport, cfg.devices_on("lan"), readings.extend, SystemClock())
    task = asyncio.create_task(sched.run())
    try:
        await body(sched, readings)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await transport.close()
        stop.set()
        await sim
    return readings


def test_a_write_lands_between_polls_and_the_next_poll_reads_it_back(tmp_path: Path) -> None:
    async def body(sched: BusScheduler, readings: list[Reading]) -> None:
        for _ in range(50):
            if readings:
                break
            await asyncio.sleep(0.1)
        result = await sched.write("lamp", "dim_command", 37)
        assert result.ok, result
        n = len(readings)
        for _ in range(50):
            if any(r.point == "dim_command" and r.value == 37 for r in readings[n:]):
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the written value was never read back")

    asyncio.run(_with_scheduler(tmp_path, body))


def test_writes_that_cannot_be_done_are_refused_with_a_reason(tmp_path: Path) -> None:
    async def body(sched: BusScheduler, _readings: list[Reading]) -> None:
        assert "read-only" in (await sched.write("lamp", "lamp_power", 5)).error
        assert "no point" in (await sched.write("lamp", "nope", 5)).error
        assert "no device" in (await sched.write("ghost", "dim_command", 5)).error
        over = await sched.write("lamp", "dim_command", 101)  # the profile says 0-100 %
        assert not over.ok and "above the profile's maximum 100" in over.error, over

    asyncio.run(_with_scheduler(tmp_path, body))


GHOST_POINT = """
[devices.lamp.extra_points.ghost]
table = "holding_register"
address = 20
type = "uint16"
"""


def test_an_address_the_device_rejects_is_learned_and_never_read_again(tmp_path: Path) -> None:
    """Holding register 20 is not in the simulated lamp: a read coalesced over it gets
    exception 2; the scheduler splits it, the lamp's own points keep their values, and once
    learned the bad address is reported without being asked for."""
    async def body(sched: BusScheduler, readings: list[Reading]) -> None:
        for _ in range(100):
            if sum(r.point == "ghost" for r in readings) >= 5:
                break
            await asyncio.sleep(0.1)
        exceptions_then = sched.transport.stats.exception_codes.get(2, 0)
        n = len(readings)
        await asyncio.sleep(1.5)
        later = readings[n:]
        assert sched.transport.stats.exception_codes.get(2, 0) == exceptions_then
        ghost = [r for r in later if r.point == "ghost"]
        assert ghost and all(r.exception_code == 2 for r in ghost)
        assert any(r.point == "dim_command" and r.value is not None for r in later)

    asyncio.run(_with_scheduler(tmp_path, body, GHOST_POINT))

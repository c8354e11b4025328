"""A Modbus read cancelled as its reply arrives is still cancelled; a close fails a read at once.

Against the simulator over TCP, through the real pymodbus client. The read's task is cancelled
from inside pymodbus's reply callback, right after it completes the reply future: the one loop
turn in which Python 3.11's ``asyncio.wait_for`` (which pymodbus waits with) returns the reply
and drops the cancel. ``BusTransport`` must raise the cancel itself; without that, a poller
stopped at that moment polls on forever (the hang at stop and at config switches). No timing
luck involved: the cancel lands in that turn every time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.loader import load_config
from edge_agent.drivers.bus import TcpBus
from edge_agent.drivers.modbus.planner import plan_reads
from edge_agent.drivers.modbus.transport import BusTransport
from edge_agent.drivers.model import ReadRequest
from tests.support.sitekit import control, write_site
from tests.support.stopkit import tcp_simulator

pytestmark = pytest.mark.integration


def _lan(tmp: Path) -> tuple[Path, TcpBus, ReadRequest]:
    """A site with one meter on the TCP bus; the bus and a read the meter answers."""
    site = write_site(tmp, [("m", "lan", 1, "energy_meter")])
    cfg = load_config(site)
    bus = cfg.buses["lan"]
    assert isinstance(bus, TcpBus)
    return site, bus, plan_reads(cfg.devices[0].points[:1], max_gap=0)[0]


def _cancel_with_the_reply(transport: BusTransport, task: asyncio.Task[Any]) -> Callable[[], int]:
    """Make pymodbus cancel ``task`` right after it completes the next reply future."""
    ctx: Any = transport._client.ctx
    original = ctx.callback_data
    fired = [0]

    def callback_data(data: bytes, addr: tuple[str, int] | None = None) -> int:
        used = int(original(data, addr))
        if not fired[0] and ctx.response_future.done():
            fired[0] = 1
            task.cancel()   # the reply is set; wait_for's task has not run yet
        return used

    ctx.callback_data = callback_data
    return lambda: fired[0]


def test_a_cancel_landing_with_the_reply_still_cancels_the_read(tmp_path: Path) -> None:
    site, bus, req = _lan(tmp_path)

    async def main() -> tuple[bool, int, bool]:
        transport = BusTransport(bus)
        try:
            assert (await transport.read_request(1, req)).ok   # connected, warm
            task = asyncio.ensure_future(transport.read_request(1, req))
            fired = _cancel_with_the_reply(transport, task)
            try:
                reply = await task
                cancelled = False
                assert reply.ok  # the reply won and the cancel was lost
            except asyncio.CancelledError:
                cancelled = True
            # The bus is usable afterwards: the lock was released, the connection kept.
            again = await transport.read_request(1, req)
            return cancelled, fired(), again.ok
        finally:
            await transport.close()

    with tcp_simulator(site, tmp_path / "sim.log"):
        cancelled, fired, again = asyncio.run(main())
    assert fired == 1
    assert cancelled, "the cancel was swallowed: the read returned its reply instead"
    assert again


def test_closing_the_bus_fails_a_read_in_flight_at_once_and_refuses_the_next(
        tmp_path: Path) -> None:
    site, bus, req = _lan(tmp_path)
    sock = tmp_path / "sim.sock"

    async def main() -> tuple[str | None, float, str | None]:
        transport = BusTransport(bus)
        assert (await transport.read_request(1, req)).ok
        control(sock, {"device": "m", "fault": "silent"})
        read = asyncio.ensure_future(transport.read_request(1, req, attempts=1))
        await asyncio.sleep(0.1)   # on the wire, waiting for a reply that will not come
        started = time.monotonic()
        await transport.close()
        reply = await asyncio.wait_for(read, 5)
        took = time.monotonic() - started
        later = await transport.read_request(1, req)
        return reply.error, took, later.error

    with tcp_simulator(site, tmp_path / "sim.log", sock):
        error, took, later = asyncio.run(main())
    assert error is not None and "closed" in error, error
    assert took < 0.2, f"the read waited {took:.2f} s after the close (its timeout is 1 s)"
    assert later is not None and "closed" in later, later

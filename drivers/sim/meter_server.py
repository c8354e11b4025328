"""Serve simulated DL/T 645 meters on one PTY bus (a socat null-modem pair, as Modbus buses).

Every request frame on the line is offered to every meter (a multi-drop RS-485 line: each
meter hears everything); the meters whose address matches answer after their turnaround
(DL/T 645-2007 4.3.3: at least 20 ms). When more than one answers at once (a wildcard
read-address with several meters matching) their transmissions collide: the bytes on the
line are the bitwise AND of both (RS-485 idles high and a driven 0 wins), which the master
sees as a garbled frame, as on a real line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from itertools import zip_longest
from pathlib import Path
from typing import Any

import serial

from edge_agent.drivers.bus import SerialBus
from edge_agent.drivers.dlt645.frame import next_frame
from edge_agent.drivers.dlt645.timing import TURNAROUND_MIN_S
from edge_agent.drivers.sim.meter import MeterSim
from edge_agent.drivers.sim.server import Served, SiteSim, pty_pair
from edge_agent.protocol.errors import ConfigError, DeviceError


def collide(replies: Sequence[bytes]) -> bytes:
    """What the line carries when several meters transmit at once: a driven 0 wins."""
    return bytes(_and(column) for column in zip_longest(*replies, fillvalue=0xFF))


def _and(column: tuple[int, ...]) -> int:
    out = 0xFF
    for b in column:
        out &= b
    return out


class MeterLine:
    """The simulator's end of one DL/T 645 line: reads requests, writes the meters' replies."""

    def __init__(self, site: SiteSim, meters: Sequence[MeterSim], port: Any,
                 turnaround_s: float = TURNAROUND_MIN_S) -> None:
        self.site = site
        self.meters = list(meters)
        self.port = port
        self.turnaround_s = turnaround_s
        self._buf = b""
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()

    def on_readable(self) -> None:
        """Take what arrived and queue the replies it calls for."""
        try:
            self._buf += self.port.read(4096)
        except (OSError, serial.SerialException):
            return
        while True:
            step = next_frame(self._buf)
            self._buf = step.rest
            if step.frame is None and step.rejected is None:
                return
            if step.frame is None:
                continue  # a garbled request: no meter answers it
            t = self.site.now()
            replies = [r for m in self.meters if (r := m.answer(step.frame, t)) is not None]
            if replies:
                self._queue.put_nowait(replies[0] if len(replies) == 1 else collide(replies))

    async def send_replies(self) -> None:
        """Write each queued reply after the meters' turnaround, one at a time."""
        while True:
            reply = await self._queue.get()
            await asyncio.sleep(self.turnaround_s)
            with contextlib.suppress(OSError, serial.SerialException):
                self.port.write(reply)


@contextlib.asynccontextmanager
async def serve_meter_bus(site: SiteSim, bus: SerialBus, meters: Sequence[MeterSim]
                          ) -> AsyncIterator[Served]:
    """Serve ``meters`` on the PTY named by ``bus.port`` until the context exits."""
    if "://" in bus.port:
        raise ConfigError(f"bus {bus.name!r}: DL/T 645 meters are simulated on a PTY (a device "
                          f"path), not {bus.port!r}")
    agent_link = Path(os.path.abspath(bus.port))
    sim_link = Path(f"{agent_link}.sim")
    where = f"pty {bus.port} (simulator end {bus.port}.sim, parity N, DL/T 645)"
    async with pty_pair(agent_link, sim_link) as socat:
        try:
            # Linux PTYs reject even parity: the simulator's end is always parity N.
            port = serial.serial_for_url(str(sim_link), baudrate=bus.baudrate, parity="N",
                                         stopbits=bus.stopbits, timeout=0)
        except (OSError, serial.SerialException) as exc:
            raise DeviceError(f"cannot open the simulator end {sim_link}: {exc}") from None
        line = MeterLine(site, meters, port)
        loop = asyncio.get_running_loop()
        loop.add_reader(port.fileno(), line.on_readable)
        writer = asyncio.create_task(line.send_replies(), name=f"meters {bus.name}")
        try:
            yield Served(bus.name, where, [m.name for m in meters], socat)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            loop.remove_reader(port.fileno())
            port.close()

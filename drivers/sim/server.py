"""pymodbus servers and socat PTY pairs that put simulated devices on a bus.

Each configured bus gets one server carrying all of its devices (a list of ``SimDevice``: a
multi-drop line). The pymodbus hooks do the rest:

- the device ``action`` copies the current register image into pymodbus's register list before
  every request, applies writes to read-write points and answers the exception fault;
- ``trace_pdu`` counts requests per unit id and turns every reply of a device in exception fault
  into that exception (also for addresses pymodbus rejects before calling the action);
- ``trace_packet`` drops replies (silent fault, and unknown unit ids on RTU lines, where a real
  bus stays silent instead of answering exception 4) and corrupts the CRC (bad_crc fault);
- on RTU lines both hooks show every frame (requests, and replies that go out) to the devices
  in the libmodbus fault, which discard the frame after another unit's request as libmodbus's
  RTU slave does (``sim.confirmation``): a request they discard gets no reply.

On RTU lines unit id 0 is a broadcast (Modbus over serial line V1.02, 2.1): every device
executes the write and none replies. Bit tables have no holes in pymodbus, so a read of an
undefined coil or discrete input that starts at a defined one returns False for the hole.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.simulator import DataType, SimData, SimDevice

from edge_agent.drivers.bus import SerialBus, TcpBus, TcpFraming
from edge_agent.drivers.model import Table
from edge_agent.drivers.sim.device import DeviceSim, Fault
from edge_agent.drivers.sim.meter import MeterSim
from edge_agent.drivers.sim.spec import SpecSerialServer, SpecTcpServer
from edge_agent.protocol.clock import Clock
from edge_agent.protocol.errors import ConfigError, DeviceError

# Function code -> table it addresses (Modbus application protocol V1.1b3, 6).
FC_TABLE: dict[int, Table] = {
    1: Table.COIL, 5: Table.COIL, 15: Table.COIL,
    2: Table.DISCRETE_INPUT,
    3: Table.HOLDING_REGISTER, 6: Table.HOLDING_REGISTER, 16: Table.HOLDING_REGISTER,
    22: Table.HOLDING_REGISTER, 23: Table.HOLDING_REGISTER,
    4: Table.INPUT_REGISTER,
}
# SimDevice's tuple of blocks: (coils, discrete inputs, holding registers, input registers).
BLOCK_ORDER = (Table.COIL, Table.DISCRETE_INPUT, Table.HOLDING_REGISTER, Table.INPUT_REGISTER)
SOCAT_READY = b"starting data transfer loop"


@dataclass
class SiteSim:
    """All simulated devices of a site plus the shared simulated clock and freeze switch."""

    clock: Clock
    devices: dict[str, DeviceSim] = field(default_factory=dict)
    meters: dict[str, MeterSim] = field(default_factory=dict)  # DL/T 645 meters
    frozen_at: float | None = None

    def now(self) -> float:
        """Model time: the clock, or the moment of freezing while frozen."""
        return self.frozen_at if self.frozen_at is not None else self.clock.now()

    def freeze(self, on: bool) -> None:
        """Stop (or restart) value evolution so a test can compare readings."""
        self.frozen_at = (self.frozen_at if self.frozen_at is not None else self.clock.now()) \
            if on else None

    def device(self, name: str) -> DeviceSim | MeterSim:
        """The device (or meter) called ``name``; KeyError with the known names otherwise."""
        found = self.devices.get(name) or self.meters.get(name)
        if found is None:
            raise KeyError(f"no simulated device {name!r} "
                           f"(devices: {', '.join([*self.devices, *self.meters])})")
        return found


def _register_blocks(dev: DeviceSim, table: Table, cells: dict[int, int | bool]) -> list[SimData]:
    """SimData runs for a register table; read-only unless every address is writable."""
    if not cells:
        return [SimData(address=0, count=1, datatype=DataType.INVALID)]
    out: list[SimData] = []
    run: list[int] = []
    start = ro = None
    for a in sorted(cells):
        a_ro = a not in dev.writable[table]
        if run and start is not None and (a != start + len(run) or a_ro != ro):
            out.append(SimData(address=start, values=run, datatype=DataType.REGISTERS,
                               readonly=bool(ro)))
            run = []
        if not run:
            start, ro = a, a_ro
        run.append(int(cells[a]))
    assert start is not None
    out.append(SimData(address=start, values=run, datatype=DataType.REGISTERS, readonly=bool(ro)))
    return out


def _bit_blocks(cells: dict[int, int | bool]) -> list[SimData]:
    """SimData runs for a bit table (pymodbus does not mark bit gaps invalid; see the action)."""
    if not cells:
        return [SimData(address=0, values=[False], datatype=DataType.BITS)]
    addrs = sorted(cells)
    out: list[SimData] = []
    run: list[bool] = []
    start = addrs[0]
    for a in addrs:
        if run and a != start + len(run):
            out.append(SimData(address=start, values=run, datatype=DataType.BITS))
            run = []
        if not run:
            start = a
        run.append(bool(cells[a]))
    out.append(SimData(address=start, values=run, datatype=DataType.BITS))
    return out


def _fill(table: Table, cells: dict[int, int | bool], start: int, registers: list[int]) -> None:
    """Copy the image into pymodbus's list for the block (bits are packed 16 per register)."""
    if table.is_bit:
        for a, v in cells.items():
            i, b = a // 16 - start, a % 16
            registers[i] = (registers[i] & ~(1 << b)) | (int(bool(v)) << b)
    else:
        for a, v in cells.items():
            registers[a - start] = int(v)


def build_sim_device(site: SiteSim, dev: DeviceSim) -> SimDevice:
    """A pymodbus SimDevice serving ``dev``'s image, with the action that keeps it current."""
    image = dev.image(site.now())
    tables = dev.tables()

    async def action(function_code: int, start_address: int, address: int, _count: int,
                     registers: list[int], set_values: list[int] | list[bool] | None
                     ) -> ExcCodes | None:
        """Refresh the block from the image before pymodbus answers; apply writes first."""
        if dev.fault is Fault.EXCEPTION:
            return ExcCodes(dev.exception_code)
        table = FC_TABLE[function_code]
        # A table without points, or a bit address outside the points: illegal data address
        # (the rest of a bit span is checked before pymodbus sees the request: sim.spec).
        if table not in tables or (table.is_bit and address not in dev.image(site.now())[table]):
            return ExcCodes.ILLEGAL_ADDRESS
        t = site.now()
        if set_values is not None:
            code = dev.write(table, address, set_values, t)
            if code is not None:
                return ExcCodes(code)
        _fill(table, dev.image(t)[table], start_address, registers)
        return None

    blocks: list[list[SimData]] = [
        _bit_blocks(image[t]) if t.is_bit else _register_blocks(dev, t, image[t])
        for t in BLOCK_ORDER
    ]
    return SimDevice(id=dev.unit_id, simdata=(blocks[0], blocks[1], blocks[2], blocks[3]),
                     action=action)


async def _no_such_device(*_args: object) -> ExcCodes:
    # Modbus TCP gateways answer 0x0B (gateway target device failed to respond, spec 7);
    # on RTU lines trace_packet drops the reply, as a real bus stays silent.
    return ExcCodes.GATEWAY_NO_RESPONSE


def catch_all_device() -> SimDevice:
    """Device id 0: pymodbus routes unknown unit ids to it (instead of a KeyError traceback)."""
    return SimDevice(id=0, simdata=[SimData(address=0, count=65535, datatype=DataType.REGISTERS)],
                     action=_no_such_device)


class BusHooks:
    """trace_packet / trace_pdu hooks of one bus server (see the module docstring)."""

    def __init__(self, devices: Sequence[DeviceSim], *, rtu: bool,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.by_unit = {d.unit_id: d for d in devices}
        self.rtu = rtu
        self.now = now

    def _on_line(self, unit: int, *, reply: bool) -> None:
        """A frame for (or from) ``unit`` crossed the line: libmodbus-style slaves see it."""
        if not self.rtu:
            return
        at = self.now()
        for dev in self.by_unit.values():
            if dev.fault is Fault.LIBMODBUS and not (reply and dev.unit_id == unit):
                heard = dev.confirmation.hears(unit, at)
                if dev.unit_id == unit and not heard:
                    dev.discard_reply = True  # it took our request for another unit's reply

    def trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        """Count requests; force the exception fault onto every reply of a faulty device."""
        if not sending:
            self._on_line(pdu.dev_id, reply=False)
        dev = self.by_unit.get(pdu.dev_id)
        if dev is None:
            return pdu
        if not sending:
            dev.requests += 1
            return pdu
        if dev.fault is Fault.EXCEPTION and not (
                isinstance(pdu, ExceptionResponse) and pdu.exception_code == dev.exception_code):
            return ExceptionResponse(pdu.function_code, dev.exception_code,
                                     device_id=pdu.dev_id, transaction=pdu.transaction_id)
        return pdu

    def trace_packet(self, sending: bool, data: bytes) -> bytes:
        """Drop or corrupt outgoing frames; the unit id is byte 0 (RTU) or byte 6 (MBAP)."""
        if not sending or not data:
            return data
        unit = data[0] if self.rtu else data[6] if len(data) > 6 else -1
        dev = self.by_unit.get(unit)
        if dev is None:
            # Modbus over serial line V1.02, 2.2: a device that is not addressed does not reply.
            return b"" if self.rtu else data
        if dev.fault is Fault.SILENT:
            return b""
        if dev.discard_reply:
            dev.discard_reply = False
            return b""
        self._on_line(unit, reply=True)
        dev.answered += 1
        if dev.fault is Fault.BAD_CRC:
            if self.rtu:  # flip the CRC's low byte (serial line V1.02, 2.5.1.2)
                return data[:-2] + bytes([data[-2] ^ 0xFF]) + data[-1:]
            # MBAP has no CRC: a non-zero protocol identifier makes the client discard the frame.
            return data[:2] + b"\x00\x01" + data[4:]
        return data


@dataclass
class Served:
    """Where a bus is being served, for the operator and for tests.

    ``helper`` is the socat process of a PTY bus (None otherwise): if it dies, the bus is dead.
    """

    bus: str
    where: str
    devices: list[str]
    helper: asyncio.subprocess.Process | None = None


def describe_bus(bus: SerialBus | TcpBus) -> str:
    """Human text for where the simulator serves ``bus``."""
    if isinstance(bus, TcpBus):
        return f"tcp {bus.host}:{bus.port} framing {bus.framing.value}"
    if bus.port.startswith("socket://"):
        return f"tcp {bus.port[len('socket://'):]} framing rtu"
    return f"pty {bus.port} (simulator end {bus.port}.sim, parity N)"


@contextlib.asynccontextmanager
async def pty_pair(agent_link: Path, sim_link: Path
                   ) -> AsyncIterator[asyncio.subprocess.Process]:
    """A socat null-modem PTY pair linked at the two paths; stopped and unlinked on exit."""
    for link in (agent_link, sim_link):
        if not link.parent.is_dir():
            raise ConfigError(f"serial port {link}: directory {link.parent} does not exist")
        if link.exists() and not link.is_symlink():
            raise ConfigError(f"serial port {link}: a real file or device is there; "
                              "the simulator only replaces its own PTY links")
        if link.is_symlink():
            link.unlink()
    proc = await asyncio.create_subprocess_exec(
        "socat", "-d", "-d", f"pty,raw,echo=0,link={agent_link}",
        f"pty,raw,echo=0,link={sim_link}",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    log: list[bytes] = []
    drain: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(10):
            while SOCAT_READY not in (line := await proc.stderr.readline()):
                if not line:
                    raise DeviceError(f"socat for {agent_link} exited: "
                                      f"{b''.join(log).decode(errors='replace')}")
                log.append(line)
        # Keep reading socat's log so a full pipe can never block it.
        drain = asyncio.create_task(_drain(proc.stderr), name=f"socat-log {agent_link}")
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if drain is not None:
            await drain
        for link in (agent_link, sim_link):
            if link.is_symlink():
                link.unlink()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(4096):
        pass


@contextlib.asynccontextmanager
async def _running(server: SpecSerialServer | SpecTcpServer, what: str
                   ) -> AsyncIterator[None]:
    try:
        await server.serve_forever(background=True)
    except RuntimeError as exc:
        raise DeviceError(f"cannot serve {what}: {exc}") from None
    try:
        yield
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]  # unannotated in pymodbus 3.16


_Server = TypeVar("_Server", SpecTcpServer, SpecSerialServer)


def _spec(server: _Server, site: SiteSim, devices: Sequence[DeviceSim]) -> _Server:
    """``server`` checking requests for ``devices`` as the spec says (``sim.spec``)."""
    def bits(dev: DeviceSim) -> Callable[[Table, int, int], bool]:
        return lambda table, start, count: all(
            a in dev.image(site.now())[table] for a in range(start, start + count))

    server.bits_defined = {d.unit_id: bits(d) for d in devices}
    return server


def _tcp_address(url: str) -> tuple[str, int]:
    """(host, port) of a socket://host:port URL."""
    rest = url[len("socket://"):]
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"serial port {url!r}: expected socket://HOST:PORT")
    return host, int(port)


@contextlib.asynccontextmanager
async def serve_bus(site: SiteSim, bus: SerialBus | TcpBus, devices: Sequence[DeviceSim]
                    ) -> AsyncIterator[Served]:
    """Serve ``devices`` on ``bus`` until the context exits."""
    context = [build_sim_device(site, d) for d in devices] + [catch_all_device()]
    names = [d.name for d in devices]
    where = describe_bus(bus)
    if isinstance(bus, TcpBus):
        rtu = bus.framing is TcpFraming.RTU
        hooks = BusHooks(devices, rtu=rtu)
        tcp = _spec(SpecTcpServer(context, framer=FramerType.RTU if rtu else FramerType.SOCKET,
                                  address=(bus.host, bus.port), broadcast_enable=rtu,
                                  trace_packet=hooks.trace_packet, trace_pdu=hooks.trace_pdu),
                    site, devices)
        async with _running(tcp, where):
            yield Served(bus.name, where, names)
        return
    hooks = BusHooks(devices, rtu=True)
    if bus.port.startswith("socket://"):
        tcp = _spec(SpecTcpServer(context, framer=FramerType.RTU, address=_tcp_address(bus.port),
                                  broadcast_enable=True, trace_packet=hooks.trace_packet,
                                  trace_pdu=hooks.trace_pdu), site, devices)
        async with _running(tcp, where):
            yield Served(bus.name, where, names)
        return
    if "://" in bus.port:
        raise ConfigError(f"bus {bus.name!r}: cannot simulate port {bus.port!r} "
                          "(only device paths and socket://HOST:PORT)")
    agent_link = Path(os.path.abspath(bus.port))
    sim_link = Path(f"{agent_link}.sim")
    async with pty_pair(agent_link, sim_link) as socat:
        # Linux PTYs reject even and odd parity (termios EINVAL), so the simulator end is
        # always opened 8N1-style with parity N whatever the bus config says; a PTY carries
        # bytes, not bit timing, so parity and baud rate do not change what is tested.
        serial = _spec(SpecSerialServer(context, framer=FramerType.RTU, port=str(sim_link),
                                        baudrate=bus.baudrate, bytesize=bus.bytesize,
                                        parity="N", stopbits=bus.stopbits,
                                        broadcast_enable=True, trace_packet=hooks.trace_packet,
                                        trace_pdu=hooks.trace_pdu), site, devices)
        async with _running(serial, where):
            yield Served(bus.name, where, names, socat)

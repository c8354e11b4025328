"""The I/O shell around pymodbus: one client and one lock per physical bus.

Everything protocol-level (framing, CRC, MBAP) is pymodbus's. What this module adds is
what a field bus needs and pymodbus leaves out: timeouts derived from the line speed,
our own retry count (so a probe of a dead device costs one timeout, not several), the
3.5-character silence between frames on serial lines, and results as values (an
exception reply is data, not an exception). ``BusTransport`` is the Modbus
``FieldTransport`` (``edge_agent.drivers.transport``): it reads ``ReadRequest`` values and
writes ``WriteRequest`` values.

Cancellation: pymodbus waits for each reply with ``asyncio.wait_for``, which on Python 3.11
returns the reply and drops the caller's cancel when the reply lands in the same loop turn as
the cancel (fixed in 3.12, where ``wait_for`` is built on ``asyncio.timeout``). A poller
cancelled at stop would then keep polling forever; ``_exchange`` notices the lost request
(``Task.cancelling()`` went up) and raises ``CancelledError`` itself. ``close`` fails the
request in flight at once and refuses later ones, so a forced stop cannot wait on a bus.
"""

from __future__ import annotations

import asyncio
import logging
import termios
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeAlias

from pymodbus import FramerType, ModbusException
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException
from pymodbus.pdu import ExceptionResponse

from edge_agent.drivers.bus import Bus, SerialBus, TcpBus, TcpFraming
from edge_agent.drivers.modbus.timing import (
    DEFAULT_NO_REPLY_GUARD_S,
    READ_FC,
    char_time_s,
    frame_bytes,
    inter_frame_gap_s,
    no_reply_guard_s,
    reply_timeout_s,
)
from edge_agent.drivers.model import ReadRequest, Table
from edge_agent.drivers.transport import BusStats as BusStats
from edge_agent.drivers.transport import FieldTransport
from edge_agent.drivers.transport import Reply as Reply

log = logging.getLogger(__name__)

# pymodbus logs every timeout at ERROR; our scheduler reports device state itself.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

DEFAULT_TCP_TIMEOUT_S = 1.0
_REQUEST_CHARS = 8  # a read request's RTU frame (serial line V1.02, 2.5.1)


def serial_timeout_s(bus: SerialBus) -> float:
    """Reply timeout: the longest exchange at this line speed plus device turnaround."""
    return reply_timeout_s(bus)


def bus_timeout_s(bus: Bus) -> float:
    """The reply timeout used for one attempt on this bus."""
    if isinstance(bus, SerialBus):
        return serial_timeout_s(bus)
    return bus.timeout_s if bus.timeout_s is not None else DEFAULT_TCP_TIMEOUT_S


def bus_gap_s(bus: Bus) -> float:
    """The silence kept between frames on this bus (none on Modbus TCP)."""
    return inter_frame_gap_s(bus) if isinstance(bus, SerialBus) else 0.0


def bus_no_reply_guard_s(bus: Bus) -> float:
    """Silence after a request that got no reply: serial lines (and RTU over TCP) by default,
    Modbus TCP only when configured (each TCP device reads its own connection)."""
    if isinstance(bus, SerialBus):
        return no_reply_guard_s(bus)
    if bus.no_reply_guard_s is not None:
        return bus.no_reply_guard_s
    return DEFAULT_NO_REPLY_GUARD_S if bus.framing is TcpFraming.RTU else 0.0


def request_budget_s(bus: Bus) -> float:
    """The longest one read may hold this bus: what is left of the no-reply guard of the
    request before it, then every attempt timing out, each after its gap."""
    timeout = bus_timeout_s(bus)
    request_s = _REQUEST_CHARS * char_time_s(bus) if isinstance(bus, SerialBus) else 0.0
    guard_left = max(0.0, request_s + bus_no_reply_guard_s(bus) - timeout)
    return guard_left + (1 + bus.retries) * (timeout + bus_gap_s(bus))


def _request_chars(function_code: int, count: int) -> int:
    """Bytes of the RTU request frame (8 for a read) for the guard's start; 8 if out of range."""
    try:
        return frame_bytes(function_code, count)[0]
    except ValueError:
        return 8


def _no_reply_text(exc: ModbusException, timeout_s: float) -> str:
    """Why an attempt failed, in our words: pymodbus's text counts its own retries (always 0
    here: we retry ourselves) and says nothing of the wait."""
    text = str(exc)
    if "No response received" in text:
        return f"no reply within {timeout_s * 1000:.0f} ms"
    if isinstance(exc, ConnectionException):
        return "the connection is down"
    return f"no valid reply ({text})"


def _attempts_text(tries: int, retries: int) -> str:
    """'2 attempts: 1 retry, as configured' or '1 attempt (a probe)'."""
    if tries == 1 + retries:
        return (f"{tries} attempt{'s' if tries > 1 else ''}: {retries} "
                f"retr{'y' if retries == 1 else 'ies'}, as configured")
    return "1 attempt (a probe: no retries)" if tries == 1 else f"{tries} attempts"


def _cancel_requests() -> int:
    """How many cancels the running task has been asked for (0 outside a task)."""
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def _raise_lost_cancel(before: int) -> None:
    """Raise the cancel a library swallowed while we awaited it (see the module docstring)."""
    if _cancel_requests() > before:
        raise asyncio.CancelledError("cancelled during a Modbus request (the library dropped it)")


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """One Modbus write: values for consecutive coils or holding registers from ``address``."""

    table: Table
    address: int
    values: tuple[int, ...] | tuple[bool, ...]


# The transport the scheduler polls through: any FieldTransport speaking these requests.
ModbusTransport: TypeAlias = FieldTransport[ReadRequest, WriteRequest]


_READERS = {
    Table.COIL: "read_coils",
    Table.DISCRETE_INPUT: "read_discrete_inputs",
    Table.INPUT_REGISTER: "read_input_registers",
    Table.HOLDING_REGISTER: "read_holding_registers",
}


class BusTransport:
    """One physical bus: one pymodbus client, strictly one request at a time."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.timeout_s = bus_timeout_s(bus)
        self.gap_s = bus_gap_s(bus)
        self.guard_s = bus_no_reply_guard_s(bus)
        self.char_s = char_time_s(bus) if isinstance(bus, SerialBus) else 0.0
        self.stats = BusStats()
        self._lock = asyncio.Lock()
        self._last_frame_end = 0.0
        # The line stays silent until then: the no-reply guard after an unanswered request.
        self._quiet_until = 0.0
        self._closed = False
        self._client = self._make_client()

    def _make_client(self) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        # retries=0: we retry ourselves, so a probe of a dead device costs one timeout.
        if isinstance(self.bus, SerialBus):
            return AsyncModbusSerialClient(
                self.bus.port, framer=FramerType.RTU, baudrate=self.bus.baudrate,
                bytesize=self.bus.bytesize, parity=self.bus.parity.value,
                stopbits=self.bus.stopbits, timeout=self.timeout_s, retries=0,
                reconnect_delay=0.5, reconnect_delay_max=10,
            )
        assert isinstance(self.bus, TcpBus)
        framer = FramerType.RTU if self.bus.framing is TcpFraming.RTU else FramerType.SOCKET
        client = AsyncModbusTcpClient(
            self.bus.host, port=self.bus.port, framer=framer, timeout=self.timeout_s,
            retries=0, reconnect_delay=0.5, reconnect_delay_max=10,
        )
        if framer is FramerType.RTU:
            # Behind a serial-to-Ethernet converter one dead device must not make pymodbus
            # drop the connection every device shares.
            client.set_max_no_responses(1_000_000)
        return client

    @property
    def silent_probe_s(self) -> float:
        """Line time one unanswered read holds the bus beyond its timeout's (the no-reply
        guard, the later of the two); 0 where no guard is kept (a Modbus TCP bus)."""
        if not self.guard_s:
            return 0.0
        request_s = _REQUEST_CHARS * self.char_s
        return request_s + max(self.timeout_s, self.guard_s) + self.gap_s

    @property
    def connected(self) -> bool:
        """True while the underlying connection is open."""
        return bool(self._client.connected)

    async def _ensure_connected(self) -> str | None:
        if self._closed:
            return f"{self.describe()} is closed"
        if self._client.connected:
            return None
        self.stats.reconnects += 1
        before = _cancel_requests()
        try:
            ok = await self._client.connect()  # pymodbus connects inside wait_for too
        except (OSError, ModbusException, termios.error) as exc:
            # termios.error: the port refused a setting (e.g. even parity on a PTY).
            return f"cannot open {self.describe()}: {exc}"
        finally:
            _raise_lost_cancel(before)
        return None if ok else f"cannot open {self.describe()}"

    def describe(self) -> str:
        """Where the bus is, for messages."""
        if isinstance(self.bus, SerialBus):
            return f"serial port {self.bus.port}"
        return f"tcp {self.bus.host}:{self.bus.port}"

    async def read(self, unit_id: int, table: Table, address: int, count: int, *,
                   attempts: int | None = None) -> Reply:
        """Read ``count`` items of ``table`` at ``address``; by default 1 + retries attempts."""
        method = _READERS[table]

        async def call() -> object:
            return await getattr(self._client, method)(address, count=count, device_id=unit_id)

        reply = await self._exchange(call, attempts, _request_chars(READ_FC[table], count))
        if reply.ok and table.is_bit and reply.data is not None:
            # Bit replies are padded to whole bytes (spec 6.1): keep what was asked for.
            return Reply(data=reply.data[:count], latency_s=reply.latency_s)
        return reply

    async def read_request(self, unit_id: int, request: ReadRequest, *,
                           attempts: int | None = None) -> Reply:
        """Read the span of a planned request (the ``FieldTransport`` read)."""
        return await self.read(unit_id, request.table, request.address, request.count,
                               attempts=attempts)

    async def write_request(self, unit_id: int, request: WriteRequest) -> Reply:
        """Write a ``WriteRequest`` (the ``FieldTransport`` write); one attempt."""
        return await self.write(unit_id, request.table, request.address, list(request.values))

    async def write(self, unit_id: int, table: Table, address: int,
                    values: list[int] | list[bool]) -> Reply:
        """Write registers (function 16) or coils (function 15 / 5); one attempt."""
        async def call() -> object:
            if table is Table.COIL:
                if len(values) == 1:
                    return await self._client.write_coil(address, bool(values[0]),
                                                         device_id=unit_id)
                return await self._client.write_coils(address, [bool(v) for v in values],
                                                      device_id=unit_id)
            if table is Table.HOLDING_REGISTER:
                return await self._client.write_registers(address, [int(v) for v in values],
                                                          device_id=unit_id)
            raise ValueError(f"{table.value} is read-only")

        fc = (5 if len(values) == 1 else 15) if table is Table.COIL else 16
        return await self._exchange(call, 1, _request_chars(fc, len(values)))

    async def send_unanswered(self, unit_id: int, address: int) -> str | None:
        """Send a one-register holding read nobody is to answer (a scan's decoy) and wait
        until it has left the line and t3.5 after it; None, or why it was not sent."""
        async with self._lock:
            error = await self._ensure_connected()
            if error is not None:
                return error
            await self._respect_gap(guard=False)
            before = _cancel_requests()
            try:
                await self._client.read_holding_registers(
                    address, count=1, device_id=unit_id, no_response_expected=True)
            except ModbusException as exc:
                return f"cannot send on {self.describe()}: {exc}"
            finally:
                _raise_lost_cancel(before)
            self.stats.requests += 1
            # pymodbus hands the frame to the port and returns: it is on the wire until then.
            self._last_frame_end = time.monotonic() + _REQUEST_CHARS * self.char_s
            return None

    async def _exchange(self, call: Callable[[], Awaitable[object]],
                        attempts: int | None, request_chars: int = 8) -> Reply:
        tries = attempts if attempts is not None else 1 + self.bus.retries
        async with self._lock:
            error = await self._ensure_connected()
            if error is not None:
                self.stats.last_error = error
                return Reply(error=error)
            started = time.monotonic()
            try:
                for attempt in range(tries):
                    # A retry follows its unanswered attempt at once: a slave waiting for
                    # that unit's reply takes the retry for it and is then in step again.
                    await self._respect_gap(guard=attempt == 0)
                    if self._closed:  # pymodbus would reconnect a closed client by itself
                        error = f"{self.describe()} is closed"
                        break
                    self.stats.requests += 1
                    if attempt:
                        self.stats.retries += 1
                    before = _cancel_requests()
                    sent_at = time.monotonic()
                    try:
                        rr = await call()
                    except ModbusException as exc:
                        if self._closed:  # failed by close(): no retry on a closed bus
                            error = f"{self.describe()} closed during the request"
                            break
                        self.stats.timeouts += 1
                        error = _no_reply_text(exc, self.timeout_s)
                        # A slave of another stack may still be waiting for this unit's reply
                        # and would take our next frame for it: keep the line silent.
                        self._quiet_until = sent_at + request_chars * self.char_s + self.guard_s
                        continue
                    finally:
                        self._last_frame_end = time.monotonic()
                        _raise_lost_cancel(before)
                    self.stats.replies += 1
                    if attempt:
                        # A slave that took the retry for the first attempt's reply now
                        # hears this reply as another unit's frame and waits again.
                        self._quiet_until = time.monotonic() + self.guard_s
                    if isinstance(rr, ExceptionResponse):
                        code = int(rr.exception_code)
                        self.stats.exceptions += 1
                        codes = self.stats.exception_codes
                        codes[code] = codes.get(code, 0) + 1
                        return Reply(exception_code=code, latency_s=time.monotonic() - started)
                    data = getattr(rr, "registers", None) or getattr(rr, "bits", None) or []
                    return Reply(data=list(data), latency_s=time.monotonic() - started)
                error = f"{error or 'no reply'} ({_attempts_text(tries, self.bus.retries)})"
                self.stats.last_error = error
                return Reply(error=error, latency_s=time.monotonic() - started)
            finally:
                self.stats.busy_s += time.monotonic() - started

    async def _respect_gap(self, *, guard: bool = True) -> None:
        # pymodbus's async client writes a request the moment it is called: nothing in it
        # keeps the t3.5 silence after the previous frame (serial line V1.02, 2.5.1.1), nor
        # the no-reply guard after an unanswered request (see ``modbus.timing``).
        now = time.monotonic()
        quiet_until = self._quiet_until if guard else 0.0
        wait = max(self._last_frame_end + self.gap_s, quiet_until) - now
        if quiet_until > now:
            self.stats.guard_waits += 1
        if wait > 0:
            await asyncio.sleep(wait)

    async def close(self) -> None:
        """Close for good: the request in flight fails now, later ones are refused (idempotent)."""
        self._closed = True
        self._client.close()
        # pymodbus's close leaves a pending reply future waiting out its timeout: fail it, so
        # a stop that closes the bus does not wait for the timeout.
        pending = getattr(self._client.ctx, "response_future", None)
        if isinstance(pending, asyncio.Future) and not pending.done():
            pending.set_exception(ConnectionException(f"{self.describe()} closed"))
            pending.exception()  # retrieved: with no request waiting, asyncio would warn

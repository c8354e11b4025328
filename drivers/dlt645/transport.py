"""The I/O shell for DL/T 645 meters: one serial port, one request at a time, replies as values.

``MeterTransport`` is the DL/T 645 ``FieldTransport`` (``edge_agent.drivers.transport``): it
reads ``MeterRead`` values for a meter whose address is the ``unit_id`` (the number its
twelve digits spell). Framing is ``frame``'s; this module only moves bytes: the port is
opened through pyserial (a device path or ``socket://``) without blocking, bytes arrive
through the event loop's reader callback, and each request waits for its reply no longer
than the timing model allows (``timing.first_byte_timeout_s``: the request, then at most
500 ms until the meter starts, 4.3.3). A reply with the follow-up bit (后续帧) is completed
with read-follow-up requests (function 12) before it is returned.

Outcomes: the data after the identifier (``Reply.data``, one int per byte), the meter's
error byte of an abnormal reply (``Reply.exception_code``), or ``Reply.error`` for silence,
a bad checksum, a reply that does not fit the request, or a port that cannot be opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import serial

from edge_agent.drivers.bus import SerialBus
from edge_agent.drivers.dlt645.frame import (
    READ_DATA,
    READ_FOLLOW,
    Frame,
    error_text,
    next_frame,
    read_follow_request,
    read_request,
)
from edge_agent.drivers.dlt645.planner import MeterRead
from edge_agent.drivers.dlt645.timing import MAX_READ_DATA, first_byte_timeout_s, frame_time_s
from edge_agent.drivers.transport import BusStats, FieldTransport, Reply

log = logging.getLogger(__name__)

# Slack on top of the longest reply's wire time once a reply has begun: USB-serial adapters
# deliver bytes in batches of about 16 ms.
REPLY_MARGIN_S = 0.05
MAX_FRAME = 4 + 12 + 255      # preamble + envelope + the largest data field (4.2.4)
MAX_BUFFER = 4 * MAX_FRAME
MAX_FOLLOW_FRAMES = 16      # a reply continued beyond this many frames is refused
READ_ONLY = ("DL/T 645 meters are read here, not written: a write needs the meter's "
             "password and operator code")

# The DL/T 645 transport the meter scheduler polls through (meters take no writes here).
MeterTransportT: TypeAlias = FieldTransport[MeterRead, None]


def meter_address(unit_id: int) -> str:
    """A meter's twelve address digits from the number they spell."""
    return f"{unit_id:012d}"


@dataclass(slots=True)
class Heard:
    """Everything that came back after one request: whole frames and rejected candidates."""

    frames: list[Frame] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    bytes_seen: int = 0


def check_reply(frame: Frame, address: str, function: int, di: int) -> Reply | None:
    """The outcome ``frame`` carries for a request, or None if it is no reply to it."""
    if not frame.from_meter or frame.function != function or frame.address != address:
        return None
    if frame.abnormal:
        code = frame.data[0] if frame.data else 0
        return Reply(exception_code=code)
    if len(frame.data) < 4 or int.from_bytes(frame.data[:4], "little") != di:
        return Reply(error=f"reply for identifier {frame.data[:4][::-1].hex().upper()}, "
                           f"not {di:08X}")
    return Reply(data=list(frame.data[4:]))


def attempt_s(bus: SerialBus) -> float:
    """The worst case of one attempt: a silent meter is given up after the first byte's wait,
    an answering one may take the longest reply's wire time more."""
    return first_byte_timeout_s(bus) + frame_time_s(bus) + REPLY_MARGIN_S


def request_budget_s(bus: SerialBus) -> float:
    """The longest one read may hold this line: every attempt at its worst."""
    return (1 + bus.retries) * attempt_s(bus)


class MeterTransport:
    """One physical DL/T 645 line: one pyserial port, strictly one request at a time."""

    def __init__(self, bus: SerialBus) -> None:
        self.bus = bus
        self.first_byte_s = first_byte_timeout_s(bus)
        self.timeout_s = attempt_s(bus)
        self.gap_s = 0.0  # no silent-gap framing in DL/T 645 (frames carry their length)
        self.stats = BusStats()
        self._lock = asyncio.Lock()
        self._port: Any = None
        self._buf = bytearray()
        self._arrived = asyncio.Event()
        self._closed = False

    @property
    def connected(self) -> bool:
        """True while the port is open."""
        return self._port is not None

    def describe(self) -> str:
        """Where the bus is, for messages."""
        return f"serial port {self.bus.port} (DL/T 645)"

    def _open(self) -> str | None:
        if self._closed:
            return f"{self.describe()} is closed"
        if self._port is not None:
            return None
        self.stats.reconnects += 1
        try:
            port = serial.serial_for_url(
                self.bus.port, baudrate=self.bus.baudrate, bytesize=self.bus.bytesize,
                parity=self.bus.parity.value, stopbits=self.bus.stopbits, timeout=0)
        except (OSError, ValueError, serial.SerialException) as exc:
            return f"cannot open {self.describe()}: {exc}"
        if not hasattr(port, "fileno"):  # pyserial's rfc2217:// client has no descriptor
            port.close()
            return f"cannot open {self.describe()}: the port has no file descriptor to poll"
        try:
            asyncio.get_running_loop().add_reader(port.fileno(), self._on_readable)
        except (OSError, ValueError) as exc:
            port.close()
            return f"cannot open {self.describe()}: {exc}"
        self._port = port
        return None

    def _on_readable(self) -> None:
        try:
            chunk = self._port.read(4096)
        except (OSError, serial.SerialException) as exc:
            self.stats.last_error = f"{self.describe()}: {exc}"
            self._drop()
            return
        if chunk:
            self._buf += chunk
            if len(self._buf) > MAX_BUFFER:  # noise that never makes a frame: keep the tail
                del self._buf[:-MAX_FRAME]
            self._arrived.set()

    def _drop(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(port.fileno())
            port.close()
        self._arrived.set()

    async def _listen(self, first_byte_s: float, *, until_frame: bool,
                      reply_data: int = MAX_READ_DATA) -> Heard:
        """Collect frames: stop at the first meter frame (``until_frame``) or when quiet."""
        heard = Heard()
        deadline = time.monotonic() + first_byte_s
        started = False
        while True:
            while True:
                step = next_frame(bytes(self._buf))
                consumed = len(self._buf) - len(step.rest)
                heard.bytes_seen += consumed
                del self._buf[:consumed]
                if step.rejected is not None:
                    heard.rejected.append(step.rejected)
                elif step.frame is not None:
                    heard.frames.append(step.frame)
                    if until_frame and step.frame.from_meter:
                        return heard
                else:
                    break
            left = deadline - time.monotonic()
            if left <= 0 or self._port is None:
                heard.bytes_seen += len(self._buf)
                return heard
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)
            if self._buf and not started:
                # The reply began: allow the longest reply's wire time from here (4.3.3).
                started = True
                deadline = time.monotonic() + frame_time_s(self.bus, reply_data) \
                    + REPLY_MARGIN_S

    async def _send(self, request: bytes) -> str | None:
        error = self._open()
        if error is not None:
            return error
        self._buf.clear()  # a late reply to an earlier request is no reply to this one
        try:
            self._port.write(request)
        except (OSError, serial.SerialException) as exc:
            self._drop()
            return f"{self.describe()}: {exc}"
        self.stats.requests += 1
        return None

    async def transact(self, request: bytes, *, until_frame: bool = True,
                       listen_s: float | None = None,
                       reply_data: int = MAX_READ_DATA) -> tuple[Heard, str | None]:
        """Send ``request`` and collect what comes back (the scan's raw exchange).

        ``listen_s`` is the wait for a first byte, ``reply_data`` the longest data field a
        reply may carry (after a first byte, the wait ends once such a reply could be over).
        """
        async with self._lock:
            started = time.monotonic()
            try:
                error = await self._send(request)
                if error is not None:
                    self.stats.last_error = error
                    return Heard(), error
                heard = await self._listen(listen_s or self.first_byte_s,
                                           until_frame=until_frame, reply_data=reply_data)
                return heard, None
            finally:
                self.stats.busy_s += time.monotonic() - started

    async def _read_once(self, address: str, di: int) -> Reply:
        data = bytearray()
        request, function = read_request(address, di), READ_DATA
        for seq in range(MAX_FOLLOW_FRAMES + 1):
            error = await self._send(request)
            if error is not None:
                return Reply(error=error)
            heard = await self._listen(self.first_byte_s, until_frame=True)
            frame = next((f for f in heard.frames if f.from_meter), None)
            if frame is None:
                if heard.rejected:
                    return Reply(error=f"garbled reply: {heard.rejected[0]}")
                return Reply(error="no reply" if not heard.bytes_seen else
                             f"incomplete reply ({heard.bytes_seen} bytes)")
            outcome = check_reply(frame, address, function, di)
            if outcome is None:
                return Reply(error=f"unexpected frame: control {frame.control:02X} from "
                                   f"address {frame.address}")
            if outcome.data is None:
                return outcome
            # A follow-up reply's data ends with its frame sequence number (SEQ).
            chunk = bytes(outcome.data)
            data += chunk[:-1] if function == READ_FOLLOW else chunk
            if not frame.follows:
                return Reply(data=list(data))
            request, function = read_follow_request(address, di, seq + 1), READ_FOLLOW
        return Reply(error=f"more than {MAX_FOLLOW_FRAMES} follow-up frames")

    async def read_request(self, unit_id: int, request: MeterRead, *,
                           attempts: int | None = None) -> Reply:
        """Read one identifier of the meter at ``unit_id``; by default 1 + retries attempts."""
        tries = attempts if attempts is not None else 1 + self.bus.retries
        address = meter_address(unit_id)
        async with self._lock:
            started = time.monotonic()
            reply = Reply(error="no attempt")
            try:
                for attempt in range(tries):
                    if attempt:
                        self.stats.retries += 1
                    reply = await self._read_once(address, request.di)
                    if reply.error is None:
                        self.stats.replies += 1
                        break
                    self.stats.timeouts += 1
                    self.stats.last_error = reply.error
                if reply.exception_code is not None:
                    self.stats.exceptions += 1
                    codes = self.stats.exception_codes
                    codes[reply.exception_code] = codes.get(reply.exception_code, 0) + 1
                    log.debug("meter %s refused %08X: %s", address, request.di,
                              error_text(reply.exception_code))
                return Reply(data=reply.data, exception_code=reply.exception_code,
                             error=reply.error, latency_s=time.monotonic() - started)
            finally:
                self.stats.busy_s += time.monotonic() - started

    async def write_request(self, unit_id: int, request: None) -> Reply:
        """Meters take no writes from the gateway (see ``READ_ONLY``)."""
        return Reply(error=READ_ONLY)

    async def close(self) -> None:
        """Close the port for good (safe to call twice)."""
        self._closed = True
        self._drop()


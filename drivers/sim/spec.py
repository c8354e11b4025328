"""The simulators' requests checked as the Modbus specification says, before pymodbus sees them.

Modbus application protocol V1.1b3, 6 and 7: a server answers a request it cannot serve with
an exception response, the request's function code with its high bit set and an exception
code: 01 for a function it does not implement, 03 for a quantity (or byte count, or coil
value) out of range, 02 for addresses it does not have. pymodbus 3.16's server (upstream, not
ours) gets several of these wrong, so the simulators check each request here first:

- a read with quantity 0 or 126 (function 3) or 2001 coils (function 1) fails pymodbus's PDU
  decoding, and its server answers function ``0x80`` with exception 1; here: ``0x83`` / ``0x81``
  with exception 3 (spec 6.1-6.4: "quantity ... ExceptionCode = 03");
- an undefined function code over Modbus TCP gets ``80 01`` from pymodbus; here
  ``(fc | 0x80) 01`` (``C1 01`` for 0x41);
- over RTU pymodbus cannot delimit a frame with an undefined function code: it answers
  nothing and keeps the bytes, so the next valid request is lost too. Here such a frame is
  delimited by the first CRC that fits (checked by pymodbus's own ``FramerRTU``) and answered
  ``(fc|0x80) 01``, and the next request is served (frames of the checked functions are
  delimited by their own length, so a partly received one is never cut short);
- a read of coils or discrete inputs that starts at a defined bit but reaches undefined ones
  returns data from pymodbus (its bit blocks have no holes, and a device action is told the
  span in 16-bit registers, not bits); here any undefined bit in the span of a read or write
  of bits is answered exception 2 (spec 6.1, 6.2, 6.5, 6.11).

Function codes pymodbus knows but the simulated devices do not check here (8, 43 ...) are left
to pymodbus as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler

from edge_agent.drivers.model import Table

ILLEGAL_FUNCTION = 1
ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3
BROADCAST = 0
MAX_RTU_ADU = 256  # serial line V1.02, 2.5.1: an RTU frame is at most 256 bytes
_MBAP = 7          # transaction id, protocol id, length, unit id (TCP V1.0b, 3.1.3)


def _u16(pdu: bytes, at: int) -> int:
    return int.from_bytes(pdu[at:at + 2], "big")


def _span(pdu: bytes, most: int) -> int | None:
    """03 if the quantity at byte 3 is outside 1..most; 02 if the span passes 0xFFFF."""
    qty = _u16(pdu, 3)
    if not 1 <= qty <= most:
        return ILLEGAL_VALUE
    return ILLEGAL_ADDRESS if _u16(pdu, 1) + qty > 0x10000 else None


def _read(most: int) -> Callable[[bytes], int | None]:
    def check(pdu: bytes) -> int | None:
        return ILLEGAL_VALUE if len(pdu) != 5 else _span(pdu, most)
    return check


def _write_coil(pdu: bytes) -> int | None:
    # 6.5: the output value is 0x0000 or 0xFF00, nothing else.
    return None if len(pdu) == 5 and _u16(pdu, 3) in (0x0000, 0xFF00) else ILLEGAL_VALUE


def _write_register(pdu: bytes) -> int | None:
    return None if len(pdu) == 5 else ILLEGAL_VALUE


def _write_multiple(most: int, bytes_for: Callable[[int], int]) -> Callable[[bytes], int | None]:
    def check(pdu: bytes) -> int | None:
        if len(pdu) < 6 or pdu[5] != bytes_for(_u16(pdu, 3)) or len(pdu) != 6 + pdu[5]:
            return ILLEGAL_VALUE
        return _span(pdu, most)
    return check


def _mask_write(pdu: bytes) -> int | None:
    return None if len(pdu) == 7 else ILLEGAL_VALUE


def _read_write(pdu: bytes) -> int | None:
    # 6.17: read quantity 1..0x7D, write quantity 1..0x79, byte count 2 x write quantity.
    if len(pdu) < 10 or len(pdu) != 10 + pdu[9]:
        return ILLEGAL_VALUE
    rq, wq = _u16(pdu, 3), _u16(pdu, 7)
    if not (1 <= rq <= 0x7D and 1 <= wq <= 0x79 and pdu[9] == 2 * wq):
        return ILLEGAL_VALUE
    if _u16(pdu, 1) + rq > 0x10000 or _u16(pdu, 5) + wq > 0x10000:
        return ILLEGAL_ADDRESS
    return None


# Function code -> its checks, in the order of the spec's state diagrams (6.1-6.17).
CHECKS: dict[int, Callable[[bytes], int | None]] = {
    1: _read(0x7D0), 2: _read(0x7D0), 3: _read(0x7D), 4: _read(0x7D),
    5: _write_coil, 6: _write_register,
    15: _write_multiple(0x7B0, lambda n: (n + 7) // 8),
    16: _write_multiple(0x7B, lambda n: 2 * n),
    22: _mask_write, 23: _read_write,
}


def request_exception(pdu: bytes, known: Callable[[int], bool]) -> int | None:
    """The exception code a request PDU (function code and data) must be answered with
    before any device lookup, or None to serve it; ``known`` says whether pymodbus serves an
    unchecked function code."""
    if not pdu:
        return ILLEGAL_VALUE
    fc = pdu[0]
    check = CHECKS.get(fc)
    if check is not None:
        return check(pdu)
    return None if fc < 0x80 and known(fc) else ILLEGAL_FUNCTION


# Function codes that address bits -> their table; a write of one coil spans one bit.
BIT_FUNCTIONS = {1: Table.COIL, 2: Table.DISCRETE_INPUT, 5: Table.COIL, 15: Table.COIL}
# Whether every bit of (table, start, count) is one the device has.
BitsDefined = Callable[[Table, int, int], bool]


def bits_exception(pdu: bytes, defined: BitsDefined) -> int | None:
    """02 if a well-formed bit request reaches a bit the device does not have."""
    table = BIT_FUNCTIONS.get(pdu[0])
    if table is None:
        return None
    count = 1 if pdu[0] == 5 else _u16(pdu, 3)
    return None if defined(table, _u16(pdu, 1), count) else ILLEGAL_ADDRESS


def rtu_request_end(data: bytes) -> int:
    """Length of the whole, CRC-valid request frame at the start of ``data``, 0 if none (yet).

    The functions checked here have a length their own bytes give (serial line V1.02: the
    frame is delimited by silence, which a byte stream does not show); any other function
    code's frame is delimited by the first CRC that fits (``rtu_frame_end``).
    """
    if len(data) < 2:
        return 0
    fc = data[1]
    if fc in (1, 2, 3, 4, 5, 6):
        end = 8
    elif fc in (15, 16):
        end = 9 + data[6] if len(data) > 6 else 0
    elif fc == 22:
        end = 10
    elif fc == 23:
        end = 13 + data[10] if len(data) > 10 else 0
    else:
        return rtu_frame_end(data)
    if not end or len(data) < end:
        return 0
    crc = int.from_bytes(data[end - 2:end], "big")
    return end if FramerRTU.check_CRC(data[:end - 2], crc) else 0


def rtu_frame_end(data: bytes) -> int:
    """Length of the first CRC-valid frame at the start of ``data`` (0 if none yet)."""
    for end in range(4, min(len(data), MAX_RTU_ADU) + 1):
        if FramerRTU.check_CRC(data[:end - 2], int.from_bytes(data[end - 2:end], "big")):
            return end
    return 0


class SpecHandler(ServerRequestHandler):
    """pymodbus's per-connection handler with the checks above in front of it."""

    bits_defined: dict[int, BitsDefined] = {}  # noqa: RUF012  (set per handler)

    def _known(self, fc: int) -> bool:
        return self.server.decoder.lookupPduClass(bytes([0, fc])) is not None

    def callback_data(self, data: bytes, addr: tuple[str, int] | None = None) -> int:
        """Answer a request the spec refuses ourselves; hand the rest to pymodbus."""
        rtu = isinstance(self.framer, FramerRTU)
        if rtu:
            used = rtu_request_end(data)
            unit, tid, pdu = (data[0], 0, data[1:used - 2]) if used else (-1, 0, b"")
            if not used and len(data) >= MAX_RTU_ADU:
                return len(data)  # no frame in a whole ADU's bytes: line noise, dropped
        elif isinstance(self.framer, FramerSocket) and len(data) >= _MBAP:
            used = 6 + _u16(data, 4) if len(data) >= 6 + _u16(data, 4) else 0
            unit, tid, pdu = data[6], _u16(data, 0), data[_MBAP:used]
        else:
            used, unit, tid, pdu = 0, -1, 0, b""
        defined = self.bits_defined.get(unit)
        if not used or (defined is None and unit != BROADCAST):
            return int(super().callback_data(data, addr))
        code = request_exception(pdu, self._known)
        if code is None and defined is not None:
            code = bits_exception(pdu, defined)
        if code is None:
            return int(super().callback_data(data, addr))
        if not (rtu and unit == BROADCAST):  # no reply to a broadcast (serial line 2.1)
            fc = pdu[0] if pdu else 0
            self.server_send(  # type: ignore[no-untyped-call]  # unannotated in pymodbus 3.16
                ExceptionResponse(fc & 0x7F, code, device_id=unit, transaction=tid), addr)
        return used


class _SpecConnections:
    """What both spec servers add to pymodbus's: each connection's handler is a SpecHandler
    checking requests for the units of ``bits_defined``."""

    bits_defined: dict[int, BitsDefined] = {}  # noqa: RUF012  (set per server)
    trace_packet: Any
    trace_pdu: Any
    trace_connect: Any

    def callback_new_connection(self) -> SpecHandler:
        """A handler per connection (on a serial line, the line's one)."""
        handler = SpecHandler(  # type: ignore[no-untyped-call]  # unannotated in pymodbus 3.16
            self, self.trace_packet, self.trace_pdu, self.trace_connect)
        handler.bits_defined = self.bits_defined
        return handler


class SpecTcpServer(_SpecConnections, ModbusTcpServer):
    """``ModbusTcpServer`` (MBAP or RTU framing) whose requests pass ``SpecHandler``."""


class SpecSerialServer(_SpecConnections, ModbusSerialServer):
    """``ModbusSerialServer`` whose requests pass ``SpecHandler``."""

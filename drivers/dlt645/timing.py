"""DL/T 645-2007 wire timing: exchange times, reply timeouts and a line budget (pure).

A byte is 11 bits on the line: start, 8 data, even parity, stop (4.1 字节格式); meters run
2400 baud (1200 on older ones), so a character takes 4.58 ms. Frames have no silent-gap
delimiter as Modbus RTU has: a frame is recognised by 68 ... 16 and its length byte, so an
exchange is

    request characters + meter turnaround Td + reply characters

The master sends four FE wake-up bytes first (4.3.1), and most meters put up to four before
their reply too; the model counts four each way. The meter must start answering within
20 ms <= Td <= 500 ms of the request's end and may pause at most 500 ms between bytes
(4.3.3 传输响应); a reply not begun 500 ms after the request is a silent meter.

Frame sizes: 12 envelope bytes (68, address, 68, C, L, CS, 16) + L data bytes. A read-data
request has L = 4 (the identifier), its normal reply L = 4 + the item's data, an abnormal
reply L = 1, the read-address request L = 0 and its reply L = 6.
"""

from __future__ import annotations

from collections.abc import Iterable

from edge_agent.drivers.bus import Parity, SerialBus
from edge_agent.drivers.dlt645.frame import ENVELOPE_BYTES
from edge_agent.drivers.dlt645.identifiers import block_slot
from edge_agent.drivers.dlt645.meter import MeterPoint
from edge_agent.drivers.dlt645.planner import MeterRead, plan_meter_reads
from edge_agent.drivers.modbus.timing import BusBudget, DeviceLoad, framing_text

PREAMBLE_CHARS = 4            # FE x 4 before each frame (4.3.1), both ways in the model
TURNAROUND_MIN_S = 0.020      # 4.3.3: Td >= 20 ms
TURNAROUND_MAX_S = 0.500      # 4.3.3: Td <= 500 ms, and Tb (between bytes) <= 500 ms
MAX_READ_DATA = 200           # a read reply's data field is at most 200 bytes
DEFAULT_TURNAROUND_S = TURNAROUND_MIN_S  # the budget's assumption; a bench measures meters
READ_REQUEST_CHARS = PREAMBLE_CHARS + ENVELOPE_BYTES + 4
ADDRESS_REQUEST_CHARS = PREAMBLE_CHARS + ENVELOPE_BYTES
ADDRESS_REPLY_CHARS = PREAMBLE_CHARS + ENVELOPE_BYTES + 6


def char_time_s(bus: SerialBus) -> float:
    """Seconds per character: start + data + parity + stop bits over the baud rate (4.1)."""
    bits = 1 + bus.bytesize + (0 if bus.parity is Parity.NONE else 1) + bus.stopbits
    return bits / bus.baudrate


def reply_chars(read: MeterRead) -> int:
    """Characters of the normal reply to ``read``: preamble, envelope, identifier, data."""
    if read.block:
        data = max(p.fmt.size * (1 + block_slot(read.di, p.di)) for p in read.points)
    else:
        data = read.points[0].fmt.size
    return PREAMBLE_CHARS + ENVELOPE_BYTES + 4 + data


def exchange_s(bus: SerialBus, read: MeterRead,
               turnaround_s: float = DEFAULT_TURNAROUND_S) -> float:
    """Seconds one read and its normal reply occupy the line."""
    return (READ_REQUEST_CHARS + reply_chars(read)) * char_time_s(bus) + turnaround_s


def first_byte_timeout_s(bus: SerialBus, request_chars: int = READ_REQUEST_CHARS) -> float:
    """How long after starting to send a request a silent meter is declared silent.

    The request's own wire time plus the longest turnaround the standard allows (or the
    bus's configured ``timeout_ms``, which replaces that allowance).
    """
    allowance = bus.timeout_s if bus.timeout_s is not None else TURNAROUND_MAX_S
    return request_chars * char_time_s(bus) + allowance


def frame_time_s(bus: SerialBus, data_bytes: int = MAX_READ_DATA) -> float:
    """Wire time of a whole reply frame with ``data_bytes`` of data (and a preamble)."""
    return (PREAMBLE_CHARS + ENVELOPE_BYTES + data_bytes) * char_time_s(bus)


def read_exchanges_s(bus: SerialBus, points: Iterable[MeterPoint],
                     turnaround_s: float = DEFAULT_TURNAROUND_S) -> tuple[int, float]:
    """(requests, seconds of line time) to read ``points`` once, blocks served."""
    reads = plan_meter_reads(points)
    return len(reads), sum(exchange_s(bus, r, turnaround_s) for r in reads)


def meters_per_s(bus: SerialBus, points: Iterable[MeterPoint],
                 turnaround_s: float = DEFAULT_TURNAROUND_S) -> float:
    """How many meters a second the line can read ``points`` of, back to back."""
    _, seconds = read_exchanges_s(bus, points, turnaround_s)
    return 1.0 / seconds if seconds else 0.0


def address_probe_s(bus: SerialBus, turnaround_s: float = DEFAULT_TURNAROUND_S) -> float:
    """Line time of one answered read-address exchange (the scan's unit of work)."""
    return (ADDRESS_REQUEST_CHARS + ADDRESS_REPLY_CHARS) * char_time_s(bus) + turnaround_s


def meter_line_budget(bus: SerialBus,
                      devices: Iterable[tuple[str, float, Iterable[MeterPoint]]],
                      turnaround_s: float = DEFAULT_TURNAROUND_S) -> BusBudget:
    """The budget of one DL/T 645 line; ``devices`` are (name, poll interval s, points)."""
    loads: list[DeviceLoad] = []
    for name, poll_s, points in devices:
        pts = list(points)
        by_interval: dict[float, list[MeterPoint]] = {}
        for p in pts:
            by_interval.setdefault(p.interval_s or poll_s, []).append(p)
        rate = util = 0.0
        for interval_s, group in by_interval.items():
            n, line_s = read_exchanges_s(bus, group, turnaround_s)
            rate += n / interval_s
            util += line_s / interval_s
        loads.append(DeviceLoad(name, rate, util, read_exchanges_s(bus, pts, turnaround_s)[1]))
    return BusBudget(
        bus=bus.name, baudrate=bus.baudrate, framing=framing_text(bus),
        char_time_s=char_time_s(bus), gap_s=0.0, turnaround_s=turnaround_s,
        requests_per_s=sum(d.requests_per_s for d in loads),
        utilisation=sum(d.utilisation for d in loads),
        full_cycle_s=sum(d.full_read_s for d in loads), devices=tuple(loads))

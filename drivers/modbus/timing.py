"""Modbus RTU wire timing: what a serial line can carry, from baud rate and framing (pure).

Modbus over serial line V1.02, 2.5.1.1: a character is a start bit, 8 data bits, an
optional parity bit and 1 or 2 stop bits (11 bits in 8E1, 8O1, 8N2; 10 bits in 8N1);
frames are separated by at least 3.5 character times (t3.5) and characters within a
frame by at most 1.5 (t1.5). Above 19200 baud the fixed values 1.75 ms and 0.75 ms are
recommended, because at high speed the character-based gaps become too short for
the timers of slave devices.

One request/response exchange (a transaction, 2.4.1) occupies the line for

    request characters + t3.5 + device turnaround + reply characters + t3.5

where the turnaround is the time a device takes to process the request after it has
seen its end (5 to 50 ms on real devices).

A request that gets no reply costs more than its timeout: other slave stacks read the line
differently from pymodbus's server. A libmodbus RTU slave that sees a request for another
unit waits up to its response timeout (0.5 s by default) for that unit's reply and takes the
next frame on the line as that reply, unread. If nothing answered, the next frame is our
next request, and the slave ignores it even when it is addressed to it. So after a request
without a reply the line stays silent for the no-reply guard (``no_reply_guard_s``, counted
from the end of the unanswered request) before anything else is sent. Frame sizes per function
code come from Modbus application protocol V1.1b3, section 6, plus the RTU envelope of
unit id (1 byte) and CRC (2 bytes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from edge_agent.drivers.bus import FieldProtocol, FieldSite, Parity, SerialBus
from edge_agent.drivers.modbus.planner import plan_reads
from edge_agent.drivers.model import Point, Table

# The turnaround a budget assumes when the config says nothing about the devices: the fast
# end of the 5-50 ms real devices need. A bench measures real values.
DEFAULT_TURNAROUND_S = 0.010
# Above this baud rate the gaps are fixed (serial line V1.02, 2.5.1.1).
FIXED_GAP_ABOVE_BAUD = 19200
FIXED_T35_S = 0.00175
# check-config: warn above this share of the line's time, fail above 1.0.
WARN_UTILISATION = 0.8
# Silence after a request that got no reply: libmodbus's default response timeout (0.5 s,
# its wait for another unit's reply) plus 100 ms for the slave's own processing and USB
# adapters that deliver bytes late.
DEFAULT_NO_REPLY_GUARD_S = 0.6
# Reply timeout when the config names none: the longest exchange on the wire plus device
# turnaround and USB-serial adapters that deliver bytes in ~16 ms batches.
_REQUEST_CHARS = 8
_MAX_REPLY_CHARS = 255  # 5 + 2 x 125 (serial line V1.02, 2.5.1)
_TIMEOUT_TURNAROUND_S = 0.1

# Read function codes by table (application protocol 6.1-6.4).
READ_FC: dict[Table, int] = {
    Table.COIL: 1, Table.DISCRETE_INPUT: 2,
    Table.HOLDING_REGISTER: 3, Table.INPUT_REGISTER: 4,
}


def char_bits(bus: SerialBus) -> int:
    """Bits on the wire per character: start + data + parity + stop (serial line 2.5.1)."""
    return 1 + bus.bytesize + (0 if bus.parity is Parity.NONE else 1) + bus.stopbits


def char_time_s(bus: SerialBus) -> float:
    """Seconds per character: start bit + data bits + parity bit + stop bits over the baud rate."""
    return char_bits(bus) / bus.baudrate


def inter_frame_gap_s(bus: SerialBus) -> float:
    """The silence between frames: 3.5 characters, fixed 1.75 ms above 19200 baud (2.5.1.1)."""
    if bus.inter_frame_gap_s is not None:
        return bus.inter_frame_gap_s
    return FIXED_T35_S if bus.baudrate > FIXED_GAP_ABOVE_BAUD else 3.5 * char_time_s(bus)


def reply_timeout_s(bus: SerialBus) -> float:
    """Reply timeout: the configured one, or the longest exchange at this speed plus turnaround."""
    if bus.timeout_s is not None:
        return bus.timeout_s
    wire = (_REQUEST_CHARS + _MAX_REPLY_CHARS) * char_time_s(bus) + 2 * inter_frame_gap_s(bus)
    return round(wire + _TIMEOUT_TURNAROUND_S, 3)


def no_reply_guard_s(bus: SerialBus) -> float:
    """Silence kept after the end of a request that got no reply (configured or 0.6 s)."""
    return DEFAULT_NO_REPLY_GUARD_S if bus.no_reply_guard_s is None else bus.no_reply_guard_s


def silent_probe_s(bus: SerialBus) -> float:
    """Line time one request without a reply costs: the later of its timeout and its guard."""
    request_s = _REQUEST_CHARS * char_time_s(bus)
    return max(request_s + reply_timeout_s(bus), request_s + no_reply_guard_s(bus))


def _bytes_for_bits(count: int) -> int:
    return (count + 7) // 8


# Function code -> (request bytes, reply bytes) as functions of the item count, RTU framing:
# unit id + PDU + 2 CRC bytes (application protocol 6.1-6.12; serial line 2.5.1).
FrameSize = Callable[[int], int]
FRAME_BYTES: dict[int, tuple[FrameSize, FrameSize]] = {
    1: (lambda n: 8, lambda n: 5 + _bytes_for_bits(n)),        # read coils
    2: (lambda n: 8, lambda n: 5 + _bytes_for_bits(n)),        # read discrete inputs
    3: (lambda n: 8, lambda n: 5 + 2 * n),                     # read holding registers
    4: (lambda n: 8, lambda n: 5 + 2 * n),                     # read input registers
    5: (lambda n: 8, lambda n: 8),                             # write single coil
    6: (lambda n: 8, lambda n: 8),                             # write single register
    15: (lambda n: 9 + _bytes_for_bits(n), lambda n: 8),       # write multiple coils
    16: (lambda n: 9 + 2 * n, lambda n: 8),                    # write multiple registers
}
# Items one request may carry (application protocol 6.1-6.4, 6.11, 6.12).
MAX_ITEMS = {1: 2000, 2: 2000, 3: 125, 4: 125, 5: 1, 6: 1, 15: 1968, 16: 123}


def frame_bytes(function_code: int, count: int) -> tuple[int, int]:
    """(request, reply) sizes in bytes of one RTU exchange; ValueError for what Modbus forbids."""
    if function_code not in FRAME_BYTES:
        raise ValueError(f"function code {function_code}: expected one of "
                         f"{', '.join(map(str, sorted(FRAME_BYTES)))}")
    if not 1 <= count <= MAX_ITEMS[function_code]:
        raise ValueError(f"function code {function_code}: count {count} outside "
                         f"1..{MAX_ITEMS[function_code]} (application protocol V1.1b3, 6)")
    req, rep = FRAME_BYTES[function_code]
    return req(count), rep(count)


def exchange_s(bus: SerialBus, function_code: int, count: int,
               turnaround_s: float = DEFAULT_TURNAROUND_S) -> float:
    """Seconds one request and its reply occupy the line, both frame gaps included."""
    req, rep = frame_bytes(function_code, count)
    return (req + rep) * char_time_s(bus) + 2 * inter_frame_gap_s(bus) + turnaround_s


def requests_per_s(bus: SerialBus, function_code: int, count: int,
                   turnaround_s: float = DEFAULT_TURNAROUND_S) -> float:
    """The most back-to-back exchanges of this kind the line can carry per second."""
    return 1.0 / exchange_s(bus, function_code, count, turnaround_s)


def no_reply_s(bus: SerialBus, function_code: int, count: int,
               turnaround_s: float = DEFAULT_TURNAROUND_S) -> float:
    """The shortest safe wait for a reply: the reply's wire time after the request has left.

    A scanner waits this long after sending before it declares a unit id silent: the request
    itself, t3.5, the device's turnaround and the whole reply frame. Anything shorter cuts
    off a healthy device; anything much longer only slows the sweep.
    """
    req, rep = frame_bytes(function_code, count)
    return (req + rep) * char_time_s(bus) + inter_frame_gap_s(bus) + turnaround_s


def read_exchanges_s(bus: SerialBus, points: Iterable[Point], max_gap: int,
                     turnaround_s: float = DEFAULT_TURNAROUND_S) -> tuple[int, float]:
    """(requests, seconds of line time) to read ``points`` once with the planner's reads."""
    n = 0
    total = 0.0
    for r in plan_reads(points, max_gap=max_gap):
        n += 1
        total += exchange_s(bus, READ_FC[r.table], r.count, turnaround_s)
    return n, total


@dataclass(frozen=True, slots=True)
class DeviceLoad:
    """One device's share of a line: requests and line seconds per second of polling."""

    name: str
    requests_per_s: float
    utilisation: float
    full_read_s: float  # line time of one read of every point


@dataclass(frozen=True, slots=True)
class BusBudget:
    """What a serial line carries under its config, and the fastest poll it could carry.

    ``utilisation`` is the share of the line's time the configured polls occupy (1.0 =
    the line is never silent). ``full_cycle_s`` is the line time of one read of every
    point of every device: the fastest common poll interval the line can carry.
    ``scale_limit`` is the factor every interval could be multiplied by and still fit
    (equal to ``utilisation``): intervals may shrink to this share of their values.
    """

    bus: str
    baudrate: int
    framing: str                 # e.g. "8E1"
    char_time_s: float
    gap_s: float
    turnaround_s: float
    requests_per_s: float
    utilisation: float
    full_cycle_s: float
    devices: tuple[DeviceLoad, ...] = field(default_factory=tuple)
    # A silent device's probe: its reply timeout or no-reply guard, whichever ends later
    # (0 where nothing is kept silent). The poller sends probes after a slot's polls.
    silent_probe_s: float = 0.0
    shortest_interval_s: float | None = None

    @property
    def status(self) -> str:
        """'ok', 'warn' (above 80 %) or 'over' (above 100 %: polls cannot keep their slots)."""
        if self.utilisation > 1.0:
            return "over"
        return "warn" if self.utilisation > WARN_UTILISATION else "ok"

    @property
    def fastest_interval_s(self) -> float:
        """The shortest poll interval (same for every device) the line could carry at 100 %."""
        return self.full_cycle_s

    @property
    def comfortable_interval_s(self) -> float:
        """The shortest common poll interval that keeps the line at or under 80 %."""
        return self.full_cycle_s / WARN_UTILISATION

    def describe(self) -> str:
        """One line for check-config and doctor."""
        text = (f"bus {self.bus}: {self.baudrate} {self.framing}, "
                f"{self.requests_per_s:.1f} requests/s, utilisation {self.utilisation:.0%} "
                f"(turnaround {self.turnaround_s * 1000:g} ms assumed); one read of every "
                f"device takes {self.full_cycle_s * 1000:.0f} ms")
        if self.status == "over":
            text += (f"; OVER CAPACITY: polls cannot keep their slots; the fastest common poll "
                     f"interval this line can carry is {self.fastest_interval_s:.2f} s "
                     f"({self.comfortable_interval_s:.2f} s for 80 %)")
        elif self.status == "warn":
            text += (f"; above {WARN_UTILISATION:.0%}: little room for retries and dead-device "
                     f"probes; poll no faster than every {self.comfortable_interval_s:.2f} s "
                     "to stay under 80 %")
        if self.silent_probe_s:
            text += (f"; a device that stops answering costs {self.silent_probe_s * 1000:.0f} ms "
                     "per probe (reply timeout, then the no-reply guard), sent after the "
                     "slot's polls")
            if not self.probe_fits:
                text += (f"; the fastest slot ({self.shortest_interval_s:g} s) cannot hold "
                         "its polls and a probe: those slots run late while a device is dead")
        return text

    @property
    def probe_fits(self) -> bool:
        """True when one silent probe fits in the fastest slot after every device's read."""
        if self.shortest_interval_s is None or not self.silent_probe_s:
            return True
        return self.full_cycle_s + self.silent_probe_s <= self.shortest_interval_s


def framing_text(bus: SerialBus) -> str:
    """Data bits, parity and stop bits as installers write them: 8E1, 8N2."""
    return f"{bus.bytesize}{bus.parity.value}{bus.stopbits}"


def serial_budget(bus: SerialBus, devices: Iterable[tuple[str, float, Iterable[Point]]],
                  max_gap: int, turnaround_s: float = DEFAULT_TURNAROUND_S) -> BusBudget:
    """The budget of one line; ``devices`` are (name, poll interval s, points) triples."""
    loads: list[DeviceLoad] = []
    intervals: list[float] = []
    for name, poll_s, points in devices:
        by_interval: dict[float, list[Point]] = {}
        all_points: list[Point] = []
        for p in points:
            by_interval.setdefault(p.interval_s or poll_s, []).append(p)
            all_points.append(p)
        rate = util = 0.0
        intervals.extend(by_interval)
        for interval_s, group in by_interval.items():
            n, line_s = read_exchanges_s(bus, group, max_gap, turnaround_s)
            rate += n / interval_s
            util += line_s / interval_s
        _, full_s = read_exchanges_s(bus, all_points, max_gap, turnaround_s)
        loads.append(DeviceLoad(name, rate, util, full_s))
    return BusBudget(
        bus=bus.name, baudrate=bus.baudrate, framing=framing_text(bus),
        char_time_s=char_time_s(bus), gap_s=inter_frame_gap_s(bus), turnaround_s=turnaround_s,
        requests_per_s=sum(d.requests_per_s for d in loads),
        utilisation=sum(d.utilisation for d in loads),
        full_cycle_s=sum(d.full_read_s for d in loads), devices=tuple(loads),
        silent_probe_s=silent_probe_s(bus),
        shortest_interval_s=min(intervals) if intervals else None)


def bus_budget(cfg: FieldSite,
               turnaround_s: float = DEFAULT_TURNAROUND_S) -> dict[str, BusBudget]:
    """The budget of every Modbus serial bus of ``cfg`` (TCP buses have no shared line to
    budget; DL/T 645 lines are ``drivers.budget``'s)."""
    out: dict[str, BusBudget] = {}
    for name, bus in cfg.buses.items():
        if isinstance(bus, SerialBus) and bus.protocol is FieldProtocol.MODBUS:
            out[name] = serial_budget(
                bus, [(d.name, d.poll_interval_s, d.points) for d in cfg.devices_on(name)],
                cfg.max_gap, turnaround_s)
    return out

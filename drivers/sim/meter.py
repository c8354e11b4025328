"""One simulated DL/T 645 meter without I/O: values by data identifier, replies, faults, counters.

``answer`` takes a request frame and returns the reply bytes the meter would put on the line
(or None: not addressed to it, or silent). Values come from a household load model keyed by
data identifier, so they do not depend on what a profile calls its points: energy counters
are the integral of a daily load curve (they only rise), voltages near 220 V, currents and
powers follow the load, the date and time are the simulated clock's (UTC).

Faults are the Modbus simulators' (``Fault``): silent, ``exception`` (an abnormal reply with
``exception_code`` as the error byte) and ``bad_crc`` (the checksum byte flipped).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from edge_agent.drivers.bus import DeviceConfig
from edge_agent.drivers.dlt645.bcd import encode_bcd
from edge_agent.drivers.dlt645.frame import (
    ABNORMAL,
    FOLLOWS,
    FROM_METER,
    NO_REQUESTED_DATA,
    READ_ADDRESS,
    READ_DATA,
    READ_FOLLOW,
    Frame,
    FrameError,
    encode_frame,
)
from edge_agent.drivers.dlt645.identifiers import BLOCK_FIRST, IDENTIFIERS
from edge_agent.drivers.sim.device import Fault
from edge_agent.drivers.sim.models import _LOAD, HOUR_S, Ctx, _wave, _wave_integral_s
from edge_agent.protocol.readings import Value

REPLY_PREAMBLE = b"\xfe" * 4   # most meters wake the master's receiver too (4.3.1)
TARIFF_SHARE = (0.12, 0.31, 0.34, 0.23)   # tariffs 1-4 (尖 峰 平 谷) of the forward total


def meter_values(c: Ctx) -> dict[int, Value]:
    """Every identifier the simulated meter serves, at the context's time."""
    shape = _wave(c.day_frac, _LOAD)
    out: dict[int, Value] = {}
    total_kw = 0.0
    base_total_kw = 0.0
    for ph in (1, 2, 3):
        base_kw = c.const(f"p{ph}", 0.03, 0.35)  # a flat: a few thousand kWh a year
        base_total_kw += base_kw
        volts = 220 + 3 * math.cos(2 * math.pi * (c.day_frac - 0.2)) + 0.8 * c.noise(f"v{ph}")
        kw = base_kw * shape * (1 + 0.03 * c.noise(f"p{ph}"))
        pf = 0.93 + 0.04 * c.noise(f"pf{ph}", 60)
        total_kw += kw
        out[0x02010000 | ph << 8] = round(volts, 1)
        out[0x02020000 | ph << 8] = round(kw * 1000 / (volts * pf), 3)
        out[0x02030000 | ph << 8] = round(kw, 4)
        out[0x02060000 | ph << 8] = round(pf, 3)
    out[0x02030000] = round(total_kw, 4)
    out[0x02060000] = round(0.93 + 0.04 * c.noise("pf", 60), 3)
    out[0x02800002] = round(50 + 0.03 * c.noise("hz"), 2)
    forward = c.const("kwh0", 100.0, 5_000.0) + base_total_kw * _wave_integral_s(c.t, _LOAD) \
        / HOUR_S
    reverse = c.const("rev0", 1.0, 50.0) + c.const("rev", 0.001, 0.01) * c.age_s / HOUR_S
    out[0x00010000] = round(forward, 2)
    for t, share in enumerate(TARIFF_SHARE, start=1):
        out[0x00010000 | t << 8] = round(forward * share, 2)
        out[0x00020000 | t << 8] = round(reverse * share, 2)
        out[0x00000000 | t << 8] = round((forward + reverse) * share, 2)
    out[0x00020000] = round(reverse, 2)
    # Combined active energy as most meters set it up: forward + reverse (A.1).
    out[0x00000000] = round(forward + reverse, 2)
    stamp = time.gmtime(c.t)
    out[0x04000101] = time.strftime("%Y-%m-%d", stamp)
    out[0x04000102] = time.strftime("%H:%M:%S", stamp)
    return out


class MeterSim:
    """A simulated DL/T 645 meter: its address, identifiers, fault and request counters."""

    def __init__(self, cfg: DeviceConfig, seed: int, *, blocks: bool = True,
                 max_data: int = 200) -> None:
        self.name = cfg.name
        self.address = cfg.address
        self.unit_id = cfg.unit_id
        self.bus = cfg.bus
        self.points = cfg.meter_points
        self.seed = seed
        self.blocks = blocks          # serves block identifiers (DI1 = FF)
        self.max_data = max_data      # longer replies go out in follow-up frames
        self.overrides: dict[str, Value] = {}
        self.fault = Fault.NONE
        self.exception_code = 0x01
        self.requests = 0
        self.answered = 0
        self.writes = 0
        self._pending: list[bytes] = []   # follow-up chunks still to send

    def values(self, t: float) -> dict[str, Value]:
        """Engineering value of every configured point at ``t`` (overrides win)."""
        by_di = self._by_di(t)
        return {p.name: self.overrides.get(p.name, by_di.get(p.di, 0)) for p in self.points}

    def _by_di(self, t: float) -> dict[int, Value]:
        by_di = meter_values(Ctx(t=t, device=self.name, seed=self.seed, overrides={}))
        for p in self.points:
            if p.name in self.overrides:
                by_di[p.di] = self.overrides[p.name]
        return by_di

    def set_point(self, name: str, value: Value, t: float) -> None:
        """Force a point's value (until ``clear_point``); ValueError names what is wrong."""
        point = next((p for p in self.points if p.name == name), None)
        if point is None:
            raise ValueError(f"meter {self.name!r} has no point {name!r} "
                             f"(points: {', '.join(p.name for p in self.points)})")
        try:
            encode_bcd(point.fmt, value if isinstance(value, str) else float(value),
                       signed=point.signed)
        except (FrameError, ValueError, TypeError) as exc:
            raise ValueError(f"meter {self.name!r} point {name!r}: {exc}") from None
        self.overrides[name] = value

    def clear_point(self, name: str) -> None:
        """Let the model drive a point again."""
        self.overrides.pop(name, None)

    def set_fault(self, fault: Fault, code: int = 0x01) -> None:
        """Switch the fault mode; ``code`` is the error byte of an abnormal reply."""
        if fault is Fault.LIBMODBUS:
            raise ValueError("fault 'libmodbus' is a Modbus RTU slave's behaviour, not a meter's")
        if fault is Fault.EXCEPTION and not 1 <= code <= 0x7F:
            raise ValueError(f"error byte {code}: expected 1..127 (bits of the DL/T 645 "
                             "error information word)")
        self.fault = fault
        self.exception_code = code

    def stats(self) -> dict[str, Any]:
        """Counters for tests that count polls."""
        return {"device": self.name, "unit_id": self.unit_id, "address": self.address,
                "requests": self.requests, "answered": self.answered, "writes": self.writes,
                "fault": self.fault.value}

    def registers_json(self, t: float) -> dict[str, dict[str, int | bool]]:
        """What the meter serves, as JSON: {"dlt645": {identifier: value x 10^decimals}}."""
        out: dict[str, int | bool] = {}
        for di, value in self._by_di(t).items():
            if isinstance(value, int | float) and di in IDENTIFIERS:
                out[f"{di:08X}"] = round(value * 10 ** IDENTIFIERS[di].fmt.decimals)
        return {"dlt645": out}

    def addressed(self, address: str) -> bool:
        """True if ``address`` (AA bytes as wildcards) names this meter (4.2.2)."""
        ours = self.address
        return all(a == "AA" or a == ours[i:i + 2]
                   for i, a in ((i, address[i:i + 2]) for i in range(0, 12, 2)))

    def _item(self, by_di: Mapping[int, Value], di: int) -> bytes | None:
        ident = IDENTIFIERS.get(di)
        if ident is None or di not in by_di:
            return None
        value = by_di[di]
        return encode_bcd(ident.fmt, value if isinstance(value, str) else float(value),
                          signed=ident.signed)

    def _data(self, di: int, t: float) -> bytes | None:
        by_di = self._by_di(t)
        if di in BLOCK_FIRST:
            if not self.blocks:
                return None
            parts = []
            index = BLOCK_FIRST[di]
            while (item := self._item(by_di, (di & 0xFFFF00FF) | index << 8)) is not None:
                parts.append(item)
                index += 1
            return b"".join(parts) or None
        return self._item(by_di, di)

    def _reply(self, control: int, data: bytes) -> bytes:
        raw = REPLY_PREAMBLE + encode_frame(Frame(self.address, control, data), preamble=b"")
        if self.fault is Fault.BAD_CRC:
            raw = raw[:-2] + bytes([raw[-2] ^ 0xFF]) + raw[-1:]
        return raw

    def answer(self, frame: Frame, t: float) -> bytes | None:
        """The bytes this meter sends for ``frame``, or None (not for it, silent, broadcast)."""
        if frame.from_meter or not self.addressed(frame.address):
            return None
        self.requests += 1
        if self.fault is Fault.SILENT:
            return None
        function = frame.function
        reply: bytes | None = None
        if function == READ_ADDRESS and not frame.data:
            # Read address (function 13): the reply carries the address in DATA as well.
            reply = self._reply(FROM_METER | READ_ADDRESS, bytes.fromhex(self.address)[::-1])
        elif function in (READ_DATA, READ_FOLLOW) and "A" in frame.address:
            return None  # reads need the full address; wildcards are for reading the address
        elif self.fault is Fault.EXCEPTION:
            reply = self._reply(FROM_METER | ABNORMAL | function, bytes([self.exception_code]))
        elif function == READ_DATA and len(frame.data) == 4:
            reply = self._read(frame.data, t)
        elif function == READ_FOLLOW and len(frame.data) == 5 and self._pending:
            chunk = self._pending.pop(0)
            more = FOLLOWS if self._pending else 0
            reply = self._reply(FROM_METER | more | READ_FOLLOW,
                                frame.data[:4] + chunk + frame.data[4:5])
        else:
            reply = self._reply(FROM_METER | ABNORMAL | function, bytes([NO_REQUESTED_DATA]))
        self.answered += 1
        return reply

    def _read(self, di_raw: bytes, t: float) -> bytes:
        data = self._data(int.from_bytes(di_raw, "little"), t)
        if data is None:
            return self._reply(FROM_METER | ABNORMAL | READ_DATA, bytes([NO_REQUESTED_DATA]))
        room = self.max_data - 4
        first, rest = data[:room], data[room:]
        self._pending = [rest[i:i + room - 1] for i in range(0, len(rest), room - 1)]
        more = FOLLOWS if self._pending else 0
        return self._reply(FROM_METER | more | READ_DATA, di_raw + first)

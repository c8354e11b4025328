"""One simulated device's state without I/O: values, register image, writes, faults, counters.

The register image maps each Modbus table to {address: register or bit}. It is rebuilt from the
value model at most once per simulated second (or at once after a write or a ``set``), so the
servers in ``server.py`` only copy it into pymodbus's register lists when a request arrives.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any

from edge_agent.drivers.bus import DeviceConfig
from edge_agent.drivers.modbus.decode import decode_point, encode_point
from edge_agent.drivers.model import Access, DataType, Point, Table
from edge_agent.drivers.sim.confirmation import ConfirmationWait
from edge_agent.drivers.sim.models import values_at, write_memo
from edge_agent.protocol.readings import Value

Image = dict[Table, dict[int, int | bool]]

# Modbus exception codes a fault may answer with (Modbus application protocol V1.1b3, 7).
EXCEPTION_CODES = frozenset({1, 2, 3, 4, 5, 6, 8, 10, 11})
ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3


class Fault(StrEnum):
    """How a device misbehaves: answers normally, never, with an exception, or with a bad CRC;
    or reads the line as libmodbus's RTU slave does (``sim.confirmation``; RTU lines only)."""

    NONE = "none"
    SILENT = "silent"
    EXCEPTION = "exception"
    BAD_CRC = "bad_crc"
    LIBMODBUS = "libmodbus"


def compose_image(points: Iterable[Point], values: Mapping[str, Value]) -> Image:
    """Registers and bits holding ``values``; bit fields are OR-ed into their register, LSB first.

    Raises ValueError (from ``encode_point``) when a value does not fit its point.
    """
    image: Image = {t: {} for t in Table}
    for p in points:
        value = values[p.name]
        cells = image[p.table]
        if p.table.is_bit:
            cells[p.address] = bool(value)
        elif p.bit is not None:
            mask = (1 << p.bits) - 1
            raw = int(value)
            if not 0 <= raw <= mask:
                raise ValueError(f"point {p.name!r}: {value!r} does not fit {p.bits} bit(s)")
            old = int(cells.get(p.address, 0))
            cells[p.address] = (old & ~(mask << p.bit)) | (raw << p.bit)
        else:
            for i, word in enumerate(encode_point(p, value)):
                cells[p.address + i] = word
    return image


def extract_point(p: Point, cells: Mapping[int, int | bool]) -> Value:
    """Decode one point back out of its table's cells (the inverse of ``compose_image``)."""
    if p.table.is_bit:
        return bool(cells[p.address])
    if p.bit is not None:
        raw = (int(cells[p.address]) >> p.bit) & ((1 << p.bits) - 1)
        return bool(raw) if p.type is DataType.BOOL else raw
    return decode_point(p, [int(cells[a]) for a in range(p.address, p.end)])


class DeviceSim:
    """A simulated field device: its points, overrides, fault and request counters."""

    def __init__(self, cfg: DeviceConfig, seed: int) -> None:
        self.name = cfg.name
        self.unit_id = cfg.unit_id
        self.bus = cfg.bus
        self.profile = cfg.profile.name
        self.points: tuple[Point, ...] = cfg.points
        self.seed = seed
        self.overrides: dict[str, Value] = {}
        self.fault = Fault.NONE
        self.exception_code = 4
        self.requests = 0   # requests addressed to this device that reached the server
        self.answered = 0   # replies put on the wire (including corrupted ones)
        # In Fault.LIBMODBUS: what the slave makes of the line, and whether it discarded the
        # request the server is answering (so the reply must not go out).
        self.confirmation = ConfirmationWait(cfg.unit_id)
        self.discard_reply = False
        self.writes = 0
        self._image: Image = {t: {} for t in Table}
        self._image_second: int | None = None
        self.writable: dict[Table, set[int]] = {t: set() for t in Table}
        for p in self.points:
            if p.access is Access.READ_WRITE:
                self.writable[p.table].update(range(p.address, p.end))

    def tables(self) -> set[Table]:
        """Tables in which the device has at least one point."""
        return {p.table for p in self.points}

    def values(self, t: float) -> dict[str, Value]:
        """Engineering value of every point at simulated time ``t``."""
        return values_at(self.profile, self.points, t, device=self.name, seed=self.seed,
                         overrides=self.overrides)

    def image(self, t: float) -> Image:
        """The register image at ``t``, rebuilt when the simulated second changed."""
        second = math.floor(t)
        if second != self._image_second:
            self._image = compose_image(self.points, self.values(t))
            self._image_second = second
        return self._image

    def _invalidate(self) -> None:
        self._image_second = None

    def set_point(self, name: str, value: Value, t: float) -> None:
        """Force a point's value (until ``clear_point``); ValueError names what is wrong."""
        if not any(p.name == name for p in self.points):
            known = ", ".join(p.name for p in self.points)
            raise ValueError(f"device {self.name!r} has no point {name!r} (points: {known})")
        old = self.overrides.get(name)
        self.overrides[name] = value
        try:
            compose_image(self.points, self.values(t))
        except (ValueError, TypeError) as exc:
            if old is None:
                del self.overrides[name]
            else:
                self.overrides[name] = old
            raise ValueError(f"device {self.name!r} point {name!r}: {exc}") from None
        self._invalidate()

    def clear_point(self, name: str) -> None:
        """Let the model drive a point again."""
        self.overrides.pop(name, None)
        self._invalidate()

    def write(self, table: Table, address: int, new: Sequence[int] | Sequence[bool],
              t: float) -> int | None:
        """Apply a Modbus write; returns None, or the exception code to answer with.

        Only read-write points accept writes (exception 2, illegal data address, otherwise);
        a value the point cannot hold is exception 3, illegal data value (spec 7).
        """
        span = range(address, address + len(new))
        if not set(span) <= self.writable[table]:
            return ILLEGAL_ADDRESS
        cells = dict(self.image(t)[table])
        for a, v in zip(span, new, strict=True):
            cells[a] = bool(v) if table.is_bit else int(v)
        decoded: dict[str, Value] = {}
        for p in self.points:
            if p.table is table and p.address < span.stop and span.start < p.end:
                try:
                    decoded[p.name] = extract_point(p, cells)
                except (ValueError, KeyError):
                    return ILLEGAL_VALUE
        saved = dict(self.overrides)
        before = self.values(t)
        self.overrides.update(decoded)
        self.overrides.update(write_memo(self.profile, decoded, before, t))
        try:
            compose_image(self.points, self.values(t))
        except (ValueError, TypeError):
            self.overrides = saved
            return ILLEGAL_VALUE
        self.writes += 1
        self._invalidate()
        return None

    def set_fault(self, fault: Fault, code: int = 4) -> None:
        """Switch the fault mode; ``code`` is the exception code for Fault.EXCEPTION."""
        if fault is Fault.EXCEPTION and code not in EXCEPTION_CODES:
            raise ValueError(f"exception code {code} is not one of "
                             f"{sorted(EXCEPTION_CODES)} (Modbus application protocol 7)")
        self.fault = fault
        self.exception_code = code

    def stats(self) -> dict[str, Any]:
        """Counters for tests that count polls."""
        return {"device": self.name, "unit_id": self.unit_id, "requests": self.requests,
                "answered": self.answered, "writes": self.writes, "fault": self.fault.value,
                "ignored": self.confirmation.ignored}

    def registers_json(self, t: float) -> dict[str, dict[str, int | bool]]:
        """The image as JSON: table name -> {address as a string: register or bit}."""
        return {table.value: {str(a): v for a, v in sorted(cells.items())}
                for table, cells in self.image(t).items() if cells}

"""Reading a meter: which identifiers to ask for, and what the replies mean (pure).

``plan_meter_reads`` turns due points into requests: points of one block family (the three
phase voltages, say) are read with the block identifier (DI1 = FF) while the meter has not
refused it, every other point with its own identifier. ``after_meter_reply`` is what a reply
teaches: an abnormal reply to a block means the meter does not serve it, so the block is
remembered and its points are asked for one by one, now and from then on, as the Modbus
planner learns a refused address range. ``decode_meter_read`` turns a reply's data into
readings, each point's bytes decoded by its BCD format; bytes that are not valid BCD make
that point's reading a decode error, never an exception.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edge_agent.drivers.dlt645.bcd import Kind, decode_bcd
from edge_agent.drivers.dlt645.frame import FrameError
from edge_agent.drivers.dlt645.identifiers import block_of, block_slot
from edge_agent.drivers.dlt645.meter import MeterPoint
from edge_agent.protocol.readings import Quality, Reading, Value


@dataclass(frozen=True, slots=True)
class MeterRead:
    """One read-data request: an identifier (an item or a block) and the points it covers."""

    di: int
    points: tuple[MeterPoint, ...]
    block: bool = False


def plan_meter_reads(points: Iterable[MeterPoint], no_block: set[int] | frozenset[int] = frozenset()
                     ) -> list[MeterRead]:
    """The fewest requests for ``points``: blocks where two or more share one, else items."""
    by_di: dict[int, list[MeterPoint]] = {}
    for p in points:
        by_di.setdefault(p.di, []).append(p)
    families: dict[int, list[int]] = {}
    singles: list[int] = []
    for di in by_di:
        block = block_of(di)
        if block is None or block in no_block:
            singles.append(di)
        else:
            families.setdefault(block, []).append(di)
    reads: list[MeterRead] = []
    for block, dis in families.items():
        if len(dis) >= 2:
            pts = tuple(p for di in sorted(dis) for p in by_di[di])
            reads.append(MeterRead(block, pts, block=True))
        else:
            singles.extend(dis)
    reads += [MeterRead(di, tuple(by_di[di])) for di in singles]
    return sorted(reads, key=lambda r: r.di)


def after_meter_reply(no_block: set[int], req: MeterRead, refused: bool) -> list[MeterRead]:
    """Requests to send instead of a refused block (remembering the refusal); else none."""
    if not (req.block and refused):
        return []
    no_block.add(req.di)
    return plan_meter_reads(req.points, no_block)


def _value(p: MeterPoint, raw: bytes) -> Value:
    value = decode_bcd(p.fmt, raw, signed=p.signed)
    if p.fmt.kind is Kind.NUMBER and p.scale != 1.0 and not isinstance(value, str):
        return value * p.scale
    return value


def decode_meter_read(req: MeterRead, data: bytes, *, device: str, ts_ms: int) -> list[Reading]:
    """Readings from the data of a normal reply (the identifier already taken off)."""
    out: list[Reading] = []
    for p in req.points:
        if req.block:
            size = p.fmt.size
            start = block_slot(req.di, p.di) * size
            raw = data[start:start + size]
        else:
            raw = data
        try:
            out.append(Reading(device, p.name, ts_ms, _value(p, raw)))
        except FrameError:
            out.append(Reading(device, p.name, ts_ms, None, Quality.DECODE_ERROR))
    return out


def failed_meter_readings(points: Sequence[MeterPoint], quality: Quality, *, device: str,
                          ts_ms: int, error_code: int | None = None) -> list[Reading]:
    """Valueless readings of ``points`` with ``quality`` (and the meter's error byte)."""
    return [Reading(device, p.name, ts_ms, None, quality, error_code) for p in points]

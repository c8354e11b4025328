"""Register decoding: a point's registers or bits to a typed value, and back.

Pure. Modbus carries 16-bit registers, each sent high byte first (Modbus application
protocol V1.1b3, 4.2: big-endian); how a device lays a wider value across registers is
its own choice, named here by ``WordOrder`` with A the most significant byte: ABCD
big-endian, CDAB words swapped, BADC bytes swapped in each word, DCBA both (little-endian).
For strings only the byte swap applies: characters run in register order, two per
register, the first in the high byte (ABCD, CDAB) or in the low byte (BADC, DCBA).
Bit fields take ``bits`` bits from bit ``bit`` of the register value as received, bit 0
being the least significant.

Each point gets one decoder closure, built once and cached, so the per-reading cost is
a dict lookup, a struct call and the scaling.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Sequence
from functools import cache

from edge_agent.drivers.model import TYPE_LAYOUT, Access, DataType, Point, ReadRequest, WordOrder
from edge_agent.protocol.readings import Quality, Reading, Value

Data = Sequence[int] | Sequence[bool]
Decoder = Callable[[Data], Value]


class DecodeFailure(ValueError):
    """A point's registers could not be turned into a value (wrong length, bad bytes)."""


# order -> (registers reversed, bytes swapped within each register)
ORDER_SWAPS: dict[WordOrder, tuple[bool, bool]] = {
    WordOrder.ABCD: (False, False),
    WordOrder.CDAB: (True, False),
    WordOrder.BADC: (False, True),
    WordOrder.DCBA: (True, True),
}

# integer type -> (smallest, largest) raw value
INT_RANGE: dict[DataType, tuple[int, int]] = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}
FLOAT_TYPES = frozenset({DataType.FLOAT32, DataType.FLOAT64})


@cache
def _words(count: int, byte_swap: bool) -> struct.Struct:
    """Struct packing ``count`` registers, high byte first unless ``byte_swap``."""
    return struct.Struct(f"{'<' if byte_swap else '>'}{count}H")


@cache
def _value_struct(fmt: str) -> struct.Struct:
    return struct.Struct(fmt)


def _where(point: Point) -> str:
    return f"point {point.name!r} ({point.table.value} {point.address}, {point.type.value})"


def _to_bytes(point: Point, data: Data, words: struct.Struct, reverse: bool) -> bytes:
    """The point's registers as bytes in A..Z order (most significant first)."""
    if len(data) != point.count:
        raise DecodeFailure(f"{_where(point)}: expected {point.count} register(s), "
                            f"got {len(data)}")
    try:
        return words.pack(*(data[::-1] if reverse else data))
    except struct.error as exc:
        raise DecodeFailure(f"{_where(point)}: registers {list(data)} are not all "
                            f"16-bit values ({exc})") from None


def _scaler(point: Point) -> Callable[[int | float], Value] | None:
    """None when the raw value is the engineering value unchanged (integers stay int)."""
    scale, offset = point.scale, point.offset
    if scale == 1 and offset == 0:
        return None
    if offset == 0:
        return lambda raw: raw * scale
    return lambda raw: raw * scale + offset


def _build_decoder(point: Point) -> Decoder:
    """A function from the point's own registers or bits to its value."""
    dtype, count = point.type, point.count
    if point.table.is_bit:
        def bit_value(data: Data) -> Value:
            if len(data) != 1:
                raise DecodeFailure(f"{_where(point)}: expected 1 bit, got {len(data)}")
            return bool(data[0])
        return bit_value
    if point.bit is not None:
        return _bit_field_decoder(point)
    if dtype is DataType.BOOL:
        def flag(data: Data) -> Value:
            if len(data) != 1:
                raise DecodeFailure(f"{_where(point)}: expected 1 register, got {len(data)}")
            return data[0] != 0
        return flag
    reverse, byte_swap = ORDER_SWAPS[point.order]
    if dtype is DataType.STRING:
        words = _words(count, byte_swap)

        def text(data: Data) -> Value:
            raw = _to_bytes(point, data, words, False).rstrip(b"\x00 ")
            try:
                return raw.decode("ascii")
            except UnicodeDecodeError:
                raise DecodeFailure(f"{_where(point)}: bytes {raw!r} are not ASCII") from None
        return text
    words = _words(count, byte_swap)
    unpack = _value_struct(TYPE_LAYOUT[dtype][1]).unpack
    scaler = _scaler(point)
    if scaler is None:
        def number(data: Data) -> Value:
            value: Value = unpack(_to_bytes(point, data, words, reverse))[0]
            return value
        return number

    def scaled(data: Data) -> Value:
        return scaler(unpack(_to_bytes(point, data, words, reverse))[0])
    return scaled


def _bit_field_decoder(point: Point) -> Decoder:
    shift = point.bit or 0
    mask = (1 << point.bits) - 1
    as_bool = point.type is DataType.BOOL
    scaler = None if as_bool else _scaler(point)

    def field(data: Data) -> Value:
        if len(data) != 1:
            raise DecodeFailure(f"{_where(point)}: expected 1 register, got {len(data)}")
        reg = data[0]
        if not 0 <= reg <= 0xFFFF:
            raise DecodeFailure(f"{_where(point)}: register {reg} is not a 16-bit value")
        raw = (reg >> shift) & mask
        if as_bool:
            return raw != 0
        return raw if scaler is None else scaler(raw)
    return field


_DECODERS: dict[Point, Decoder] = {}
_DECODER_CACHE_LIMIT = 65536  # profiles hold thousands of points at most; tests make more


def decoder_for(point: Point) -> Decoder:
    """The cached decoder of ``point``: registers or bits in, value out."""
    dec = _DECODERS.get(point)
    if dec is None:
        if len(_DECODERS) >= _DECODER_CACHE_LIMIT:
            _DECODERS.clear()
        dec = _DECODERS[point] = _build_decoder(point)
    return dec


def decode_point(point: Point, data: Data) -> Value:
    """Decode the point's own registers (16-bit ints) or bits; DecodeFailure if impossible."""
    return decoder_for(point)(data)


def decode_request(request: ReadRequest, data: Data, *, device: str,
                   ts_ms: int) -> list[Reading]:
    """One Reading per point of ``request`` from its reply ``data``.

    A point that cannot be decoded, or that a short reply does not reach, gets quality
    DECODE_ERROR; the others are still good. Extra trailing items (pymodbus pads bit
    replies to a multiple of 8) are ignored.
    """
    base = request.address
    have = len(data)
    out: list[Reading] = []
    for p in request.points:
        start = p.address - base
        stop = start + p.count
        if start < 0 or stop > have:
            out.append(Reading(device, p.name, ts_ms, None, Quality.DECODE_ERROR))
            continue
        try:
            value = decoder_for(p)(data[start:stop])
        except DecodeFailure:
            out.append(Reading(device, p.name, ts_ms, None, Quality.DECODE_ERROR))
            continue
        out.append(Reading(device, p.name, ts_ms, value))
    return out


def failed_readings(points: Iterable[Point], quality: Quality, *, device: str, ts_ms: int,
                    exception_code: int | None = None) -> list[Reading]:
    """Value-less readings for points a comm error or exception reply left unread."""
    return [Reading(device, p.name, ts_ms, None, quality, exception_code) for p in points]


def _raw_number(point: Point, value: Value) -> int | float:
    """Undo scale and offset; integer types round to the nearest integer and check range."""
    if isinstance(value, str):
        raise ValueError(f"{_where(point)}: expected a number, got {value!r}")
    scale, offset = point.scale, point.offset
    if point.type in FLOAT_TYPES:
        return float(value) if scale == 1 and offset == 0 else (value - offset) / scale
    lo, hi = INT_RANGE[point.type]
    if isinstance(value, int) and scale == 1 and offset == 0:
        raw = value  # exact, even beyond float precision (int64)
    else:
        unscaled = (value - offset) / scale
        if not math.isfinite(unscaled):
            raise ValueError(f"{_where(point)}: value {value!r} has no integer encoding")
        raw = round(unscaled)
    if not lo <= raw <= hi:
        raise ValueError(f"{_where(point)}: value {value!r} is raw {raw}, out of range "
                         f"for {point.type.value} ({lo}..{hi})")
    return raw


def _is_flag(value: Value) -> bool:
    return isinstance(value, int) and value in (0, 1)  # bool is an int subclass


def encode_point(point: Point, value: Value) -> list[int] | list[bool]:
    """The registers or bits that decode to ``value`` (for simulators and writes)."""
    if point.table.is_bit:
        if not _is_flag(value):
            raise ValueError(f"{_where(point)}: expected a bool, got {value!r}")
        return [bool(value)]
    if point.bit is not None:
        raise ValueError(f"{_where(point)}: a bit field cannot be written alone "
                         f"(read the register, change bits {point.bit}.., write it whole)")
    if point.type is DataType.BOOL:
        if not _is_flag(value):
            raise ValueError(f"{_where(point)}: expected a bool, got {value!r}")
        return [1 if value else 0]
    reverse, byte_swap = ORDER_SWAPS[point.order]
    words = _words(point.count, byte_swap)
    if point.type is DataType.STRING:
        if not isinstance(value, str):
            raise ValueError(f"{_where(point)}: expected a string, got {value!r}")
        try:
            raw = value.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"{_where(point)}: {value!r} is not ASCII") from None
        if len(raw) > 2 * point.count:
            raise ValueError(f"{_where(point)}: {value!r} is longer than "
                             f"{2 * point.count} characters")
        return list(words.unpack(raw.ljust(2 * point.count, b"\x00")))
    number = _raw_number(point, value)
    try:
        packed = _value_struct(TYPE_LAYOUT[point.type][1]).pack(number)
    except (struct.error, OverflowError):
        raise ValueError(f"{_where(point)}: value {value!r} is out of range "
                         f"for {point.type.value}") from None
    regs = list(words.unpack(packed))
    return regs[::-1] if reverse else regs


def encode_write(point: Point, value: Value) -> list[int] | list[bool]:
    """What to send to write ``value``: ValueError for a read-only point, a value outside the
    profile's limits or the type's range, or one the register cannot represent exactly."""
    if point.access is not Access.READ_WRITE:
        raise ValueError(f"{point.name} is read-only ({point.table.value} {point.address})")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if point.min_value is not None and value < point.min_value:
            raise ValueError(f"{point.name}: {value!r} is below the profile's minimum "
                             f"{point.min_value:g}")
        if point.max_value is not None and value > point.max_value:
            raise ValueError(f"{point.name}: {value!r} is above the profile's maximum "
                             f"{point.max_value:g}")
    words = encode_point(point, value)
    if (not point.table.is_bit and point.type not in (DataType.FLOAT32, DataType.FLOAT64)
            and isinstance(value, float) and value != decode_point(point, words)):
        raise ValueError(f"{point.name}: {value!r} cannot be represented exactly (scale "
                         f"{point.scale:g}, {point.type.value}); nearest is "
                         f"{decode_point(point, words)!r}")
    return words

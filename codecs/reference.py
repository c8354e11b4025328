"""The pure-Python reference codec: the specification of record for FORMAT.md.

A batch is a header (version byte, magic) and a list of named series, each with integer
millisecond timestamps and values of one type (bool, int64 or float64). The Cython
module ``edge_agent.fastpath._codec`` must produce identical bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from edge_agent.codecs.floats import decode_floats, encode_floats
from edge_agent.codecs.ints import decode_ints, encode_ints
from edge_agent.codecs.wire import I64_MAX, I64_MIN, Reader, varint
from edge_agent.protocol.errors import CodecError

VERSION = 2
# Version 1 lacks float encoding 2 (binary32 patterns); its batches still decode.
VERSIONS = (1, 2)
MAGIC = b"EC"
HEADER = bytes([VERSION]) + MAGIC
TYPE_BOOL, TYPE_INT, TYPE_FLOAT = 0, 1, 2
TYPE_NAMES = {TYPE_BOOL: "bool", TYPE_INT: "int", TYPE_FLOAT: "float"}
_EXACT_TYPE = {TYPE_BOOL: bool, TYPE_INT: int, TYPE_FLOAT: float}
# A series' timestamp stream costs at least 3 bytes per 128 points (FORMAT.md 4.2), so a
# valid batch never declares more than 64 points per remaining byte; checking that before
# decoding bounds what a hostile blob can make the decoder allocate.
MAX_POINTS_PER_BYTE = 64

Series = tuple[Sequence[int], Sequence[bool | int | float]]


def _value_type(name: str, values: Sequence[object]) -> int:
    """The series type code; CodecError if the values mix types or an int is out of range."""
    if not values:
        return TYPE_INT
    first = values[0]
    kind = TYPE_BOOL if isinstance(first, bool) else TYPE_INT if isinstance(first, int) \
        else TYPE_FLOAT if isinstance(first, float) else -1
    if kind < 0:
        raise CodecError(f"series {name!r}: value 0 is {type(first).__name__}, "
                         "expected bool, int or float")
    if set(map(type, values)) != {_EXACT_TYPE[kind]}:  # else: no subclass, nothing mixed
        _check_one_type(name, kind, values)
    if kind == TYPE_INT:
        _check_int64(name, "value", values)  # type: ignore[arg-type]
    return kind


def _check_one_type(name: str, kind: int, values: Sequence[object]) -> None:
    """CodecError naming the first value that is not of the series' type."""
    for i, v in enumerate(values):
        ok = (isinstance(v, bool) if kind == TYPE_BOOL
              else isinstance(v, int) and not isinstance(v, bool) if kind == TYPE_INT
              else isinstance(v, float))
        if not ok:
            raise CodecError(f"series {name!r}: value {i} is {type(v).__name__} {v!r} in a "
                             f"{TYPE_NAMES[kind]} series; a series holds one type")


def _check_int64(name: str, what: str, xs: Sequence[int]) -> None:
    """CodecError naming the first element outside the signed 64-bit range."""
    if xs and (min(xs) < I64_MIN or max(xs) > I64_MAX):
        i = next(i for i, x in enumerate(xs) if not I64_MIN <= x <= I64_MAX)
        raise CodecError(f"series {name!r}: {what} {i} = {xs[i]} is outside the signed "
                         "64-bit range")


def _timestamps(name: str, ts: Sequence[object]) -> list[int]:
    """The timestamps as a list of int64, or CodecError naming the bad one."""
    out = list(ts)
    for i, t in enumerate(out if set(map(type, out)) - {int} else ()):
        if not isinstance(t, int) or isinstance(t, bool):
            raise CodecError(f"series {name!r}: timestamp {i} is {type(t).__name__} {t!r}, "
                             "expected integer milliseconds")
    _check_int64(name, "timestamp", out)  # type: ignore[arg-type]
    return out  # type: ignore[return-value]


def encode_series(name: str, ts: Sequence[int], values: Sequence[bool | int | float],
                  last: list[object] | None = None) -> bytes:
    """One series: name, point count, type, timestamp stream, value stream.

    ``last`` ([timestamps, stream], filled in here) lets series polled together, which
    share their timestamps, share the work of encoding them: the bytes are the same.
    """
    if not isinstance(name, str):
        raise CodecError(f"series name {name!r} is {type(name).__name__}, expected str")
    try:
        raw_name = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CodecError(f"series name {name!r} is not encodable as UTF-8: {exc}") from None
    try:
        tlist, vlist = list(ts), list(values)
    except TypeError:
        raise CodecError(f"series {name!r}: timestamps and values must be sequences") from None
    tlist = _timestamps(name, tlist)
    if len(tlist) != len(vlist):
        raise CodecError(f"series {name!r}: {len(tlist)} timestamps but {len(vlist)} values")
    kind = _value_type(name, vlist)
    out = bytearray(varint(len(raw_name)))
    out += raw_name
    out += varint(len(tlist))
    out.append(kind)
    if tlist:
        if last and last[0] == tlist:  # validated ints: equal lists, equal streams
            out += last[1]  # type: ignore[arg-type]
        else:
            stream = encode_ints(tlist, allow_rle=False)
            if last is not None:
                last[:] = [tlist, stream]
            out += stream
        if kind == TYPE_FLOAT:
            out += encode_floats(vlist)
        else:
            out += encode_ints(list(map(int, vlist)))
    return bytes(out)


def encode_batch(series: Mapping[str, Series]) -> bytes:
    """Encode named series of (timestamps in ms, values) into one batch."""
    if not isinstance(series, Mapping):
        raise CodecError(f"a batch is a mapping of name to (timestamps, values), "
                         f"got {type(series).__name__}")
    out = bytearray(HEADER)
    out += varint(len(series))
    last: list[object] = []
    for name, pair in series.items():
        try:
            ts, values = pair
        except (TypeError, ValueError):
            raise CodecError(f"series {name!r}: expected a (timestamps, values) pair") from None
        out += encode_series(name, ts, values, last)
    return bytes(out)


def _decode_series(rd: Reader, version: int) -> tuple[str, list[int], list[bool | int | float]]:
    nlen = rd.count(rd.remaining, "series name length")
    try:
        name = rd.take(nlen, "series name").decode("utf-8")
    except UnicodeDecodeError:
        raise rd.fail("series name is not valid UTF-8") from None
    n = rd.count(MAX_POINTS_PER_BYTE * rd.remaining, f"point count of series {name!r}")
    kind = rd.byte("series type")
    if kind not in TYPE_NAMES:
        raise rd.fail(f"unknown series type {kind} for {name!r}")
    if n == 0:
        return name, [], []
    ts = decode_ints(rd, n, allow_rle=False)
    if kind == TYPE_FLOAT:
        return name, ts, list(decode_floats(rd, n, version))
    ints = decode_ints(rd, n)
    if kind == TYPE_INT:
        return name, ts, list(ints)
    if any(v not in (0, 1) for v in ints):
        raise rd.fail(f"bool series {name!r} holds a value other than 0 or 1")
    return name, ts, [v == 1 for v in ints]


def decode_batch(blob: bytes) -> dict[str, tuple[list[int], list[bool | int | float]]]:
    """Decode a batch; CodecError on anything that is not a complete, valid batch."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise CodecError(f"a batch is bytes, got {type(blob).__name__}")
    rd = Reader(bytes(blob))
    if rd.remaining < len(HEADER) or rd.data[0] not in VERSIONS:
        got = rd.data[:1].hex() or "nothing"
        raise CodecError(f"not a version 1 or 2 reading batch: first byte is {got}")
    if rd.data[1:3] != MAGIC:
        raise CodecError(f"not a reading batch: magic is {rd.data[1:3]!r}, expected {MAGIC!r}")
    rd.pos = len(HEADER)
    count = rd.count(rd.remaining, "series count")
    out: dict[str, tuple[list[int], list[bool | int | float]]] = {}
    for _ in range(count):
        name, ts, vals = _decode_series(rd, rd.data[0])
        if name in out:
            raise rd.fail(f"series {name!r} appears twice")
        out[name] = (ts, vals)
    if rd.remaining:
        raise rd.fail(f"{rd.remaining} bytes after the last series")
    return out

"""Data batch version 1: readings in a msgpack map (decoded for old spools; pure, no I/O).

Version 1 is msgpack; the agent publishes version 2 (``batch_v2``) and version 1 is decoded
for batches still spooled or stored from earlier releases. The body of version 1 is a
msgpack map::

    {"g": gateway, "e": boot epoch, "s": seq,
     "r": [[device, [[point, ts, values, flags], ...]], ...]}

one entry per device, one series per (device, point), in order of first appearance:

- ``ts``: timestamps in ms, each as the difference to the one before it (msgpack packs the
  usual 1000 ms step in 3 bytes instead of 9); a series' first timestamp is relative to the
  previous series' first one, and only the batch's very first timestamp is absolute;
- ``values``: one value per timestamp (nil where a bad reading has none);
- ``flags`` (left out when empty): ``[index, quality, exception_code, ...]`` triples for the
  readings that are not plain good ones, index ascending; quality is a code of QUALITY_CODE.

Everything round-trips exactly (floats as float64, ints as ints, bools as bools); only the order
of readings across series is normalised to grouped order (see ``grouped``).

msgpack is imported only when a version 1 batch is met, so a cloud consumer decodes version 2
with the standard library alone.

Limits (``BatchLimits``, FORMAT.md "Limits"): msgpack is told the longest string, array and map
a valid body holds, so it refuses bigger ones while parsing; readings are counted against the
batch's budget before each series is built; names follow the shared name rules.
"""

from __future__ import annotations

from typing import Any

from edge_agent.codecs.batch_model import (
    CODE_QUALITY,
    DEFAULT_LIMITS,
    MAX_NAME,
    BatchLimits,
    DataBatch,
    check_readings,
    name_problem,
)
from edge_agent.protocol.errors import CodecError
from edge_agent.protocol.jsonsafe import show
from edge_agent.protocol.readings import Quality, Reading

VERSION_MSGPACK = 1

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1


def _bad(where: str, msg: str) -> CodecError:
    return CodecError(f"data batch v1: {where}: {msg}")


def _list(where: str, obj: object, min_len: int = 0) -> list[Any]:
    if not isinstance(obj, list):
        raise _bad(where, f"expected an array, got {type(obj).__name__}")
    if len(obj) < min_len:
        raise _bad(where, f"expected at least {min_len} entries, got {len(obj)}")
    return obj


def _name(where: str, obj: object, *, point: bool) -> str:
    problem = name_problem(obj, point=point)
    if problem is not None:
        raise _bad(where, f"name {show(obj)}: {problem}")
    return obj  # type: ignore[return-value]


def _int(where: str, obj: object, lo: int, hi: int) -> int:
    if isinstance(obj, bool) or not isinstance(obj, int) or not lo <= obj <= hi:
        raise _bad(where, f"expected an int in {lo}..{hi}, got {show(obj)}")
    return obj


def _flags(where: str, obj: object, n: int) -> dict[int, tuple[Quality, int | None]]:
    flat = _list(where, obj, 3)
    if len(flat) % 3:
        raise _bad(where, f"expected [index, quality, exception] triples, got {len(flat)} items")
    out: dict[int, tuple[Quality, int | None]] = {}
    last = -1
    for k in range(0, len(flat), 3):
        index = _int(f"{where}[{k}] index", flat[k], last + 1, n - 1)
        code = _int(f"{where}[{k + 1}] quality", flat[k + 1], 0, max(CODE_QUALITY))
        exc = flat[k + 2]
        if exc is not None:
            exc = _int(f"{where}[{k + 2}] exception code", exc, 0, 255)
        out[index] = (CODE_QUALITY[code], exc)
        last = index
    return out


def _decode_series(where: str, device: str, obj: object, base: int, used: int, nbytes: int,
                   limits: BatchLimits) -> list[Reading]:
    series = _list(where, obj, 3)
    if len(series) > 4:
        raise _bad(where, f"expected [point, ts, values(, flags)], got {len(series)} items")
    point = _name(f"{where}[0] point", series[0], point=True)
    deltas = _list(f"{where}[1] ts", series[1], 1)
    # Counted before a Reading is built for any of them.
    check_readings(used + len(deltas), nbytes, limits, f"data batch v1: {where}")
    values = _list(f"{where}[2] values", series[2])
    if len(values) != len(deltas):
        raise _bad(where, f"{len(values)} values for {len(deltas)} timestamps")
    flags = _flags(f"{where}[3] flags", series[3], len(values)) if len(series) == 4 else {}
    out: list[Reading] = []
    ts = base
    for i, (delta, value) in enumerate(zip(deltas, values, strict=True)):
        ts = ts + _int(f"{where}[1][{i}] ts", delta, _INT64_MIN, _UINT64_MAX)
        if not 0 <= ts <= _INT64_MAX:
            raise _bad(f"{where}[1][{i}]", f"timestamp {ts} is outside 0..{_INT64_MAX}")
        if not (value is None or isinstance(value, bool | int | float | str)):
            raise _bad(f"{where}[2][{i}]", f"value of type {type(value).__name__} "
                       "is not bool, int, float, str or nil")
        if isinstance(value, str) and len(value) > limits.max_text:
            raise _bad(f"{where}[2][{i}]", f"text of {len(value)} characters exceeds the limit "
                       f"of {limits.max_text}")
        quality, exc = flags.get(i, (Quality.GOOD, None))
        out.append(Reading(device, point, ts, value, quality, exc))
    return out


def decode_v1(body: bytes, limits: BatchLimits = DEFAULT_LIMITS) -> DataBatch:
    """Decode a version 1 body (after the version byte); CodecError for anything malformed."""
    import msgpack

    nbytes = len(body) + 1  # limits count the whole batch, version byte included
    budget = limits.budget(nbytes)
    try:
        # Bounds while parsing: the longest string is a text value or a name (UTF-8: 4 bytes
        # a character), the longest array a series' flag triples, the only map the body.
        doc = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True,
                              max_str_len=4 * max(limits.max_text, MAX_NAME),
                              max_bin_len=0, max_ext_len=0, max_map_len=4,
                              max_array_len=max(3 * budget, limits.max_series, 4))
    except Exception as exc:  # msgpack raises many types (ExtraData, FormatError, ValueError...)
        raise CodecError(f"data batch v1: body is not valid msgpack: "
                         f"{type(exc).__name__}: {exc}") from None
    if not isinstance(doc, dict):
        raise _bad("body", f"expected a map, got {type(doc).__name__}")
    if set(doc) != {"g", "e", "s", "r"}:
        raise _bad("body", f"expected keys g, e, s, r, got {sorted(map(str, doc))}")
    gateway = _name("g (gateway)", doc["g"], point=False)
    epoch = _int("e (epoch)", doc["e"], 0, _INT64_MAX)
    seq = _int("s (seq)", doc["s"], 0, _INT64_MAX)
    readings: list[Reading] = []
    base = 0
    nseries = 0
    for d, entry in enumerate(_list("r", doc["r"])):
        pair = _list(f"r[{d}]", entry, 2)
        if len(pair) != 2:
            raise _bad(f"r[{d}]", f"expected [device, series], got {len(pair)} items")
        device = _name(f"r[{d}][0] device", pair[0], point=False)
        for p, series in enumerate(_list(f"r[{d}][1]", pair[1], 1)):
            nseries += 1
            if nseries > limits.max_series:
                raise _bad("r", f"more than {limits.max_series} series")
            first = len(readings)
            readings += _decode_series(f"r[{d}][1][{p}] ({device})", device, series, base,
                                       first, nbytes, limits)
            base = readings[first].ts_ms
    return DataBatch(gateway, epoch, seq, readings, VERSION_MSGPACK)

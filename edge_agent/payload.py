"""Data batch framing: one version byte, then a body in that version's format (pure, no I/O).

Version 1 (this module) is msgpack; version 2 (``payload_v2``: the compact codec of
edge_agent.codecs, what the agent publishes) plugs in through ``register_decoder``.
The body of version 1 is a msgpack map::

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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.drivers.model import Quality, Reading
from edge_agent.errors import CodecError

VERSION_MSGPACK = 1

# Wire codes of the qualities: fixed by the format, never by the enum's order.
QUALITY_CODE: dict[Quality, int] = {
    Quality.GOOD: 0,
    Quality.COMM_ERROR: 1,
    Quality.DEVICE_EXCEPTION: 2,
    Quality.DECODE_ERROR: 3,
}
CODE_QUALITY: dict[int, Quality] = {code: q for q, code in QUALITY_CODE.items()}

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1


@dataclass(frozen=True, slots=True)
class DataBatch:
    """A decoded data batch: who sent it, its (epoch, seq) identity, and its readings."""

    gateway: str
    epoch: int
    seq: int
    readings: list[Reading]
    version: int = VERSION_MSGPACK


Decoder = Callable[[bytes], DataBatch]
_DECODERS: dict[int, Decoder] = {}


def register_decoder(version: int, fn: Decoder, *, replace: bool = False) -> None:
    """Make ``decode_batch`` hand bodies with this version byte to ``fn`` (body without the byte).

    ``fn`` must raise CodecError for malformed input; anything else it raises is wrapped.
    """
    if not 1 <= version <= 255:
        raise ValueError(f"batch version must be 1..255 (one byte), got {version}")
    if version in _DECODERS and not replace:
        raise ValueError(f"a decoder for batch version {version} is already registered")
    _DECODERS[version] = fn


def decoder_versions() -> list[int]:
    """The batch versions that can be decoded, ascending."""
    return sorted(_DECODERS)


def decode_batch(blob: bytes) -> DataBatch:
    """Decode a data batch of any registered version; CodecError (only) for bad input."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise CodecError(f"data batch must be bytes, got {type(blob).__name__}")
    data = bytes(blob)
    if not data:
        raise CodecError("data batch is empty: expected a version byte and a body")
    fn = _DECODERS.get(data[0])
    if fn is None:
        raise CodecError(f"data batch has unknown version byte {data[0]}: "
                         f"this build decodes versions {decoder_versions()}")
    try:
        return fn(data[1:])
    except CodecError:
        raise
    except Exception as exc:  # a plug-in decoder's bug must still surface as a CodecError
        raise CodecError(f"data batch v{data[0]}: decoder failed: "
                         f"{type(exc).__name__}: {exc}") from exc


def grouped(readings: Sequence[Reading]) -> list[Reading]:
    """The readings in the order a v1 batch returns them: by device, then point, first seen."""
    series: dict[str, dict[str, list[Reading]]] = {}
    for r in readings:
        series.setdefault(r.device, {}).setdefault(r.point, []).append(r)
    return [r for points in series.values() for rs in points.values() for r in rs]


# ---------------------------------------------------------------- encode (version 1)

def _check_int(what: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise CodecError(f"{what} must be an int in {lo}..{hi}, got {value!r}")
    return value


def _check_value(where: str, value: object) -> None:
    if value is None or isinstance(value, bool | float | str):
        return
    if isinstance(value, int):
        _check_int(f"{where}: value", value, _INT64_MIN, _UINT64_MAX)
        return
    raise CodecError(f"{where}: value {value!r} has type {type(value).__name__}; "
                     "expected bool, int, float, str or None")


def _series_v1(point: str, rs: list[Reading], base: int) -> list[Any]:
    ts: list[int] = []
    values: list[Any] = []
    flags: list[Any] = []
    prev = base
    for i, r in enumerate(rs):
        where = f"reading {r.device}/{r.point} at {r.ts_ms}"
        t = _check_int(f"{where}: ts_ms", r.ts_ms, 0, _INT64_MAX)
        ts.append(t - prev)
        prev = t
        _check_value(where, r.value)
        values.append(r.value)
        try:
            quality = Quality(r.quality)
        except ValueError:
            raise CodecError(f"{where}: unknown quality {r.quality!r}") from None
        if quality is not Quality.GOOD or r.exception_code is not None:
            if r.exception_code is not None:
                _check_int(f"{where}: exception_code", r.exception_code, 0, 255)
            flags += [i, QUALITY_CODE[quality], r.exception_code]
    return [point, ts, values, flags] if flags else [point, ts, values]


def encode_batch_v1(gateway: str, epoch: int, seq: int, readings: Sequence[Reading]) -> bytes:
    """Encode readings as a version 1 (msgpack) data batch, version byte included."""
    if not isinstance(gateway, str) or not gateway:
        raise CodecError(f"gateway must be a non-empty str, got {gateway!r}")
    _check_int("epoch", epoch, 0, _INT64_MAX)
    _check_int("seq", seq, 0, _INT64_MAX)
    series: dict[str, dict[str, list[Reading]]] = {}
    for r in readings:
        if not isinstance(r.device, str) or not isinstance(r.point, str):
            raise CodecError(f"reading names must be str, got device {r.device!r} "
                             f"point {r.point!r}")
        series.setdefault(r.device, {}).setdefault(r.point, []).append(r)
    body_r: list[Any] = []
    base = 0  # the previous series' first timestamp: series of one batch start close together
    for device, points in series.items():
        entries = []
        for point, rs in points.items():
            entries.append(_series_v1(point, rs, base))
            base = rs[0].ts_ms
        body_r.append([device, entries])
    body = {"g": gateway, "e": epoch, "s": seq, "r": body_r}
    try:
        import msgpack

        packed = msgpack.packb(body, use_bin_type=True)
    except (ValueError, TypeError, OverflowError, UnicodeEncodeError) as exc:
        raise CodecError(f"data batch v1 could not be packed: {exc}") from exc
    return bytes([VERSION_MSGPACK]) + packed


# ---------------------------------------------------------------- decode (version 1)

def _bad(where: str, msg: str) -> CodecError:
    return CodecError(f"data batch v1: {where}: {msg}")


def _list(where: str, obj: object, min_len: int = 0) -> list[Any]:
    if not isinstance(obj, list):
        raise _bad(where, f"expected an array, got {type(obj).__name__}")
    if len(obj) < min_len:
        raise _bad(where, f"expected at least {min_len} entries, got {len(obj)}")
    return obj


def _str(where: str, obj: object) -> str:
    if not isinstance(obj, str) or not obj:
        raise _bad(where, f"expected a non-empty string, got {obj!r}")
    return obj


def _int(where: str, obj: object, lo: int, hi: int) -> int:
    if isinstance(obj, bool) or not isinstance(obj, int) or not lo <= obj <= hi:
        raise _bad(where, f"expected an int in {lo}..{hi}, got {obj!r}")
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


def _decode_series(where: str, device: str, obj: object, base: int) -> list[Reading]:
    series = _list(where, obj, 3)
    if len(series) > 4:
        raise _bad(where, f"expected [point, ts, values(, flags)], got {len(series)} items")
    point = _str(f"{where}[0] point", series[0])
    deltas = _list(f"{where}[1] ts", series[1], 1)
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
        quality, exc = flags.get(i, (Quality.GOOD, None))
        out.append(Reading(device, point, ts, value, quality, exc))
    return out


def _decode_v1(body: bytes) -> DataBatch:
    import msgpack

    try:
        doc = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises many types (ExtraData, FormatError, ValueError...)
        raise CodecError(f"data batch v1: body is not valid msgpack: "
                         f"{type(exc).__name__}: {exc}") from None
    if not isinstance(doc, dict):
        raise _bad("body", f"expected a map, got {type(doc).__name__}")
    if set(doc) != {"g", "e", "s", "r"}:
        raise _bad("body", f"expected keys g, e, s, r, got {sorted(map(str, doc))}")
    gateway = _str("g (gateway)", doc["g"])
    epoch = _int("e (epoch)", doc["e"], 0, _INT64_MAX)
    seq = _int("s (seq)", doc["s"], 0, _INT64_MAX)
    readings: list[Reading] = []
    base = 0
    for d, entry in enumerate(_list("r", doc["r"])):
        pair = _list(f"r[{d}]", entry, 2)
        if len(pair) != 2:
            raise _bad(f"r[{d}]", f"expected [device, series], got {len(pair)} items")
        device = _str(f"r[{d}][0] device", pair[0])
        for p, series in enumerate(_list(f"r[{d}][1]", pair[1], 1)):
            first = len(readings)
            readings += _decode_series(f"r[{d}][1][{p}] ({device})", device, series, base)
            base = readings[first].ts_ms
    return DataBatch(gateway, epoch, seq, readings, VERSION_MSGPACK)


register_decoder(VERSION_MSGPACK, _decode_v1)

# Version 2 registers itself on import; it needs this module's names, so it comes last.
from edge_agent import payload_v2  # noqa: E402, F401

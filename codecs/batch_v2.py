"""Data batch version 2: the compact codec (codecs/FORMAT.md) inside a small JSON envelope.

After the version byte ``0x02``::

    varint H            length of the header
    H bytes             UTF-8 JSON: {"g": gateway, "e": epoch, "s": seq, "x": extras}
    rest                a codec batch (codecs/FORMAT.md) of the good readings

Codec series are named ``device/point`` (device ids never hold ``/``; config.py enforces it).
The codec carries bool, int64 and float series of one type each, so a reading it cannot carry
goes to ``extras`` as ``[series, ts_ms, quality_code, exception_code, value]``: readings of
bad quality (value null), strings, ints outside int64, and a value whose type differs from
its series'. A series holding both ints and floats is sent as floats when every int is exact
in binary64 (|v| <= 2^53), so decoded values compare equal to what was read.

Importing this needs only the standard library and the codec, like a cloud consumer has.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from edge_agent import codecs
from edge_agent.codecs.batch_model import CODE_QUALITY, QUALITY_CODE, DataBatch
from edge_agent.protocol.errors import CodecError
from edge_agent.protocol.readings import Quality, Reading

VERSION_CODEC = 2
_INT64 = (-(2**63), 2**63 - 1)
_EXACT_IN_FLOAT = 2**53
_MAX_HEADER = 1 << 24


def _series_type(values: Sequence[object]) -> type:
    if any(isinstance(v, float) for v in values):
        return float
    if any(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return int
    return bool


def _fits(v: object, kind: type) -> Any:
    """``v`` converted to the series type, or None when the codec cannot carry it."""
    if kind is bool:
        return v if isinstance(v, bool) else None
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    if kind is int:
        return v if isinstance(v, int) and _INT64[0] <= v <= _INT64[1] else None
    if isinstance(v, int):
        return float(v) if abs(v) <= _EXACT_IN_FLOAT else None
    return v


def encode_batch_v2(gateway: str, epoch: int, seq: int, readings: Sequence[Reading]) -> bytes:
    """Encode readings as a version 2 (codec) data batch, version byte included."""
    good: dict[str, list[Reading]] = {}
    extras: list[list[Any]] = []
    for r in readings:
        if "/" in r.device:
            raise CodecError(f"device id {r.device!r} must not contain '/'")
        key = f"{r.device}/{r.point}"
        if r.quality is Quality.GOOD and r.value is not None and not isinstance(r.value, str):
            good.setdefault(key, []).append(r)
        else:
            extras.append([key, r.ts_ms, QUALITY_CODE[Quality(r.quality)], r.exception_code,
                           r.value])
    series: dict[str, tuple[list[int], list[Any]]] = {}
    for key, rs in good.items():
        kind = _series_type([r.value for r in rs])
        ts: list[int] = []
        values: list[Any] = []
        for r in rs:
            v = _fits(r.value, kind)
            if v is None:
                extras.append([key, r.ts_ms, QUALITY_CODE[Quality.GOOD], None, r.value])
            else:
                ts.append(r.ts_ms)
                values.append(v)
        if ts:
            series[key] = (ts, values)
    try:
        header = json.dumps({"g": gateway, "e": epoch, "s": seq, "x": extras},
                            separators=(",", ":"), allow_nan=False).encode()
    except ValueError as exc:
        raise CodecError(f"data batch v2: header cannot be written: {exc}") from None
    return bytes([VERSION_CODEC]) + _varint(len(header)) + header + codecs.encode_batch(series)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(body: bytes) -> tuple[int, int]:
    value = shift = 0
    for i, byte in enumerate(body[:4]):
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i + 1
    raise CodecError("data batch v2: header length is not a varint of at most 4 bytes")


def _split(key: object, where: str) -> tuple[str, str]:
    if not isinstance(key, str) or "/" not in key:
        raise CodecError(f"data batch v2: {where}: series name {key!r} is not 'device/point'")
    device, point = key.split("/", 1)
    if not device or not point:
        raise CodecError(f"data batch v2: {where}: series name {key!r} is not 'device/point'")
    return device, point


def _header(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CodecError(f"data batch v2: header is not UTF-8 JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"g", "e", "s", "x"}:
        raise CodecError("data batch v2: header must be an object with keys g, e, s, x")
    if not isinstance(doc["g"], str) or not doc["g"]:
        raise CodecError(f"data batch v2: header g (gateway) {doc['g']!r} is not a string")
    for k in ("e", "s"):
        v = doc[k]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _INT64[1]:
            raise CodecError(f"data batch v2: header {k} {v!r} is not an int in 0..2^63-1")
    if not isinstance(doc["x"], list):
        raise CodecError("data batch v2: header x (extras) is not an array")
    return doc


def _extra(entry: object, i: int) -> Reading:
    where = f"extras[{i}]"
    if not isinstance(entry, list) or len(entry) != 5:
        raise CodecError(f"data batch v2: {where} is not [series, ts, quality, code, value]")
    key, ts, q, code, value = entry
    device, point = _split(key, where)
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts <= _INT64[1]:
        raise CodecError(f"data batch v2: {where}: timestamp {ts!r} is not an int64 >= 0")
    if q not in CODE_QUALITY or isinstance(q, bool):
        raise CodecError(f"data batch v2: {where}: unknown quality code {q!r}")
    if code is not None and (isinstance(code, bool) or not isinstance(code, int)
                             or not 0 <= code <= 255):
        raise CodecError(f"data batch v2: {where}: exception code {code!r} is not 0..255")
    if value is not None and not isinstance(value, bool | int | float | str):
        raise CodecError(f"data batch v2: {where}: value of type {type(value).__name__}")
    return Reading(device, point, ts, value, CODE_QUALITY[q], code)


def decode_v2(body: bytes) -> DataBatch:
    """Decode a version 2 body (after the version byte); CodecError for anything malformed."""
    size, used = _read_varint(body)
    if size > min(_MAX_HEADER, len(body) - used):
        raise CodecError(f"data batch v2: header length {size} exceeds the "
                         f"{len(body) - used} bytes that follow")
    doc = _header(body[used:used + size])
    readings = [_extra(e, i) for i, e in enumerate(doc["x"])]
    for key, (ts, values) in codecs.decode_batch(body[used + size:]).items():
        device, point = _split(key, "codec series")
        readings.extend(Reading(device, point, t, v) for t, v in zip(ts, values, strict=True))
    readings.sort(key=lambda r: (r.device, r.point, r.ts_ms))
    return DataBatch(doc["g"], doc["e"], doc["s"], readings, version=VERSION_CODEC)


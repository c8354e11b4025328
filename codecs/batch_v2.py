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

Decoding is bounded (codecs/FORMAT.md, section 7): the header is read with the strict JSON
reader (``edge_agent.protocol.jsonsafe``), names follow the shared rules (``batch_model``), and
the codec body is pre-scanned for its series' names and point counts, which are checked
against ``BatchLimits`` before the codec decodes a value.

Importing this needs only the standard library and the codec, like a cloud consumer has.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from edge_agent import codecs
from edge_agent.codecs.batch_model import (
    CODE_QUALITY,
    DEFAULT_LIMITS,
    MAX_NAME,
    MAX_SERIES_NAME_BYTES,
    QUALITY_CODE,
    BatchLimits,
    DataBatch,
    check_readings,
    name_problem,
)
from edge_agent.codecs.ints import BLOCK, MODE_RLE
from edge_agent.codecs.reference import MAX_POINTS_PER_BYTE, TYPE_FLOAT, TYPE_NAMES
from edge_agent.codecs.wire import Reader
from edge_agent.protocol.errors import CodecError
from edge_agent.protocol.jsonsafe import UnsafeJsonError, loads_strict, show
from edge_agent.protocol.readings import Quality, Reading

VERSION_CODEC = 2
_INT64 = (-(2**63), 2**63 - 1)
_UINT64_MAX = 2**64 - 1  # extras carry ints outside int64 (uint64 registers), never beyond
_EXACT_IN_FLOAT = 2**53
_MAX_KEY = 2 * MAX_NAME + 1  # the longest series name "device/point", in characters


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
    """(device, point) of a series name ``device/point``, each following its name rule."""
    if not isinstance(key, str) or "/" not in key:
        raise CodecError(f"data batch v2: {where}: series name {show(key)} is not "
                         "'device/point'")
    device, point = key.split("/", 1)
    for name, is_point in ((device, False), (point, True)):
        problem = name_problem(name, point=is_point)
        if problem is not None:
            raise CodecError(f"data batch v2: {where}: series name {show(key)}: "
                             f"{'point' if is_point else 'device'} {show(name)}: {problem}")
    return device, point


def _header(raw: bytes, limits: BatchLimits, budget: int) -> dict[str, Any]:
    try:
        # Depth 3: the header object, its extras array, an extra. Arrays and objects are
        # counted before parsing, so the extras are bounded before one is built.
        doc = loads_strict(raw, max_bytes=limits.max_header_bytes, max_depth=3,
                           max_items=max(budget, 5), max_str=max(limits.max_text, _MAX_KEY),
                           max_containers=budget + 2, int_min=_INT64[0], int_max=_UINT64_MAX,
                           allow_float=True)
    except UnsafeJsonError as exc:
        raise CodecError(f"data batch v2: header refused at {exc.path}: {exc.problem}") from None
    if not isinstance(doc, dict) or set(doc) != {"g", "e", "s", "x"}:
        raise CodecError("data batch v2: header must be an object with keys g, e, s, x")
    problem = name_problem(doc["g"], point=False)
    if problem is not None:
        raise CodecError(f"data batch v2: header g (gateway) {show(doc['g'])}: {problem}")
    for k in ("e", "s"):
        v = doc[k]
        if type(v) is not int or not 0 <= v <= _INT64[1]:
            raise CodecError(f"data batch v2: header {k} {show(v)} is not an int in 0..2^63-1")
    if not isinstance(doc["x"], list):
        raise CodecError("data batch v2: header x (extras) is not an array")
    return doc


def _extra(entry: object, i: int, limits: BatchLimits) -> Reading:
    where = f"extras[{i}]"
    if not isinstance(entry, list) or len(entry) != 5:
        raise CodecError(f"data batch v2: {where} is not [series, ts, quality, code, value]")
    key, ts, q, code, value = entry
    device, point = _split(key, where)
    if type(ts) is not int or not 0 <= ts <= _INT64[1]:
        raise CodecError(f"data batch v2: {where}: timestamp {show(ts)} is not an int64 >= 0")
    if type(q) is not int or q not in CODE_QUALITY:
        raise CodecError(f"data batch v2: {where}: unknown quality code {show(q)}")
    if code is not None and (type(code) is not int or not 0 <= code <= 255):
        raise CodecError(f"data batch v2: {where}: exception code {show(code)} is not 0..255")
    if value is not None and not isinstance(value, bool | int | float | str):
        raise CodecError(f"data batch v2: {where}: value of type {type(value).__name__}")
    if isinstance(value, str) and len(value) > limits.max_text:
        raise CodecError(f"data batch v2: {where}: text of {len(value)} characters exceeds the "
                         f"limit of {limits.max_text}")
    return Reading(device, point, ts, value, CODE_QUALITY[q], code)


def decode_v2(body: bytes, limits: BatchLimits = DEFAULT_LIMITS) -> DataBatch:
    """Decode a version 2 body (after the version byte); CodecError for anything malformed."""
    nbytes = len(body) + 1  # limits count the whole batch, version byte included
    budget = limits.budget(nbytes)
    size, used = _read_varint(body)
    if size > len(body) - used:
        raise CodecError(f"data batch v2: header length {size} exceeds the "
                         f"{len(body) - used} bytes that follow")
    if size > limits.max_header_bytes:
        raise CodecError(f"data batch v2: header of {size} bytes exceeds the limit of "
                         f"{limits.max_header_bytes}")
    doc = _header(body[used:used + size], limits, budget)
    extras = doc["x"]
    check_readings(len(extras), nbytes, limits, "data batch v2: header")
    readings = [_extra(e, i, limits) for i, e in enumerate(extras)]
    codec_body = body[used + size:]
    # The codec expands run-length and width-0 streams: up to 43 readings a byte. Its point
    # counts are read and summed first, without decoding a value, and checked against the
    # limits before the codec materialises anything.
    declared = _scan_codec(codec_body, len(extras), nbytes, limits)
    series = codecs.decode_batch(codec_body)
    if sum(len(ts) for ts, _ in series.values()) != declared:
        raise CodecError("data batch v2: the codec decoded another number of readings than "
                         "its series declare (decoder fault)")
    for key, (ts, values) in series.items():
        device, point = _split(key, "codec series")  # checked by the scan: cannot fail here
        if ts and min(ts) < 0:
            raise CodecError(f"data batch v2: codec series {show(key)}: timestamp {min(ts)} "
                             "is negative")
        readings.extend(Reading(device, point, t, v) for t, v in zip(ts, values, strict=True))
    readings.sort(key=lambda r: (r.device, r.point, r.ts_ms))
    return DataBatch(doc["g"], doc["e"], doc["s"], readings, version=VERSION_CODEC)


# ------------------------------------------------------------- codec pre-scan (FORMAT.md 1-5)
# Walks the codec's structure, skipping every stream without decoding a value, to learn each
# series' name and point count N before the codec allocates anything. Work is proportional
# to the bytes (each skipped block, exception and XOR value consumes at least one), and a
# series' N is checked against the limits before its streams are skipped. Malformed input
# is refused here with the same kind of message the codec gives; the codec decodes (and
# checks) the values afterwards.


def _scan_codec(data: bytes, extras: int, nbytes: int, limits: BatchLimits,
                check_name: Callable[[str], object] | None = None,
                where: str = "data batch v2") -> int:
    """The codec series' total point count, refused if over the limits; names checked (as
    ``device/point``, or by ``check_name``, which raises CodecError)."""
    if len(data) < 3 or data[0] not in (1, 2) or data[1:3] != b"EC":
        return 0  # the codec refuses it, saying why, before allocating anything
    version = data[0]
    rd = Reader(data)
    rd.pos = 3
    count = rd.count(rd.remaining, "series count")
    if count > limits.max_series:
        raise CodecError(f"{where}: {count} codec series exceed the limit of "
                         f"{limits.max_series}")
    total = 0
    for _ in range(count):
        nlen = rd.count(min(rd.remaining, MAX_SERIES_NAME_BYTES), "series name length")
        try:
            name = rd.take(nlen, "series name").decode("utf-8")
        except UnicodeDecodeError:
            raise rd.fail("series name is not valid UTF-8") from None
        if check_name is None:
            _split(name, "codec series")
        else:
            check_name(name)
        n = rd.count(MAX_POINTS_PER_BYTE * rd.remaining, f"point count of series {name!r}")
        total += n
        check_readings(extras + total, nbytes, limits, where)
        kind = rd.byte("series type")
        if kind not in TYPE_NAMES:
            raise rd.fail(f"unknown series type {kind} for {name!r}")
        if n:
            _skip_ints(rd, n, allow_rle=False)
            if kind == TYPE_FLOAT:
                _skip_floats(rd, n, version)
            else:
                _skip_ints(rd, n, allow_rle=True)
    return total


def _skip(rd: Reader, n: int, what: str) -> None:
    if n > rd.remaining:
        raise rd.fail(f"{what} needs {n} bytes, only {rd.remaining} left")
    rd.pos += n


def _skip_ints(rd: Reader, n: int, *, allow_rle: bool) -> None:
    """Skip an integer stream of ``n`` values (FORMAT.md 4)."""
    mode = rd.byte("integer stream mode")
    if mode == MODE_RLE and allow_rle:
        runs = rd.count(n, "run count")
        _skip_ints(rd, runs, allow_rle=False)  # run values
        _skip_ints(rd, runs, allow_rle=False)  # run lengths - 1
        return
    if mode > 2:
        raise rd.fail(f"unknown integer stream mode {mode}")
    lead = min(mode, n)
    for _ in range(lead):
        rd.varint("leading value")
    m = n - lead
    for start in range(0, m, BLOCK):
        block = min(BLOCK, m - start)
        rd.varint("block base")
        width = rd.byte("block width")
        if width > 64:
            raise rd.fail(f"block bit width {width} exceeds 64")
        exceptions = rd.count(block, "block exception count")
        _skip(rd, (block * width + 7) // 8, "packed block")
        for _ in range(exceptions):
            rd.byte("exception position")
            rd.varint("exception high bits")


def _skip_floats(rd: Reader, n: int, version: int) -> None:
    """Skip a float stream of ``n`` values (FORMAT.md 5)."""
    enc = rd.byte("float encoding")
    if enc == 0:  # ALP: spec byte, k stream, exceptions (gap varint + 8 bytes each)
        rd.byte("ALP exponent")
        _skip_ints(rd, n, allow_rle=True)
        for _ in range(rd.count(n, "ALP exception count")):
            rd.varint("ALP exception gap")
            _skip(rd, 8, "ALP exception value")
    elif enc == 1:  # XOR: a control byte per value, then its length's bytes
        for _ in range(n):
            ctrl = rd.byte("XOR control")
            if (ctrl >> 4) + (ctrl & 0x0F) > 8:
                raise rd.fail(f"XOR control {ctrl:#04x} spans more than 8 bytes")
            _skip(rd, ctrl & 0x0F, "XOR bytes")
    elif enc == 2 and version >= 2:  # binary32 patterns: an integer stream
        _skip_ints(rd, n, allow_rle=True)
    else:
        raise rd.fail(f"unknown float encoding {enc} in a version {version} batch")

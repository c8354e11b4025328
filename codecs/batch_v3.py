"""Data batch version 3: readings by series index and grid slot, against a schema (pure, no I/O).

After the version byte ``0x03`` (codecs/FORMAT.md, section 10)::

    6 bytes     the schema's hash (``schema.schema_hash`` of its message bytes)
    varint      (epoch - the schema's epoch) x 2 + body kind (the agent: 0 or 1)
    varint      seq
    varint      base: ticks after the schema's t0 (base_ms = t0 + base x tick)
    varint X    extras, then X extras (byte-aligned)
    body        the grid readings, either bits (for each present series its index gap,
                count, first slot, steps, values; zero-padded to the last byte) or, for
                long series when shorter, a codec batch (``batch_v3_codec``)

The gateway is not in the batch: it is the topic's (the ingest checks the schema's ``g``).
A batch needs only its schema: nothing refers to another batch, so one lost to the spool's
drop-oldest policy spoils no other. A reading the grid section cannot carry (bad quality,
text, a series or timestamp off the schema's grid, an int beyond int64, a value of another
type than its series' in this batch) is an extra, with every field spelt out.

Pure Python: the codec (reference and Cython fast path) is not involved, so it stays as it was.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any, NamedTuple

from edge_agent.codecs.batch_model import (
    CODE_QUALITY,
    QUALITY_CODE,
    BatchLimits,
    DataBatch,
    check_readings,
)
from edge_agent.codecs.batch_v2 import _fits, _series_type, _split
from edge_agent.codecs.batch_v3_codec import (
    MIN_MEAN_POINTS,
    decode_codec_body,
    encode_codec_body,
)
from edge_agent.codecs.batch_v3_values import (
    BOOL,
    INT,
    KIND_NAMES,
    default_kind,
    float_kind,
    read_values,
    write_values,
)
from edge_agent.codecs.bits import BitReader, BitWriter
from edge_agent.codecs.schema import HASH_BYTES, StreamSchema
from edge_agent.codecs.wire import I64_MAX, I64_MIN, M64, Reader, varint, wrap64, zigzag
from edge_agent.protocol.errors import CodecError
from edge_agent.protocol.readings import Quality, Reading

VERSION_SCHEMA = 3
GRID, CODEC = 0, 1  # the body after the extras: the bit stream, or a codec batch (10.5)
# Extra value tags (FORMAT.md 10.2).
T_NONE, T_FALSE, T_TRUE, T_INT, T_UINT, T_FLOAT, T_TEXT = range(7)
_MAX_KEY_BYTES = 4 * 129


class MissingSchema(CodecError):
    """A version 3 batch names a schema the decoder does not have (recoverable: ask for it)."""

    def __init__(self, schema_hash: bytes, epoch_delta: int, seq: int) -> None:
        self.schema_hash = schema_hash
        self.epoch_delta = epoch_delta
        self.seq = seq
        super().__init__(f"data batch v3 seq {seq}: schema {schema_hash.hex()} is not known "
                         "here")


# A schema lookup: (gateway, hash) -> the schema, or None when it is not known.
SchemaLookup = Callable[[str, bytes], StreamSchema | None]


def _extra(out: bytearray, ref: int, key: str, r: Reading, base_ms: int) -> None:
    out += varint(ref)
    if ref == 0:
        raw = key.encode("utf-8")
        out += varint(len(raw)) + raw
    out += varint(zigzag(wrap64(r.ts_ms - base_ms)))
    out.append(QUALITY_CODE[Quality(r.quality)])
    out += varint(0 if r.exception_code is None else r.exception_code + 1)
    v = r.value
    if v is None:
        out.append(T_NONE)
    elif isinstance(v, bool):
        out.append(T_TRUE if v else T_FALSE)
    elif isinstance(v, int):
        if I64_MIN <= v <= I64_MAX:
            out.append(T_INT)
            out += varint(zigzag(v))
        elif I64_MAX < v <= M64:
            out.append(T_UINT)
            out += varint(v)
        else:
            raise CodecError(f"{key}: int {v} is outside -2^63..2^64-1")
    elif isinstance(v, float):
        out.append(T_FLOAT)
        out += struct.pack("<d", v)
    else:
        text = str(v).encode("utf-8", "surrogatepass")
        out.append(T_TEXT)
        out += varint(len(text)) + text


class _Plan(NamedTuple):
    """What the coder needs of a schema, worked out once: positions, default kinds, steps."""

    positions: dict[str, dict[str, int]]  # device -> point -> index (no tuple per series)
    kinds: tuple[int, ...]
    steps: tuple[int, ...]


_PLANS: dict[bytes, _Plan] = {}
_MAX_PLANS = 64


def _plan(schema: StreamSchema) -> _Plan:
    """The schema's plan, cached by its message bytes (equal bytes, equal schema)."""
    plan = _PLANS.get(schema.raw)
    if plan is None:
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        positions: dict[str, dict[str, int]] = {}
        for i, s in enumerate(schema.series):
            positions.setdefault(s.device, {})[s.point] = i
        plan = _PLANS[schema.raw] = _Plan(
            positions, tuple(default_kind(s.type, s.scale, s.offset) for s in schema.series),
            tuple(s.interval_ms // schema.tick_ms for s in schema.series))
    return plan


def _grid_ok(r: Reading, t0: int, tick: int) -> bool:
    ts, v = r.ts_ms, r.value
    return (type(ts) is int and ts >= t0 and (ts - t0) % tick == 0
            and r.quality is Quality.GOOD and v is not None and not isinstance(v, str))


def encode_batch_v3(schema: StreamSchema, epoch: int, seq: int,
                    readings: Sequence[Reading]) -> bytes:
    """Encode readings as a version 3 batch against ``schema``, version byte included."""
    plan = _plan(schema)
    index = plan.positions
    tick, t0 = schema.tick_ms, schema.t0_ms
    grid: dict[int, list[Reading]] = {}
    extras: list[tuple[int, str, Reading]] = []
    none: dict[str, int] = {}
    for r in readings:
        i = index.get(r.device, none).get(r.point)
        if i is not None and _grid_ok(r, t0, tick):
            if i in grid:
                grid[i].append(r)
            else:
                grid[i] = [r]
        else:
            if "/" in r.device:
                raise CodecError(f"device id {r.device!r} must not contain '/'")
            extras.append((0 if i is None else i + 1, f"{r.device}/{r.point}", r))
    bw = BitWriter()
    present: list[tuple[int, list[Reading], int, list[Any]]] = []
    for i in sorted(grid):
        rs = grid[i]
        s = schema.series[i]
        one = rs[0].value if len(rs) == 1 else None
        if one.__class__ is float:  # the common case: one reading of a series, fast
            present.append((i, rs, float_kind([one], s.scale, s.offset, plan.kinds[i]), [one]))
            continue
        if len(rs) > 1:
            rs.sort(key=lambda r: r.ts_ms)
        kind_t = _series_type([r.value for r in rs])
        kept: list[Reading] = []
        values: list[Any] = []
        for r in rs:
            v = _fits(r.value, kind_t)
            if v is None:
                extras.append((i + 1, f"{r.device}/{r.point}", r))
            else:
                kept.append(r)
                values.append(v)
        if kept:
            kind = BOOL if kind_t is bool else INT if kind_t is int else \
                float_kind(values, s.scale, s.offset, plan.kinds[i])
            present.append((i, kept, kind, values))
    base = min(((r.ts_ms - t0) // tick for _, rs, _, _ in present for r in rs), default=0)
    base_ms = t0 + base * tick
    bw.eg(len(present))
    prev = -1
    for i, rs, kind, values in present:
        s = schema.series[i]
        # The series' header in one write: EG(gap), EG(n - 1), the kind flag (and kind), and
        # EG(first slot); each EG(x) is x + 1 in 2 x bitlength(x + 1) - 1 bits.
        gap, n1, slot = i - prev, len(rs), (rs[0].ts_ms - t0) // tick - base + 1
        prev = i
        gw, nw, sw = 2 * gap.bit_length() - 1, 2 * n1.bit_length() - 1, 2 * slot.bit_length() - 1
        flag, fw = (1, 1) if kind == plan.kinds[i] else (kind, 4)  # 0, then 3 bits of kind
        bw.bits((((gap << nw | n1) << fw | flag) << sw) | slot, gw + nw + fw + sw)
        if len(rs) > 1:
            step = plan.steps[i]
            slots = [(r.ts_ms - t0) // tick for r in rs]
            for a, b in pairwise(slots):
                bw.snum(b - a - step)
        write_values(bw, kind, values, s.scale, s.offset)
    body, kind_of_body = bw.finish(), GRID
    total = sum(len(rs) for _, rs, _, _ in present)
    if present and total >= MIN_MEAN_POINTS * len(present):  # long series: try the codec
        packed = encode_codec_body([(i, [(r.ts_ms - t0) // tick - base for r in rs], values)
                                    for i, rs, _, values in present])
        if len(packed) < len(body):
            body, kind_of_body = packed, CODEC
    out = bytearray([VERSION_SCHEMA])
    if not schema.epoch <= epoch <= I64_MAX:
        raise CodecError(f"epoch {epoch} is before its schema's epoch {schema.epoch}")
    out += schema.hash + varint((epoch - schema.epoch) << 1 | kind_of_body) + varint(seq)
    out += varint(base) + varint(len(extras))
    for ref, key, r in extras:
        _extra(out, ref, key, r, base_ms)
    return bytes(out + body)


# ------------------------------------------------------------------------------ decoding


def _read_extra(rd: Reader, schema: StreamSchema, base_ms: int, limits: BatchLimits,
                where: str) -> Reading:
    ref = rd.count(len(schema.series), f"{where} series reference")
    if ref:
        s = schema.series[ref - 1]
        device, point = s.device, s.point
    else:
        nlen = rd.count(_MAX_KEY_BYTES, f"{where} series name length")
        try:
            key = rd.take(nlen, f"{where} series name").decode("utf-8")
        except UnicodeDecodeError:
            raise CodecError(f"data batch v3: {where}: series name is not UTF-8") from None
        device, point = _split(key, where)
    ts = wrap64(base_ms + rd.svarint(f"{where} timestamp"))
    if not 0 <= ts <= I64_MAX:
        raise CodecError(f"data batch v3: {where}: timestamp {ts} is not an int64 >= 0")
    q = rd.byte(f"{where} quality")
    if q not in CODE_QUALITY:
        raise CodecError(f"data batch v3: {where}: unknown quality code {q}")
    code = rd.count(256, f"{where} exception code")
    tag = rd.byte(f"{where} value tag")
    value: Any
    if tag == T_NONE:
        value = None
    elif tag in (T_FALSE, T_TRUE):
        value = tag == T_TRUE
    elif tag == T_INT:
        value = rd.svarint(f"{where} int")
    elif tag == T_UINT:
        value = rd.varint(f"{where} uint")
        if value <= I64_MAX:
            raise CodecError(f"data batch v3: {where}: uint {value} fits int64 (use tag 3)")
    elif tag == T_FLOAT:
        value = struct.unpack("<d", rd.take(8, f"{where} float"))[0]
    elif tag == T_TEXT:
        n = rd.count(4 * limits.max_text, f"{where} text length")
        try:
            value = rd.take(n, f"{where} text").decode("utf-8")
        except UnicodeDecodeError:
            raise CodecError(f"data batch v3: {where}: text is not UTF-8") from None
        if len(value) > limits.max_text:
            raise CodecError(f"data batch v3: {where}: text of {len(value)} characters "
                             f"exceeds the limit of {limits.max_text}")
    else:
        raise CodecError(f"data batch v3: {where}: unknown value tag {tag}")
    return Reading(device, point, ts, value, CODE_QUALITY[q], None if code == 0 else code - 1)


def read_head(body: bytes) -> tuple[bytes, int, int, int, Reader]:
    """(schema hash, epoch - schema epoch, body kind, seq, reader after them) of a version 3
    body (after the version byte)."""
    if len(body) < HASH_BYTES:
        raise CodecError(f"data batch v3: {len(body)} bytes, shorter than the schema hash")
    rd = Reader(body)
    rd.pos = HASH_BYTES
    delta_kind = rd.varint("epoch")
    seq = rd.varint("seq")
    if delta_kind >> 1 > I64_MAX or seq > I64_MAX:
        raise CodecError(f"data batch v3: epoch {delta_kind >> 1} or seq {seq} exceeds 2^63-1")
    return body[:HASH_BYTES], delta_kind >> 1, delta_kind & 1, seq, rd


def decode_v3(body: bytes, limits: BatchLimits, gateway: str,
              schemas: SchemaLookup) -> DataBatch:
    """Decode a version 3 body (after the version byte) for ``gateway``; MissingSchema if its
    schema is unknown, CodecError for anything malformed."""
    nbytes = len(body) + 1
    budget = limits.budget(nbytes)
    digest, delta, kind_of_body, seq, rd = read_head(body)
    schema = schemas(gateway, digest)
    if schema is None:
        raise MissingSchema(digest, delta, seq)
    if schema.gateway != gateway:
        raise CodecError(f"data batch v3: schema {digest.hex()} is gateway "
                         f"{schema.gateway!r}'s, not {gateway!r}'s")
    epoch = schema.epoch + delta
    if epoch > I64_MAX:
        raise CodecError(f"data batch v3: epoch {epoch} exceeds 2^63-1")
    base = rd.varint("base slot")
    base_ms = schema.t0_ms + base * schema.tick_ms
    if base_ms > I64_MAX:
        raise CodecError(f"data batch v3: base slot {base} is beyond int64 milliseconds")
    n_extras = rd.varint("extras count")
    check_readings(n_extras, nbytes, limits, "data batch v3: extras")
    readings = [_read_extra(rd, schema, base_ms, limits, f"extras[{i}]")
                for i in range(n_extras)]
    if kind_of_body == CODEC:
        readings += decode_codec_body(body[rd.pos:], schema, base, limits, n_extras, nbytes)
    else:
        readings += _read_grid(BitReader(body, rd.pos), schema, base, limits,
                               budget - n_extras, n_extras, nbytes)
    readings.sort(key=lambda r: (r.device, r.point, r.ts_ms))
    return DataBatch(gateway, epoch, seq, readings, version=VERSION_SCHEMA)


def _read_grid(br: BitReader, schema: StreamSchema, base: int, limits: BatchLimits,
               budget: int, extras: int, nbytes: int) -> list[Reading]:
    out: list[Reading] = []
    nseries = len(schema.series)
    present = br.count(min(nseries, limits.max_series), "present series count")
    prev = -1
    total = extras
    plan = _plan(schema)
    for _ in range(present):
        i = prev + 1 + br.count(nseries - prev - 2, "series index gap")
        prev = i
        s = schema.series[i]
        n = br.count(max(0, budget - (total - extras)), f"readings of series {i}") + 1
        total += n
        check_readings(total, nbytes, limits, "data batch v3")
        kind = plan.kinds[i] if br.bits(1, "kind flag") else br.bits(3, "value kind")
        if kind not in KIND_NAMES:
            raise br.fail(f"unknown value kind {kind} for series {i}")
        step = plan.steps[i]
        slots = [br.eg(f"first slot of series {i}")]
        for _ in range(n - 1):
            slots.append(slots[-1] + step + br.snum(f"slot step of series {i}"))
        t0, tick = schema.t0_ms, schema.tick_ms
        values = read_values(br, kind, n, s.scale, s.offset, i)
        for slot, v in zip(slots, values, strict=True):
            ts = t0 + (base + slot) * tick
            if not 0 <= ts <= I64_MAX:
                raise br.fail(f"series {i}: timestamp {ts} is not an int64 >= 0")
            out.append(Reading(s.device, s.point, ts, v))
    br.finish("the last series")
    return out

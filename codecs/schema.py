"""The stream dictionary: a gateway's series for one boot epoch, described once (pure, no I/O).

A version 3 data batch (``batch_v3``) names no series and no gateway: it refers to its series
by their index in a schema message and to that message by a short hash of its bytes. The
schema is plain JSON (codecs/FORMAT.md, section 9)::

    {"v": 1, "g": gateway, "e": epoch, "t0": ms, "tick": ms,
     "columns": ["device", "point", "type", "unit", "scale", "offset", "interval_ms"],
     "series": [[device, point, type, unit, scale, offset, interval_ms], ...]}

``t0`` and ``tick`` place the poll grid: every series' interval is a multiple of ``tick`` (their
greatest common divisor), ``t0`` a tick mark at or before the epoch, so a grid-aligned reading
is a small whole number of ticks after ``t0``. The hash is the first ``HASH_BYTES`` of the
SHA-256 of the message's bytes, computed by whoever reads it (a hash is never taken on trust).

``parse_schema`` is total: any input ends in a StreamSchema or a CodecError saying what was wrong
and where, within ``SchemaLimits``, checked before the work they bound.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from edge_agent.codecs.batch_model import MAX_NAME, name_problem
from edge_agent.protocol.errors import CodecError
from edge_agent.protocol.jsonsafe import INT64_MAX, UnsafeJsonError, loads_strict, show
from edge_agent.protocol.readings import MAX_UNIT, point_text_problem

SCHEMA_VERSION = 1
HASH_BYTES = 6
COLUMNS = ("device", "point", "type", "unit", "scale", "offset", "interval_ms")
# Register types as profiles name them (edge_agent.drivers.model.DataType), plus "bool" for
# coils, discrete inputs and bit fields. Only the value coding's default depends on them.
TYPES = frozenset({"bool", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                   "float32", "float64", "string", "bits"})
MAX_INTERVAL_MS = 7 * 24 * 3600 * 1000  # a week: far beyond any poll interval


@dataclass(frozen=True, slots=True)
class SchemaLimits:
    """What a schema reader accepts at most (codecs/FORMAT.md 9.2)."""

    # A series costs about 55 bytes: the poll benchmark's 500 devices x 30 points (15,000
    # series) make an 830 KB schema; these allow four times that.
    max_bytes: int = 8 * 1024 * 1024
    max_series: int = 65_536

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 1:
                raise ValueError(f"SchemaLimits.{f.name} = {value!r}: expected an integer >= 1")


DEFAULT_SCHEMA_LIMITS = SchemaLimits()


@dataclass(frozen=True, slots=True)
class SeriesDef:
    """One series of a schema: which point of which device, and how it is read."""

    device: str
    point: str
    type: str
    unit: str = ""
    scale: float = 1.0
    offset: float = 0.0
    interval_ms: int = 1000

    @property
    def key(self) -> str:
        """The series name as version 2 batches spell it: ``device/point``."""
        return f"{self.device}/{self.point}"


@dataclass(frozen=True, slots=True)
class StreamSchema:
    """A parsed (or built) schema message, its exact bytes and its hash."""

    gateway: str
    epoch: int
    t0_ms: int
    tick_ms: int
    series: tuple[SeriesDef, ...]
    raw: bytes
    hash: bytes

    def index(self) -> dict[tuple[str, str], int]:
        """(device, point) -> index of the series."""
        return {(s.device, s.point): i for i, s in enumerate(self.series)}


def schema_hash(raw: bytes) -> bytes:
    """The short content hash of a schema message's bytes."""
    return hashlib.sha256(raw).digest()[:HASH_BYTES]


def build_schema(gateway: str, epoch: int, series: Sequence[SeriesDef]) -> StreamSchema:
    """The schema message of ``series`` for one boot epoch; CodecError if a series is invalid."""
    tick = 0
    for s in series:
        tick = math.gcd(tick, s.interval_ms)
    tick = tick or 1000
    t0 = epoch // tick * tick
    # Checked by the reader's own rules, so the agent sends nothing a reader would refuse
    # (without parsing its own JSON back: for 15,000 series that would cost 10 MB at start).
    # Row by row, each checked and written as it is made: a gateway's memory peak is set at
    # start, and a list of every row beside its copy in checked objects cost it 5 MB.
    problem = name_problem(gateway, point=False)
    if problem is not None or type(epoch) is not int or not 0 <= epoch <= INT64_MAX:
        raise _fail("g", f"gateway {show(gateway)} or epoch {show(epoch)} is not valid")
    checked = tuple(series)
    _check_count(len(checked), DEFAULT_SCHEMA_LIMITS)
    parts = []
    try:
        for i, s in enumerate(checked):
            row = [s.device, s.point, s.type, s.unit, float(s.scale), float(s.offset),
                   s.interval_ms]
            _series(row, i, tick)
            parts.append(json.dumps(row, separators=(",", ":"), ensure_ascii=False,
                                    allow_nan=False))
        _check_tick_and_repeats(checked, tick)
        head = json.dumps({"v": SCHEMA_VERSION, "g": gateway, "e": epoch, "t0": t0,
                           "tick": tick, "columns": list(COLUMNS)},
                          separators=(",", ":"), ensure_ascii=False)
        raw = (head[:-1] + ',"series":[' + ",".join(parts) + "]}").encode()
    except (ValueError, UnicodeEncodeError) as exc:
        raise CodecError(f"schema cannot be written: {exc}") from None
    del parts
    if len(raw) > DEFAULT_SCHEMA_LIMITS.max_bytes:
        raise _fail("$", f"{len(raw)} bytes exceed the limit of "
                    f"{DEFAULT_SCHEMA_LIMITS.max_bytes}")
    return StreamSchema(gateway, epoch, t0, tick, checked, raw, schema_hash(raw))


def _fail(where: str, problem: str) -> CodecError:
    return CodecError(f"schema message: {where}: {problem}")


def _int_in(doc: dict[str, object], key: str, lo: int, hi: int) -> int:
    v = doc[key]
    if type(v) is not int or not lo <= v <= hi:
        raise _fail(key, f"{show(v)} is not an integer in {lo}..{hi}")
    return v


def _number(v: object, where: str) -> float:
    if type(v) not in (int, float) or not math.isfinite(float(v)):  # type: ignore[arg-type]
        raise _fail(where, f"{show(v)} is not a finite number")
    return float(v)  # type: ignore[arg-type]


def _series(row: object, i: int, tick: int) -> SeriesDef:
    where = f"series[{i}]"
    if not isinstance(row, list) or len(row) != len(COLUMNS):
        raise _fail(where, f"is not an array of the {len(COLUMNS)} columns")
    device, point, kind, unit, scale, offset, interval = row
    for name, is_point in ((device, False), (point, True)):
        problem = name_problem(name, point=is_point)
        if problem is not None:
            raise _fail(where, f"{'point' if is_point else 'device'} {show(name)}: {problem}")
    if kind not in TYPES:
        raise _fail(where, f"type {show(kind)} is not one of {sorted(TYPES)}")
    if not isinstance(unit, str) or point_text_problem("x", unit) is not None:
        raise _fail(where, f"unit {show(unit)} is not text of at most {MAX_UNIT} characters "
                    "without control characters")
    scale_f, offset_f = _number(scale, f"{where} scale"), _number(offset, f"{where} offset")
    if scale_f == 0:
        raise _fail(where, "scale is 0")
    if type(interval) is not int or not 1 <= interval <= MAX_INTERVAL_MS \
            or interval % tick:
        raise _fail(where, f"interval_ms {show(interval)} is not a multiple of tick {tick} "
                    f"in 1..{MAX_INTERVAL_MS}")
    return SeriesDef(device, point, kind, unit, scale_f, offset_f, interval)


def parse_schema(raw: bytes, limits: SchemaLimits = DEFAULT_SCHEMA_LIMITS) -> StreamSchema:
    """Read a schema message within ``limits``; CodecError (only) naming what is wrong."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise CodecError(f"schema message must be bytes, got {type(raw).__name__}")
    data = bytes(raw)
    if len(data) > limits.max_bytes:
        raise _fail("$", f"{len(data)} bytes exceed the limit of {limits.max_bytes}")
    try:
        # Depth 3: the object, its series array, a series. Arrays counted before parsing.
        doc = loads_strict(data, max_bytes=limits.max_bytes, max_depth=3,
                           max_items=max(limits.max_series, len(COLUMNS) + 1),
                           max_str=4 * MAX_NAME, allow_float=True,
                           max_containers=limits.max_series + 3)
    except UnsafeJsonError as exc:
        raise _fail(exc.path, exc.problem) from None
    keys = {"v", "g", "e", "t0", "tick", "columns", "series"}
    if not isinstance(doc, dict) or set(doc) != keys:
        raise _fail("$", f"must be an object with keys {sorted(keys)}")
    if doc["v"] != SCHEMA_VERSION or type(doc["v"]) is not int:
        raise _fail("v", f"version {show(doc['v'])} is not {SCHEMA_VERSION}")
    problem = name_problem(doc["g"], point=False)
    if problem is not None:
        raise _fail("g", f"gateway {show(doc['g'])}: {problem}")
    epoch = _int_in(doc, "e", 0, INT64_MAX)
    tick = _int_in(doc, "tick", 1, MAX_INTERVAL_MS)
    t0 = _int_in(doc, "t0", 0, INT64_MAX)
    if t0 % tick or not epoch - tick < t0 <= epoch:
        raise _fail("t0", f"{t0} is not the last tick mark at or before the epoch {epoch}")
    if doc["columns"] != list(COLUMNS):
        raise _fail("columns", f"expected {list(COLUMNS)}")
    rows = doc["series"]
    if not isinstance(rows, list):
        raise _fail("series", "is not an array")
    series = _checked_series(rows, tick, limits)
    return StreamSchema(doc["g"], epoch, t0, tick, series, data, schema_hash(data))


def _checked_series(rows: list[Any], tick: int, limits: SchemaLimits) -> tuple[SeriesDef, ...]:
    """The series rows checked (9.2): count, each row's columns, the tick, no repeats."""
    _check_count(len(rows), limits)
    series = tuple(_series(row, i, tick) for i, row in enumerate(rows))
    _check_tick_and_repeats(series, tick)
    return series


def _check_count(n: int, limits: SchemaLimits) -> None:
    if n > limits.max_series:
        raise _fail("series", f"{n} series exceed the limit of {limits.max_series}")


def _check_tick_and_repeats(series: Sequence[SeriesDef], tick: int) -> None:
    """The tick is the intervals' greatest common divisor, and no series appears twice."""
    if series and math.gcd(*(s.interval_ms for s in series)) != tick:
        raise _fail("tick", f"{tick} is not the greatest common divisor of the intervals")
    seen: set[tuple[str, str]] = set()
    for i, s in enumerate(series):
        if (s.device, s.point) in seen:
            raise _fail(f"series[{i}]", f"{s.key!r} appears twice")
        seen.add((s.device, s.point))


class SchemaBook:
    """The schemas a consumer was sent, by (gateway, hash), in memory and bounded: beyond
    ``max_schemas`` or ``max_bytes`` of messages the least recently used are forgotten (a
    consumer that needs one again asks the gateway, or its database, for it)."""

    def __init__(self, max_schemas: int = 1024, max_bytes: int = 64 * 1024 * 1024,
                 limits: SchemaLimits = DEFAULT_SCHEMA_LIMITS) -> None:
        self.max_schemas = max_schemas
        self.max_bytes = max_bytes
        self.limits = limits
        self._book: dict[tuple[str, bytes], StreamSchema] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._book)

    def add(self, gateway: str, payload: bytes) -> StreamSchema:
        """Read a schema message sent on ``gateway``'s topic and keep it; CodecError if bad."""
        schema = parse_schema(payload, self.limits)
        if schema.gateway != gateway:
            raise CodecError(f"schema message: g {schema.gateway!r} on gateway {gateway!r}'s "
                             "topic")
        self.put(schema)
        return schema

    def put(self, schema: StreamSchema) -> None:
        """Keep a schema (already read and checked)."""
        key = (schema.gateway, schema.hash)
        old = self._book.pop(key, None)
        self._bytes -= len(old.raw) if old is not None else 0
        self._book[key] = schema
        self._bytes += len(schema.raw)
        while len(self._book) > 1 and (len(self._book) > self.max_schemas
                                       or self._bytes > self.max_bytes):
            first = next(iter(self._book))
            self._bytes -= len(self._book.pop(first).raw)

    def lookup(self, gateway: str, digest: bytes) -> StreamSchema | None:
        """The schema of ``gateway`` with this hash, or None when it is not known."""
        schema = self._book.pop((gateway, digest), None)
        if schema is not None:
            self._book[(gateway, digest)] = schema  # most recently used last
        return schema

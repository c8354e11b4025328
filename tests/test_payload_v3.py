"""Data batch version 3 and its schema message: exact round trips, batches that decode on their
own, and hostile input refused with CodecError (and only that) before the work it would cost."""

from __future__ import annotations

import contextlib
import json
import math
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.codecs.batch import (
    BatchLimits,
    MissingSchema,
    decode_batch,
    encode_batch_v2,
    encode_batch_v3,
)
from edge_agent.codecs.batch_v3_values import F32, INT, SCALED
from edge_agent.codecs.bits import BitReader, BitWriter
from edge_agent.codecs.schema import (
    HASH_BYTES,
    SchemaBook,
    SchemaLimits,
    SeriesDef,
    StreamSchema,
    build_schema,
    parse_schema,
)
from edge_agent.codecs.wire import varint
from edge_agent.protocol.errors import CodecError
from edge_agent.protocol.readings import Quality, Reading

SEED = 20261206
EPOCH = 1_765_000_000_123
GW = "gw-1"

SERIES = [
    SeriesDef("meter-1", "voltage", "float32", "V", 1.0, 0.0, 5000),
    SeriesDef("meter-1", "energy", "uint32", "Wh", 1.0, 0.0, 5000),
    SeriesDef("meter-1", "pf", "int16", "", 0.01, 0.0, 5000),
    SeriesDef("lamp_2", "on", "bool", "", 1.0, 0.0, 1000),
    SeriesDef("lamp_2", "temp", "uint16", "°C", 0.1, -40.0, 10000),
    SeriesDef("lamp_2", "total", "float64", "m³", 1.0, 0.0, 2000),
    SeriesDef("lamp_2", "model", "string", "", 1.0, 0.0, 60000),
]
SCHEMA = build_schema(GW, EPOCH, SERIES)


def ordered(rs: list[Reading]) -> list[Reading]:
    """Readings in the order a decoded batch gives them: by device, point, time."""
    return sorted(rs, key=lambda r: (r.device, r.point, r.ts_ms))


def lookup(gateway: str, digest: bytes) -> StreamSchema | None:
    """The test schema, for its gateway and hash only."""
    return SCHEMA if (gateway, digest) == (GW, SCHEMA.hash) else None


def dec(blob: bytes, limits: BatchLimits | None = None):  # type: ignore[no-untyped-def]
    """Decode a v3 batch of the test gateway."""
    return decode_batch(blob, limits or BatchLimits(), gateway=GW, schemas=lookup)


def exact(v: object) -> object:
    """A value compared bit for bit (floats by pattern, so -0.0 and NaN payloads count)."""
    return ("f", struct.pack(">d", v)) if isinstance(v, float) else (type(v).__name__, v)


def loose(r: Reading) -> tuple[object, ...]:
    """Ints sent in a float series come back as equal floats (as in version 2)."""
    v = r.value
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) <= 2**53:
        v = float(v)
    return (r.device, r.point, r.ts_ms, exact(v), r.quality, r.exception_code)


values = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=True),
    st.floats(width=32), st.integers(-30000, 30000).map(lambda k: k * 0.01),
    st.integers(0, 5000).map(lambda k: k * 0.1 - 40.0), st.text(max_size=8), st.none())


@st.composite
def readings(draw: st.DrawFn) -> list[Reading]:
    out = []
    names = [(s.device, s.point) for s in SERIES] + [("meter-1", "not-in-schema")]
    base = SCHEMA.t0_ms + draw(st.integers(0, 10**6)) * 1000
    for _ in range(draw(st.integers(0, 40))):
        device, point = draw(st.sampled_from(names))
        ts = draw(st.one_of(st.integers(0, 20).map(lambda k: base + k * 1000),
                            st.integers(0, 2**62)))
        q = draw(st.sampled_from(list(Quality)))
        if q is Quality.GOOD:
            v = draw(values)
            if v is None:
                continue
            out.append(Reading(device, point, ts, v))
        else:
            out.append(Reading(device, point, ts, None, q, draw(st.none() | st.integers(0, 255))))
    return out


@settings(max_examples=400, deadline=None)
@given(readings(), st.integers(0, 2**40), st.integers(0, 2**63 - 1))
def test_round_trip_keeps_every_reading_bit_for_bit(rs: list[Reading], de: int, seq: int) -> None:
    epoch = EPOCH + de
    batch = dec(encode_batch_v3(SCHEMA, epoch, seq, rs))
    assert (batch.gateway, batch.epoch, batch.seq, batch.version) == (GW, epoch, seq, 3)
    assert sorted(map(loose, batch.readings), key=repr) == sorted(map(loose, rs), key=repr)


def test_every_batch_decodes_on_its_own_in_any_order() -> None:
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    t = SCHEMA.t0_ms + 10_000
    blobs = []
    for seq in range(20):
        rs = [Reading("meter-1", "voltage", t + seq * 5000, rng.choice([229.5, 230.25])),
              Reading("lamp_2", "on", t + seq * 5000, rng.random() < 0.5)]
        blobs.append((seq, rs, encode_batch_v3(SCHEMA, EPOCH, seq, rs)))
    rng.shuffle(blobs)
    for seq, rs, blob in blobs[:7]:   # the others "dropped by the spool": nothing depends on them
        got = dec(blob)
        assert got.seq == seq and got.readings == ordered(rs)


def test_grid_readings_cost_a_few_bits_and_values_their_kind() -> None:
    t = SCHEMA.t0_ms + 3_600_000
    # one bool series polled every second for 100 s: ~2 bits a reading on the grid
    rs = [Reading("lamp_2", "on", t + i * 1000, i % 7 == 0) for i in range(100)]
    blob = encode_batch_v3(SCHEMA, EPOCH, 1, rs)
    assert len(blob) <= 1 + HASH_BYTES + 6 + 28, len(blob)  # header, then 2 bits a reading
    assert dec(blob).readings == rs
    # scaled registers travel as their raw integer, float32 registers as 32-bit patterns
    pf = [Reading("meter-1", "pf", t, 0.97), Reading("lamp_2", "temp", t, 22.5 - 0.0)]
    assert dec(encode_batch_v3(SCHEMA, EPOCH, 2, pf)).readings == ordered(pf)
    v = [Reading("meter-1", "voltage", t + i * 5000, struct.unpack(">f", struct.pack(
        ">f", 230.0 + i / 7))[0]) for i in range(10)]
    assert dec(encode_batch_v3(SCHEMA, EPOCH, 3, v)).readings == v


def test_a_batch_is_far_smaller_than_version_2() -> None:
    t = SCHEMA.t0_ms + 7_200_000
    rs = [Reading("meter-1", "energy", t, 123456), Reading("meter-1", "pf", t, 0.98),
          Reading("lamp_2", "on", t, True), Reading("meter-1", "voltage", t, 231.5)]
    v3, v2 = encode_batch_v3(SCHEMA, EPOCH, 5, rs), encode_batch_v2(GW, EPOCH, 5, rs)
    print(f"4 readings: v3 {len(v3)} bytes, v2 {len(v2)} bytes")
    assert len(v3) <= 6 * len(rs) and 5 * len(v3) < len(v2)


def test_an_unknown_schema_is_a_missing_schema_and_another_gateways_is_refused() -> None:
    blob = encode_batch_v3(SCHEMA, EPOCH, 9, [Reading("lamp_2", "on", SCHEMA.t0_ms, True)])
    with pytest.raises(MissingSchema) as info:
        decode_batch(blob, gateway=GW)
    assert info.value.schema_hash == SCHEMA.hash and info.value.seq == 9
    with pytest.raises(MissingSchema):
        decode_batch(blob, gateway="gw-2", schemas=lookup)   # gw-2 has no such schema
    with pytest.raises(CodecError, match="is gateway 'gw-1'"):
        decode_batch(blob, gateway="gw-2", schemas=lambda g, d: SCHEMA)
    with pytest.raises(CodecError, match="names no gateway"):
        decode_batch(blob)


def _head(extras: int = 0, base: int = 0) -> bytes:
    return bytes([3]) + SCHEMA.hash + varint(0) + varint(1) + varint(base) + varint(extras)


def _bits(*fields: tuple[str, int]) -> bytes:
    bw = BitWriter()
    for kind, v in fields:
        bw.eg(v) if kind == "eg" else bw.snum(v) if kind == "sn" else bw.bits(v, int(kind))
    return bw.finish()


@pytest.mark.parametrize(("blob", "problem"), [
    (_head() + _bits(("eg", 8)), "present series count 8 exceeds the limit 7"),
    (_head() + _bits(("eg", 1), ("eg", 7)), "series index gap 7 exceeds the limit 6"),
    (_head() + _bits(("eg", 1), ("eg", 3), ("eg", 2**40)), "readings of series 3"),
    (_head() + _bits(("eg", 1), ("eg", 3), ("eg", 0), ("4", 7)), "unknown value kind 7"),
    (_head() + _bits(("eg", 1), ("eg", 3), ("eg", 0), ("1", 1), ("eg", 0), ("1", 1))
     + b"\x00", "1 bytes after the last series"),
    (_head() + _bits(("eg", 0), ("1", 1)), "padding bits"),
    (_head() + _bits(("eg", 1), ("eg", 0), ("eg", 0), ("1", 1), ("eg", 0),
                     ("32", 0x7FC00000)), "is a NaN"),
    (_head() + _bits(("eg", 1), ("eg", 1), ("eg", 0), ("1", 1), ("eg", 0), ("eg", 65)),
     "length 65 exceeds 64 bits"),
    (_head() + b"\x00" * 9 + b"\x01", "no terminating bit"),
    (_head(extras=1) + b"\x00\x05a/b", "series name"),
    (_head(extras=1) + b"\x00\x03\xff/b", "not UTF-8"),
    (_head(extras=1) + b"\x01\x00\x07", "unknown quality code 7"),
    (_head(extras=1) + b"\x01\x00\x00\x00\x09", "unknown value tag 9"),
    (_head(extras=1) + b"\x01\x00\x00\x00\x04\x05", "fits int64"),
    (_head(extras=1) + b"\x01\x00\x00\x00\x06" + varint(300) + b"x" * 300,
     "text of 300 characters exceeds the limit of 256"),
    (_head(extras=1) + b"\x01\x00\x00\x00\x06\x02\xed\xa0", "text length 2|not UTF-8"),
    (_head(extras=10**6), "readings"),
    (bytes([3]) + SCHEMA.hash[:3], "shorter than the schema hash"),
    (_head(base=2**62) + _bits(("eg", 0)), "beyond int64 milliseconds"),
])
def test_hostile_batches_are_refused_saying_what(blob: bytes, problem: str) -> None:
    with pytest.raises(CodecError, match=problem):
        dec(blob)


def test_declared_readings_are_checked_before_any_is_built() -> None:
    # 100 bools on the grid in the bit stream: refused under lower limits before decoding
    t = SCHEMA.t0_ms
    blob = encode_batch_v3(SCHEMA, EPOCH, 0, [Reading("lamp_2", "on", t + i * 1000, i % 3 == 0)
                                              for i in range(100)])
    assert blob[1 + HASH_BYTES] & 1 == 0 and len(dec(blob).readings) == 100
    with pytest.raises(CodecError, match="100 or more readings exceed the limit of 99"):
        dec(blob, BatchLimits(max_readings=99))
    with pytest.raises(CodecError, match=f"series 3 99 exceeds the limit {2 * len(blob)}"):
        dec(blob, BatchLimits(max_readings_per_byte=2))


def test_any_cut_or_flip_ends_in_a_batch_or_a_codec_error() -> None:
    rng = random.Random(SEED)
    t = SCHEMA.t0_ms + 5000
    rs = [Reading("meter-1", "voltage", t, 230.5), Reading("lamp_2", "model", t, "X-1"),
          Reading("meter-1", "energy", t, None, Quality.COMM_ERROR),
          Reading("lamp_2", "on", t, True), Reading("lamp_2", "on", t + 1000, False)]
    blob = encode_batch_v3(SCHEMA, EPOCH, 3, rs)
    for cut in range(len(blob)):
        with pytest.raises(CodecError):
            dec(blob[:cut])
    for _ in range(3000):
        b = bytearray(blob)
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        with contextlib.suppress(CodecError):
            dec(bytes(b))


def test_kinds_default_from_the_register_type() -> None:
    from edge_agent.codecs.batch_v3_values import default_kind
    assert default_kind("float32", 1.0, 0.0) == F32
    assert default_kind("uint16", 0.1, 0.0) == SCALED
    assert default_kind("int32", 1.0, 0.0) == INT


# ----------------------------------------------------------------------------- schema message


def test_schema_round_trip_and_hash() -> None:
    again = parse_schema(SCHEMA.raw)
    assert again == SCHEMA and len(SCHEMA.hash) == HASH_BYTES
    assert SCHEMA.tick_ms == 1000 and SCHEMA.t0_ms == EPOCH // 1000 * 1000
    doc = json.loads(SCHEMA.raw)
    assert doc["columns"][:2] == ["device", "point"] and doc["series"][4][3] == "°C"
    other = build_schema(GW, EPOCH + 1, SERIES)
    assert other.hash != SCHEMA.hash


def _doc(**change: object) -> bytes:
    doc = json.loads(SCHEMA.raw)
    doc.update(change)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("raw", "problem"), [
    (b"\xff", "not UTF-8"),
    (b"[]", "must be an object"),
    (_doc(v=2), "version 2"),
    (_doc(g="a/b"), "gateway"),
    (_doc(tick=3000, t0=EPOCH // 3000 * 3000), "interval_ms 5000 is not a multiple of tick 3000"),
    (_doc(tick=500, t0=EPOCH // 500 * 500), "greatest common divisor"),
    (_doc(t0=0), "last tick mark"),
    (_doc(columns=["device"]), "expected"),
    (_doc(series=[["d", "p", "float16", "", 1, 0, 1000]]), "type 'float16'"),
    (_doc(series=[["d", "p", "bool", "", 0, 0, 1000]]), "scale is 0"),
    (_doc(series=[["d", "p\u0007", "bool", "", 1, 0, 1000]]), "point"),
    (_doc(series=[["d", "p", "bool", "x" * 33, 1, 0, 1000]]), "unit"),
    (_doc(series=[["d", "p", "bool", "", 1, 0, 1000]] * 2), "appears twice"),
    (_doc(series=[["d", "p", "bool", "", 1, 0, 10**13]]), "interval_ms"),
    (b'{"v": 1, "g": "\\ud800"}', "surrogate"),
    (b'{"v": 1, "v": 1}', "repeats a key"),
])
def test_hostile_schemas_are_refused_saying_what(raw: bytes, problem: str) -> None:
    with pytest.raises(CodecError, match=problem):
        parse_schema(raw)


def test_schema_limits_bound_size_and_series() -> None:
    with pytest.raises(CodecError, match="exceed the limit of 100"):
        parse_schema(SCHEMA.raw, SchemaLimits(max_bytes=100))
    with pytest.raises(CodecError, match="10 arrays and objects, the limit is 6"):
        parse_schema(SCHEMA.raw, SchemaLimits(max_series=3))   # counted before parsing


def test_schema_book_checks_the_topic_gateway_and_stays_bounded() -> None:
    book = SchemaBook(max_schemas=3)
    with pytest.raises(CodecError, match="on gateway 'gw-9'"):
        book.add("gw-9", SCHEMA.raw)
    made = [build_schema(GW, EPOCH + i, SERIES) for i in range(5)]
    for s in made:
        book.add(GW, s.raw)
    assert len(book) == 3 and book.lookup(GW, made[0].hash) is None
    assert book.lookup(GW, made[4].hash) == made[4]


@given(st.lists(st.tuples(st.sampled_from([0, 1, 7, 2**63]), st.integers(-(2**63), 2**63 - 1),
                          st.integers(0, 64)), max_size=30))
def test_bit_fields_round_trip(fields: list[tuple[int, int, int]]) -> None:
    bw = BitWriter()
    for eg, sn, width in fields:
        bw.eg(eg)
        bw.snum(sn)
        bw.bits((1 << width) - 1, width)
    br = BitReader(bw.finish())
    for eg, sn, width in fields:
        assert br.eg("eg") == eg and br.snum("sn") == sn
        assert br.bits(width, "bits") == (1 << width) - 1
    br.finish("fields")


def test_float_kinds_keep_nan_payloads_and_negative_zero() -> None:
    t = SCHEMA.t0_ms
    nan = struct.unpack(">d", bytes.fromhex("7ff8000000000abc"))[0]
    rs = [Reading("lamp_2", "total", t, nan), Reading("lamp_2", "total", t + 2000, -0.0),
          Reading("lamp_2", "total", t + 4000, math.inf)]
    got = dec(encode_batch_v3(SCHEMA, EPOCH, 0, rs)).readings
    assert [exact(r.value) for r in got] == [exact(r.value) for r in rs]


def test_long_series_travel_in_the_codec_when_it_is_shorter() -> None:
    rng = random.Random(SEED)
    t = SCHEMA.t0_ms + 60_000
    f32 = [struct.unpack(">f", struct.pack(">f", 230 + rng.gauss(0, 0.5)))[0] for _ in range(300)]
    rs = [Reading("meter-1", "voltage", t + i * 5000, v) for i, v in enumerate(f32)]
    rs += [Reading("lamp_2", "on", t + i * 1000, i % 50 < 25) for i in range(300)]
    rs += [Reading("meter-1", "pf", t + i * 5000, round(0.9 + i % 7 / 100, 2)) for i in range(300)]
    blob = encode_batch_v3(SCHEMA, EPOCH, 1, rs)
    assert blob[1 + HASH_BYTES] & 1 == 1   # the codec body was the shorter
    assert dec(blob).readings == ordered(rs)
    short = encode_batch_v3(SCHEMA, EPOCH, 2, rs[:3])
    assert short[1 + HASH_BYTES] & 1 == 0   # a short batch keeps the bit stream


def _codec_body(series: dict[str, tuple[list[int], list[object]]]) -> bytes:
    from edge_agent import codecs
    head = bytes([3]) + SCHEMA.hash + varint(1) + varint(1) + varint(0) + varint(0)
    return head + codecs.encode_batch(series)  # type: ignore[arg-type]


@pytest.mark.parametrize(("series", "problem"), [
    ({"01": ([0], [True])}, "'01' is not a series index below 7"),
    ({"7": ([0], [True])}, "'7' is not a series index"),
    ({"x": ([0], [True])}, "'x' is not"),
    ({"3": ([-1], [True])}, "slot -1 is not a grid slot"),
])
def test_hostile_codec_bodies_are_refused(series: dict[str, tuple[list[int], list[object]]],
                                          problem: str) -> None:
    with pytest.raises(CodecError, match=problem):
        dec(_codec_body(series))


def test_a_codec_body_is_checked_against_the_limits_before_decoding() -> None:
    blob = _codec_body({"3": (list(range(5000)), [True] * 5000)})   # 149 bytes
    with pytest.raises(CodecError, match="5000 or more readings in 149 bytes exceed the limit "
                                         "of 32 per byte"):
        dec(blob)
    assert len(dec(blob, BatchLimits(max_readings_per_byte=64)).readings) == 5000
    with pytest.raises(CodecError, match="data batch v3: 5000 or more readings"):
        dec(blob, BatchLimits(max_readings=4999, max_readings_per_byte=64))

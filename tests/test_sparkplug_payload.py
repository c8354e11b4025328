"""The Sparkplug B payload codec against an independent one: pysparkplug's generated protobuf.

pysparkplug (installed with --no-deps: its codec works beside paho 2) ships ``sparkplug_b_pb2``
generated from the specification's schema, read here by Google's protobuf runtime: every payload
we encode must parse there with the same fields, and payloads it builds must parse here.
"""

from __future__ import annotations

import math

import pysparkplug as psp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.drivers.model import DataType as PointType
from edge_agent.drivers.model import Point, Table
from edge_agent.protocol.errors import SparkplugError
from edge_agent.protocol.readings import Quality, Reading
from edge_agent.runtime.sparkplug.decode import decode_payload
from edge_agent.runtime.sparkplug.metrics import metric_type, reading_metric
from edge_agent.runtime.sparkplug.payload import (
    DataType,
    Limits,
    Metric,
    Payload,
    Property,
    encode_payload,
)
from tests.support import sparkplug_pb as spb

# signed and unsigned integer types -> their width in bits
INTS = {DataType.INT8: 8, DataType.INT16: 16, DataType.INT32: 32, DataType.INT64: 64}
UINTS = {DataType.UINT8: 8, DataType.UINT16: 16, DataType.UINT32: 32, DataType.UINT64: 64}


def _values(dt: DataType) -> st.SearchStrategy[int | float | bool | str]:
    if dt in INTS:
        bits = INTS[dt]
        return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    if dt in UINTS:
        return st.integers(0, (1 << UINTS[dt]) - 1)
    if dt is DataType.FLOAT:
        return st.floats(width=32, allow_nan=False)
    if dt is DataType.DOUBLE:
        return st.floats(allow_nan=False)
    if dt is DataType.BOOLEAN:
        return st.booleans()
    return st.text(max_size=40)


_TYPES = [*INTS, *UINTS, DataType.FLOAT, DataType.DOUBLE, DataType.BOOLEAN, DataType.STRING]


@st.composite
def metrics(draw: st.DrawFn) -> Metric:
    dt = draw(st.sampled_from(_TYPES))
    null = draw(st.booleans())
    return Metric(name=draw(st.text(min_size=1, max_size=30)),
                  alias=draw(st.integers(0, 2**64 - 1)), timestamp=draw(st.integers(0, 2**63)),
                  datatype=dt, value=None if null else draw(_values(dt)), is_null=null,
                  properties=(Property("engUnit", DataType.STRING, draw(st.text(max_size=8))),))


@settings(max_examples=300, deadline=None)
@given(st.lists(metrics(), max_size=8), st.integers(0, 2**64 - 1), st.integers(0, 255))
def test_our_payloads_parse_in_the_generated_schema_with_the_same_fields(
        ms: list[Metric], ts: int, seq: int) -> None:
    raw = encode_payload(Payload(timestamp=ts, seq=seq, metrics=tuple(ms)))
    theirs = spb.Payload.FromString(raw)
    assert (theirs.timestamp, theirs.seq, len(theirs.metrics)) == (ts, seq, len(ms))
    for ours, m in zip(ms, theirs.metrics, strict=True):
        assert (m.name, m.alias, m.timestamp, m.datatype) == (
            ours.name, ours.alias, ours.timestamp, int(ours.datatype))
        assert m.is_null == (ours.value is None)
        assert list(m.properties.keys) == ["engUnit"]
        assert m.properties.values[0].string_value == ours.properties[0].value
        if ours.value is not None:
            # pysparkplug's own reading of the value field for the data type (two's complement
            # for the signed types, spec 6.4.17)
            got = psp.DataType(int(ours.datatype)).decode(getattr(m, m.WhichOneof("value")))
            if ours.datatype is DataType.FLOAT:
                assert isinstance(got, float) and isinstance(ours.value, float)
                assert math.isclose(got, ours.value, rel_tol=1e-6) or got == ours.value
            else:
                assert got == ours.value
    # and back through our own decoder, unchanged
    again = decode_payload(raw, Limits(max_bytes=1 << 20, max_string_bytes=1 << 10))
    assert again.metrics == tuple(
        Metric(name=m.name, alias=m.alias, timestamp=m.timestamp, datatype=m.datatype,
               value=m.value, is_null=m.value is None, properties=m.properties,
               value_field=None if m.value is None else again.metrics[i].value_field)
        for i, m in enumerate(ms))


def test_pysparkplug_payloads_parse_here() -> None:
    ncmd = psp.NCmd(timestamp=1234, metrics=(
        psp.Metric(timestamp=None, name="Node Control/Rebirth", datatype=psp.DataType.BOOLEAN,
                   value=True),
        psp.Metric(timestamp=5, name="x", datatype=psp.DataType.INT16, value=-2)))
    p = decode_payload(ncmd.encode(include_dtypes=True))
    assert p.timestamp == 1234 and p.seq is None
    assert [(m.name, m.datatype, m.value) for m in p.metrics] == [
        ("Node Control/Rebirth", DataType.BOOLEAN, True), ("x", DataType.INT16, -2)]


@pytest.mark.parametrize(("point", "expected"), [
    (Point("a", Table.INPUT_REGISTER, 0, PointType.INT16, 1), DataType.INT16),
    (Point("a", Table.INPUT_REGISTER, 0, PointType.UINT16, 1), DataType.UINT16),
    (Point("a", Table.INPUT_REGISTER, 0, PointType.INT32, 2), DataType.INT32),
    (Point("a", Table.INPUT_REGISTER, 0, PointType.UINT32, 2), DataType.UINT32),
    (Point("a", Table.INPUT_REGISTER, 0, PointType.INT64, 4), DataType.INT64),
    (Point("a", Table.INPUT_REGISTER, 0, PointType.UINT64, 4), DataType.UINT64),
    (Point("a", Table.INPUT_REGISTER, 0, PointType.FLOAT32, 2), DataType.FLOAT),
    (Point("a", Table.INPUT_REGISTER, 0, PointType.FLOAT64, 4), DataType.DOUBLE),
    (Point("a", Table.INPUT_REGISTER, 0, PointType.STRING, 4), DataType.STRING),
    (Point("a", Table.HOLDING_REGISTER, 0, PointType.BOOL, 1), DataType.BOOLEAN),
    (Point("a", Table.COIL, 0, PointType.BOOL, 1), DataType.BOOLEAN),
    (Point("a", Table.HOLDING_REGISTER, 0, PointType.UINT16, 1, bit=2, bits=3), DataType.UINT16),
    (Point("a", Table.HOLDING_REGISTER, 0, PointType.BOOL, 1, bit=2), DataType.BOOLEAN),
    (Point("a", Table.INPUT_REGISTER, 0, PointType.UINT16, 1, scale=0.1), DataType.DOUBLE),
    (Point("a", Table.INPUT_REGISTER, 0, PointType.INT32, 2, offset=-40), DataType.DOUBLE),
])
def test_point_types_map_to_sparkplug_types(point: Point, expected: DataType) -> None:
    assert metric_type(point) is expected


def test_a_bad_reading_is_a_null_with_bad_quality_and_the_next_good_one_says_good() -> None:
    bad = reading_metric(Reading("d", "p", 5, None, Quality.COMM_ERROR), DataType.FLOAT, 3)
    m = spb.Payload.Metric.FromString(_metric_bytes(bad))
    assert m.is_null and list(m.properties.keys) == ["Quality"]
    # [tck-id-payloads-propertyset-quality-value-type]
    # [tck-id-payloads-propertyset-quality-value-value]
    assert (m.properties.values[0].type, m.properties.values[0].int_value) == (3, 0)
    good = reading_metric(Reading("d", "p", 6, 1.5), DataType.FLOAT, 3, was_bad=True)
    m = spb.Payload.Metric.FromString(_metric_bytes(good))
    assert m.float_value == 1.5 and m.properties.values[0].int_value == 192


def _metric_bytes(m: Metric) -> bytes:
    raw = encode_payload(Payload(timestamp=1, metrics=(m,)))
    return bytes(spb.Payload.FromString(raw).metrics[0].SerializeToString())


@pytest.mark.parametrize(("raw", "why"), [
    (b"\x08", "runs past the end"),
    (b"\x08" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
    (b"\x12\x05ab", "past the end"),
    (b"\x0b", "wire type 3"),
    (b"\x00\x01", "field number 0"),
    (b"\x12\x03\x0a\x01\xff", "not UTF-8"),
    (b"\x12\x02\x50\x01" * 300, "more than 256 metrics"),
    (b"\x0a\x01\x01", "wire type 2, expected 0"),
])
def test_malformed_payloads_are_refused_saying_why(raw: bytes, why: str) -> None:
    with pytest.raises(SparkplugError, match=why):
        decode_payload(raw)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_only_our_error(raw: bytes) -> None:
    try:
        p = decode_payload(raw)
    except SparkplugError as exc:
        assert str(exc).startswith("payload")
        return
    assert len(p.metrics) <= Limits().max_metrics

"""Reading a Sparkplug B payload (Sparkplug 3.0, 6.4) from untrusted bytes: a total intake.

Every decode runs under explicit ``Limits`` (bytes, metrics, string lengths, properties) and
raises only ``SparkplugError``, naming what is wrong and where (the metric's index, the field
number, the byte offset). Varints longer than 10 bytes or past 64 bits, fields running past the
end, wire types the schema does not use and text that is not strict UTF-8 are refused; fields
the gateway does not read (uuid, body, metadata, data sets, templates, extensions, nested
property sets) are skipped as protobuf readers skip unknown fields. The encoder and the data
types are in ``payload``.
"""

from __future__ import annotations

import struct

from edge_agent.protocol.errors import SparkplugError
from edge_agent.runtime.sparkplug.payload import (
    I32,
    I64,
    LEN,
    M_BYTES,
    M_INT,
    P_INT,
    P_STRING,
    VARINT,
    DataType,
    Limits,
    Metric,
    Payload,
    Property,
    Value,
    typed,
)

Field = tuple[int, int, int | bytes]  # (field number, wire type, varint/fixed bits or bytes)


def _fields(data: bytes, where: str) -> list[Field]:
    """Split one message into its fields; SparkplugError on anything malformed."""
    out: list[Field] = []
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _read_varint(data, pos, where)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise SparkplugError(f"{where}: field number 0 at byte {pos}")
        if wire == VARINT:
            value, pos = _read_varint(data, pos, where)
            out.append((field, wire, value))
        elif wire in (I64, I32):
            size = 8 if wire == I64 else 4
            if pos + size > end:
                raise SparkplugError(f"{where}: field {field} runs past the end")
            out.append((field, wire, int.from_bytes(data[pos:pos + size], "little")))
            pos += size
        elif wire == LEN:
            size, pos = _read_varint(data, pos, where)
            if pos + size > end:
                raise SparkplugError(f"{where}: field {field} claims {size} bytes past the end")
            out.append((field, wire, data[pos:pos + size]))
            pos += size
        else:  # groups (3, 4) are not in the schema; 6 and 7 do not exist
            raise SparkplugError(f"{where}: field {field} has wire type {wire}, not 0, 1, 2 or 5")
    return out


def _read_varint(data: bytes, pos: int, where: str) -> tuple[int, int]:
    value = shift = 0
    for i in range(10):  # a 64-bit varint is at most 10 bytes
        if pos + i >= len(data):
            raise SparkplugError(f"{where}: a varint runs past the end at byte {pos}")
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value >= 1 << 64:
                raise SparkplugError(f"{where}: a varint at byte {pos} is larger than 64 bits")
            return value, pos + i + 1
        shift += 7
    raise SparkplugError(f"{where}: a varint at byte {pos} is longer than 10 bytes")


def _expect(wire: int, want: int, field: int, where: str) -> None:
    if wire != want:
        raise SparkplugError(f"{where}: field {field} has wire type {wire}, expected {want}")


def _text(raw: int | bytes, field: int, where: str, limits: Limits) -> str:
    if not isinstance(raw, bytes):
        raise SparkplugError(f"{where}: field {field} is not a string")
    if len(raw) > limits.max_string_bytes:
        raise SparkplugError(f"{where}: field {field} is {len(raw)} bytes, more than "
                             f"{limits.max_string_bytes}")
    try:
        return raw.decode("utf-8")  # strict: no lone surrogates, no overlong forms
    except UnicodeDecodeError as exc:
        raise SparkplugError(f"{where}: field {field} is not UTF-8 ({exc.reason} at byte "
                             f"{exc.start})") from None


def _raw_value(field: int, wire: int, raw: int | bytes, base: int, where: str,
               limits: Limits) -> Value:
    """A value field's content by its kind (fields numbered from ``base``: int, long, ...)."""
    kind = field - base
    want = (VARINT, VARINT, I32, I64, VARINT, LEN, LEN)[kind]
    _expect(wire, want, field, where)
    if kind in (0, 1):
        assert isinstance(raw, int)
        return raw
    if kind == 2:
        assert isinstance(raw, int)
        return float(struct.unpack("<f", raw.to_bytes(4, "little"))[0])
    if kind == 3:
        assert isinstance(raw, int)
        return float(struct.unpack("<d", raw.to_bytes(8, "little"))[0])
    if kind == 4:
        return raw != 0
    if kind == 5:
        return _text(raw, field, where, limits)
    if not isinstance(raw, bytes) or len(raw) > limits.max_string_bytes:
        raise SparkplugError(f"{where}: field {field} is not bytes within the limit")
    return raw


def _decode_properties(data: bytes, where: str, limits: Limits) -> tuple[Property, ...]:
    keys: list[str] = []
    values: list[tuple[DataType, Value | None]] = []
    for field, wire, raw in _fields(data, where):
        if field == 1:
            _expect(wire, LEN, field, where)
            keys.append(_text(raw, field, where, limits))
        elif field == 2:
            _expect(wire, LEN, field, where)
            assert isinstance(raw, bytes)
            values.append(_decode_property_value(raw, f"{where} value {len(values)}", limits))
        if len(keys) > limits.max_properties or len(values) > limits.max_properties:
            raise SparkplugError(f"{where}: more than {limits.max_properties} properties")
    if len(keys) != len(values):
        # [tck-id-payloads-propertyset-keys-array-size]
        raise SparkplugError(f"{where}: {len(keys)} keys but {len(values)} values")
    return tuple(Property(k, dt, v) for k, (dt, v) in zip(keys, values, strict=True))


def _decode_property_value(data: bytes, where: str,
                           limits: Limits) -> tuple[DataType, Value | None]:
    datatype, value = DataType.UNKNOWN, None
    for field, wire, raw in _fields(data, where):
        if field == 1:
            _expect(wire, VARINT, field, where)
            assert isinstance(raw, int)
            datatype = _datatype(raw)
        elif P_INT <= field <= P_STRING:
            value = _raw_value(field, wire, raw, P_INT, where, limits)
        # 9-11: nested property sets and extensions are skipped, like unknown fields
    return datatype, typed(datatype, value)


def _datatype(raw: int) -> DataType:
    """A known data type, or UNKNOWN (data sets, templates, arrays: nothing we read or write)."""
    try:
        return DataType(raw)
    except ValueError:
        return DataType.UNKNOWN


def decode_metric(data: bytes, where: str, limits: Limits) -> Metric:
    """One Metric message, under ``limits``; SparkplugError saying what is wrong and where."""
    name: str | None = None
    ints: dict[int, int] = {}  # alias, timestamp, datatype, is_historical, is_null by field
    properties: tuple[Property, ...] = ()
    value: Value | None = None
    value_field: int | None = None
    for field, wire, raw in _fields(data, where):
        if field == 1:
            _expect(wire, LEN, field, where)
            name = _text(raw, field, where, limits)
        elif field in (2, 3, 4, 5, 7):
            _expect(wire, VARINT, field, where)
            assert isinstance(raw, int)
            ints[field] = raw
        elif field == 9:
            _expect(wire, LEN, field, where)
            assert isinstance(raw, bytes)
            properties = _decode_properties(raw, f"{where} properties", limits)
        elif M_INT <= field <= M_BYTES:
            value, value_field = _raw_value(field, wire, raw, M_INT, where, limits), field
        # 6 (is_transient), 8 (metadata), 17-19 (data set, template, extension): skipped
    datatype = _datatype(ints.get(4, 0))
    return Metric(name=name, alias=ints.get(2), timestamp=ints.get(3), datatype=datatype,
                  value=typed(datatype, value), is_null=bool(ints.get(7)),
                  is_historical=bool(ints.get(5)), properties=properties,
                  value_field=value_field)


def decode_payload(data: bytes, limits: Limits | None = None, where: str = "payload") -> Payload:
    """A Sparkplug B payload read under ``limits``; SparkplugError for anything malformed."""
    lim = limits or Limits()
    if len(data) > lim.max_bytes:
        raise SparkplugError(f"{where}: {len(data)} bytes, more than {lim.max_bytes}")
    timestamp: int | None = None
    seq: int | None = None
    metrics: list[Metric] = []
    for field, wire, raw in _fields(data, where):
        if field in (1, 3):
            _expect(wire, VARINT, field, where)
            assert isinstance(raw, int)
            if field == 1:
                timestamp = raw
            else:
                seq = raw
        elif field == 2:
            _expect(wire, LEN, field, where)
            if len(metrics) >= lim.max_metrics:
                raise SparkplugError(f"{where}: more than {lim.max_metrics} metrics")
            assert isinstance(raw, bytes)
            metrics.append(decode_metric(raw, f"{where} metric {len(metrics)}", lim))
    return Payload(timestamp=timestamp, metrics=tuple(metrics), seq=seq)

"""The formats the wire benchmark compares, each encoding the same batch of readings (pure).

- **JSON telemetry** in the style of the most-used Python gateway (ThingsBoard IoT Gateway):
  topic ``v1/gateway/telemetry``, payload ``{"device": [{"ts": ms, "values": {"point": value,
  ...}}, ...], ...}`` with one entry per device and timestamp, compact separators (its own
  serialiser adds spaces; compact favours JSON), QoS 1, MQTT 3.1.1. Bad readings are left out
  (that gateway sends none), which favours JSON too.
- **Sparkplug B NDATA with aliases**: the protobuf bytes of ``sparkplug_b.proto`` (Eclipse Tahu,
  ``org.eclipse.tahu.protobuf.Payload``), written by hand here from its field numbers:
  Payload{timestamp = 1 (uint64), metrics = 2 (repeated Metric), seq = 3 (uint64)}, Metric{alias
  = 2 (uint64), timestamp = 3 (uint64), is_null = 7 (bool), int_value = 10 (uint32), long_value
  = 11 (uint64), float_value = 12 (float), double_value = 13 (double), boolean_value = 14,
  string_value = 15}. Every choice favours Sparkplug: all of a batch's readings in one NDATA
  (a node's devices would each need a DDATA), no metric name (aliases from the birth), no
  datatype (not required in DATA messages), a metric timestamp only where it differs from the
  payload's, float32 registers and scaled 16/32-bit registers as Float (4 bytes, as gateways
  declare them, though a scaled value is not a float32), float64 as Double, ints of 32 bits as
  int_value, bad quality as is_null only (no quality property). QoS 0 as the spec requires.
- **MQTT framing** (``mqtt_bytes``): fixed header (1 + remaining-length varint), topic (2 +
  length), packet id for QoS 1 (2), properties length for MQTT 5 (1). Our uplink speaks MQTT 5.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

from edge_agent.codecs.schema import StreamSchema
from edge_agent.protocol.readings import Quality, Reading

_F = struct.Struct("<f")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def mqtt_bytes(topic: str, payload_len: int, *, qos: int, v5: bool) -> int:
    """Bytes of a PUBLISH packet carrying ``payload_len`` bytes on ``topic``."""
    rest = 2 + len(topic.encode()) + (2 if qos else 0) + (1 if v5 else 0) + payload_len
    return 1 + len(_varint(rest)) + rest


def json_telemetry(readings: Sequence[Reading]) -> bytes:
    """The batch as the common Python gateway's telemetry message."""
    doc: dict[str, dict[int, dict[str, object]]] = {}
    for r in readings:
        if r.quality is Quality.GOOD and r.value is not None:
            doc.setdefault(r.device, {}).setdefault(r.ts_ms, {})[r.point] = r.value
    body = {dev: [{"ts": ts, "values": vals} for ts, vals in sorted(by_ts.items())]
            for dev, by_ts in doc.items()}
    return json.dumps(body, separators=(",", ":")).encode()


def _float_wide(s_type: str) -> bool:
    """True when a Sparkplug gateway would declare the point Double rather than Float."""
    return s_type in ("float64", "int64", "uint64")


def sparkplug_ndata(schema: StreamSchema, seq: int, readings: Sequence[Reading]) -> bytes:
    """The batch as one Sparkplug B NDATA payload with aliases (index in the schema)."""
    alias = schema.index()
    types = {(s.device, s.point): s.type for s in schema.series}
    payload_ts = max((r.ts_ms for r in readings), default=0)
    out = bytearray(_field(1, 0) + _varint(payload_ts))
    for r in readings:
        key = (r.device, r.point)
        m = bytearray(_field(2, 0) + _varint(alias.get(key, len(alias))))
        if r.ts_ms != payload_ts:
            m += _field(3, 0) + _varint(r.ts_ms)
        v = r.value
        if r.quality is not Quality.GOOD or v is None:
            m += _field(7, 0) + b"\x01"
        elif isinstance(v, bool):
            m += _field(14, 0) + (b"\x01" if v else b"\x00")
        elif isinstance(v, int):
            if -(2**31) <= v < 2**32:
                m += _field(10, 0) + _varint(v & 0xFFFFFFFF)
            else:
                m += _field(11, 0) + _varint(v & 0xFFFFFFFFFFFFFFFF)
        elif isinstance(v, float):
            if _float_wide(types.get(key, "float64")):
                m += _field(13, 1) + struct.pack("<d", v)
            else:
                m += _field(12, 5) + _F.pack(v if abs(v) < 3.4e38 or v != v else
                                                 float("inf"))
        else:
            text = str(v).encode("utf-8", "surrogatepass")
            m += _field(15, 2) + _varint(len(text)) + text
        out += _field(2, 2) + _varint(len(m)) + m
    out += _field(3, 0) + _varint(seq % 256)
    return bytes(out)

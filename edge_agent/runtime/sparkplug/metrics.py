"""The gateway's points as Sparkplug metrics: data types, properties, values (Sparkplug 3.0, 6.4).

Pure tables and functions. A device's point becomes a metric of the same name in its DBIRTH and
DDATA; the point type maps to a Sparkplug basic type (6.4.16) by ``POINT_TYPES``, except where
the value the gateway reports is not the raw register type: bits and one-bit fields are Boolean,
wider bit fields UInt16 (the decoder gives an unsigned int), and a scaled or offset number is
Double (the decoder multiplies in double precision). The engineering unit, scale and offset
travel as metric properties in the births ("engUnit", "scale", "offset"), and a reading of bad
quality as a null value with the "Quality" property 0 (6.4.9.1: 0 bad, 192 good).
"""

from __future__ import annotations

from edge_agent.drivers.model import DataType as PointType
from edge_agent.drivers.model import Point
from edge_agent.protocol.readings import Quality, Reading
from edge_agent.runtime.sparkplug.payload import DataType, Metric, Property

# Names the specification gives (Sparkplug 3.0, 6.4.19 and 5.17).
BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
# Quality property (6.4.9.1) [tck-id-payloads-propertyset-quality-value-type]: an Int32.
QUALITY = "Quality"
QUALITY_BAD = 0
QUALITY_GOOD = 192

POINT_TYPES: dict[PointType, DataType] = {
    PointType.BOOL: DataType.BOOLEAN,
    PointType.INT16: DataType.INT16,
    PointType.UINT16: DataType.UINT16,
    PointType.INT32: DataType.INT32,
    PointType.UINT32: DataType.UINT32,
    PointType.INT64: DataType.INT64,
    PointType.UINT64: DataType.UINT64,
    PointType.FLOAT32: DataType.FLOAT,
    PointType.FLOAT64: DataType.DOUBLE,
    PointType.STRING: DataType.STRING,
}
_NUMBERS = frozenset(POINT_TYPES) - {PointType.BOOL, PointType.STRING}


def metric_type(point: Point) -> DataType:
    """The Sparkplug data type of the values the gateway reports for ``point``."""
    if point.table.is_bit:
        return DataType.BOOLEAN
    scaled = point.scale != 1 or point.offset != 0
    if point.bit is not None:
        if point.type is PointType.BOOL:
            return DataType.BOOLEAN
        return DataType.DOUBLE if scaled else DataType.UINT16
    if point.type in _NUMBERS and scaled:
        return DataType.DOUBLE
    return POINT_TYPES[point.type]


def point_properties(point: Point) -> tuple[Property, ...]:
    """The birth properties of ``point``: its engineering unit and any scale and offset."""
    props: list[Property] = []
    if point.unit:
        props.append(Property("engUnit", DataType.STRING, point.unit))
    if point.scale != 1:
        props.append(Property("scale", DataType.DOUBLE, float(point.scale)))
    if point.offset != 0:
        props.append(Property("offset", DataType.DOUBLE, float(point.offset)))
    return tuple(props)


def fits(datatype: DataType, value: object) -> bool:
    """True when ``value`` can be sent as ``datatype`` (a reading of another shape is null)."""
    if datatype is DataType.BOOLEAN:
        return isinstance(value, bool)
    if datatype is DataType.STRING:
        return isinstance(value, str)
    if datatype in (DataType.FLOAT, DataType.DOUBLE):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, int) and not isinstance(value, bool)


def reading_metric(reading: Reading, datatype: DataType, alias: int, *, name: str | None = None,
                   props: tuple[Property, ...] = (), was_bad: bool = False) -> Metric:
    """A reading as a metric: by alias in DATA, with ``name`` and ``props`` in a birth.

    A bad reading is a null with Quality 0; the first good one after it carries Quality 192.
    """
    good = reading.quality is Quality.GOOD and fits(datatype, reading.value)
    if not good:
        props = (*props, Property(QUALITY, DataType.INT32, QUALITY_BAD))
    elif was_bad:
        props = (*props, Property(QUALITY, DataType.INT32, QUALITY_GOOD))
    value = reading.value if good else None
    if value is not None and datatype in (DataType.FLOAT, DataType.DOUBLE):
        value = float(value)
    return Metric(name=name, alias=alias, timestamp=reading.ts_ms, datatype=datatype,
                  value=value, is_null=value is None, properties=props)

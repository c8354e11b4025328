"""The gateway's stream dictionary: the schema message of its configured series (pure).

Every point the agent polls is one series of the schema, in config order (devices, then each
device's points), with its register type, unit, scale, offset and poll interval. A DL/T 645
meter's numbers are BCD digits read with a fixed count of decimals: their series are float64
with the digits' step as scale, so the encoder can send the digits as integers when that
gives every value back exactly (it checks, and falls back to the float bits when not). The schema is
made once per boot epoch (a config change starts a new agent, so a new epoch and schema).
"""

from __future__ import annotations

from edge_agent.codecs.schema import SeriesDef, StreamSchema, build_schema
from edge_agent.config.model import SiteConfig
from edge_agent.drivers.dlt645.bcd import Kind
from edge_agent.drivers.dlt645.meter import MeterPoint
from edge_agent.drivers.model import DataType, Point


def _type_of(p: Point) -> str:
    """The schema type of a point: its register type, or bool/bits for bits and bit fields."""
    if p.table.is_bit or p.type is DataType.BOOL:
        return "bool"
    if p.bit is not None:
        return "bits"
    return p.type.value


def _meter_series(device: str, p: MeterPoint, poll_interval_s: float) -> SeriesDef:
    interval_ms = round((p.interval_s or poll_interval_s) * 1000)
    if p.fmt.kind is not Kind.NUMBER:  # a date, a time of day, a digit string
        return SeriesDef(device, p.name, "string", p.unit, 1.0, 0.0, interval_ms)
    return SeriesDef(device, p.name, "float64", p.unit, p.scale / 10 ** p.fmt.decimals, 0.0,
                     interval_ms)


def site_schema(cfg: SiteConfig, epoch: int) -> StreamSchema:
    """The schema message of every series ``cfg`` polls, for the boot epoch ``epoch``."""
    series = []
    for d in cfg.devices:
        series += [SeriesDef(d.name, p.name, _type_of(p), p.unit, p.scale, p.offset,
                             round((p.interval_s or d.poll_interval_s) * 1000))
                   for p in d.points]
        series += [_meter_series(d.name, p, d.poll_interval_s) for p in d.meter_points]
    return build_schema(cfg.gateway_id, epoch, series)

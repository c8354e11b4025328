"""The gateway's stream dictionary: the schema message of its configured series (pure).

Every point the agent polls is one series of the schema, in config order (devices, then each
device's points), with its register type, unit, scale, offset and poll interval. The schema is
made once per boot epoch (a config change starts a new agent, so a new epoch and schema).
"""

from __future__ import annotations

from edge_agent.codecs.schema import SeriesDef, StreamSchema, build_schema
from edge_agent.config.model import SiteConfig
from edge_agent.drivers.model import DataType, Point


def _type_of(p: Point) -> str:
    """The schema type of a point: its register type, or bool/bits for bits and bit fields."""
    if p.table.is_bit or p.type is DataType.BOOL:
        return "bool"
    if p.bit is not None:
        return "bits"
    return p.type.value


def site_schema(cfg: SiteConfig, epoch: int) -> StreamSchema:
    """The schema message of every series ``cfg`` polls, for the boot epoch ``epoch``."""
    series = [SeriesDef(d.name, p.name, _type_of(p), p.unit, p.scale, p.offset,
                        round((p.interval_s or d.poll_interval_s) * 1000))
              for d in cfg.devices for p in d.points]
    return build_schema(cfg.gateway_id, epoch, series)

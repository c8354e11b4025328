"""What a Sparkplug edge node receives, parsed under explicit limits: NCMD, DCMD and STATE.

Pure: topic and payload bytes in, a command or a ``SparkplugError`` out (saying what was wrong
and where); the node counts and logs the rejections and goes on. Nothing here changes state, so
a rejected message changes none. Limits: protobuf payloads by ``payload.Limits`` (64 KiB, 256
metrics, 1 KiB strings), STATE documents 1 KiB of strict JSON (``protocol.jsonsafe``).

- NCMD (Sparkplug 3.0, 6.4.23): a timestamp [tck-id-payloads-ncmd-timestamp], no seq
  [tck-id-payloads-ncmd-seq]; the one command is 'Node Control/Rebirth' with the Boolean true
  [tck-id-operational-behavior-data-commands-ncmd-rebirth-name]
  [tck-id-operational-behavior-data-commands-ncmd-rebirth-value]. The node has no writable
  metric of its own, so any other metric makes the whole message a rejection.
- DCMD (6.4.24): parsed and checked against the device's DBIRTH metrics (by alias or name, the
  value in the field of the metric's type
  [tck-id-operational-behavior-data-commands-dcmd-metric-value]), then refused by the node: a
  write reaches a device only through the operator's signed command.
- STATE (3.0, 4.2.3 and 6.4.27): retained JSON ``{"online": bool, "timestamp": ms}`` on
  ``spBv1.0/STATE/{host_id}``, taken only for the configured primary host
  [tck-id-message-flow-edge-node-birth-publish-phid-wait-id].
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.protocol.errors import SparkplugError
from edge_agent.protocol.jsonsafe import UnsafeJsonError, loads_strict
from edge_agent.runtime.sparkplug.decode import decode_payload
from edge_agent.runtime.sparkplug.metrics import REBIRTH
from edge_agent.runtime.sparkplug.payload import (
    M_BOOL,
    M_DOUBLE,
    M_FLOAT,
    M_INT,
    M_LONG,
    M_STRING,
    DataType,
    Limits,
    Metric,
    typed,
)
from edge_agent.runtime.sparkplug.session import NAMESPACE, Session

MAX_STATE_BYTES = 1024
# The value field each data type travels in (6.4.17), to check a command's value against.
_FIELD_OF: dict[DataType, int] = {
    DataType.BOOLEAN: M_BOOL, DataType.STRING: M_STRING, DataType.FLOAT: M_FLOAT,
    DataType.DOUBLE: M_DOUBLE, DataType.INT64: M_LONG, DataType.UINT64: M_LONG,
    DataType.INT8: M_INT, DataType.INT16: M_INT, DataType.INT32: M_INT, DataType.UINT8: M_INT,
    DataType.UINT16: M_INT, DataType.UINT32: M_INT,
}


@dataclass(frozen=True, slots=True)
class Rebirth:
    """An NCMD asking for a fresh birth sequence."""


@dataclass(frozen=True, slots=True)
class DeviceWrite:
    """A well-formed DCMD: (point, value) pairs for one device, not yet authorised."""

    device: str
    writes: tuple[tuple[str, object], ...]


@dataclass(frozen=True, slots=True)
class HostState:
    """The primary host's STATE: online or not, as of ``timestamp`` (ms)."""

    online: bool
    timestamp: int


Command = Rebirth | DeviceWrite | HostState


def parse_message(topic: str, payload: bytes, session: Session, primary_host: str | None,
                  limits: Limits | None = None) -> Command:
    """Parse one incoming message for this node; SparkplugError saying what is wrong."""
    lim = limits or Limits()
    levels = topic.split("/")
    if len(levels) == 3 and levels[:2] == [NAMESPACE, "STATE"]:
        return _state(levels[2], payload, primary_host)
    if len(levels) < 4 or levels[0] != NAMESPACE or levels[1] != session.group_id \
            or levels[3] != session.edge_node_id:
        raise SparkplugError(f"topic {topic!r} is not one of this edge node's command topics")
    if levels[2] == "NCMD" and len(levels) == 4:
        return _ncmd(payload, lim)
    if levels[2] == "DCMD" and len(levels) == 5:
        return _dcmd(levels[4], payload, session, lim)
    raise SparkplugError(f"topic {topic!r}: expected NCMD/{{node}} or DCMD/{{node}}/{{device}}")


def _ncmd(payload: bytes, lim: Limits) -> Rebirth:
    p = decode_payload(payload, lim, "NCMD")
    _command_header(p.timestamp, p.seq, "NCMD")
    rebirth = False
    for i, m in enumerate(p.metrics):
        if m.name != REBIRTH or m.alias is not None:
            raise SparkplugError(f"NCMD metric {i} ({_label(m)}): this edge node has no "
                                 f"writable metric but {REBIRTH!r} (which has no alias)")
        if m.value_field != M_BOOL or m.value is not True:
            raise SparkplugError(f"NCMD metric {i}: {REBIRTH!r} must be the Boolean true")
        rebirth = True
    if not rebirth:
        raise SparkplugError("NCMD holds no metric")
    return Rebirth()


def _dcmd(device: str, payload: bytes, session: Session, lim: Limits) -> DeviceWrite:
    cfg = session.devices.get(device)
    if cfg is None:
        raise SparkplugError(f"DCMD for device {device!r}, which this edge node does not have")
    p = decode_payload(payload, lim, f"DCMD {device}")
    _command_header(p.timestamp, p.seq, f"DCMD {device}")
    by_alias = {session.points[(device, pt.name)].alias: pt.name for pt in cfg.points}
    writes: list[tuple[str, object]] = []
    for i, m in enumerate(p.metrics):
        where = f"DCMD {device} metric {i} ({_label(m)})"
        name = m.name if m.name is not None else by_alias.get(m.alias or 0)
        if name is None or (device, name) not in session.points:
            raise SparkplugError(f"{where}: not a metric of {device}'s DBIRTH")
        info = session.points[(device, name)]
        if m.value_field != _FIELD_OF.get(info.datatype):
            raise SparkplugError(f"{where}: the value is not in the field of a "
                                 f"{info.datatype.name} metric")
        writes.append((name, typed(info.datatype, m.value)))
    if not writes:
        raise SparkplugError(f"DCMD {device} holds no metric")
    return DeviceWrite(device, tuple(writes))


def _command_header(timestamp: int | None, seq: int | None, where: str) -> None:
    if timestamp is None:
        raise SparkplugError(f"{where}: no payload timestamp [tck-id-payloads-ncmd-timestamp]")
    if seq is not None:
        raise SparkplugError(f"{where}: a command carries no seq [tck-id-payloads-ncmd-seq]")


def _label(m: Metric) -> str:
    return repr(m.name) if m.name is not None else f"alias {m.alias}"


def _state(host: str, payload: bytes, primary_host: str | None) -> HostState:
    if primary_host is None or host != primary_host:
        raise SparkplugError(f"STATE of host {host!r}, not the configured primary host "
                             f"{primary_host!r}")
    try:
        doc = loads_strict(payload, max_bytes=MAX_STATE_BYTES, max_depth=1, max_items=8,
                           max_str=64, int_min=0)
    except UnsafeJsonError as exc:
        raise SparkplugError(f"STATE of {host!r}: {exc}") from None
    if not isinstance(doc, dict):
        raise SparkplugError(f"STATE of {host!r}: expected a JSON object")
    online, ts = doc.get("online"), doc.get("timestamp")
    if not isinstance(online, bool):
        raise SparkplugError(f"STATE of {host!r}: 'online' must be true or false")
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise SparkplugError(f"STATE of {host!r}: 'timestamp' must be milliseconds since "
                             "the epoch (an integer)")
    return HostState(online, ts)

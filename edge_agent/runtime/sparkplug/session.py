"""The Sparkplug edge-node session, pure: bdSeq, seq, aliases, births, deaths and data.

No I/O: the node (``node``) feeds it readings and device states and publishes what it returns.
The rules it keeps, from Sparkplug 3.0:

- bdSeq: one per MQTT CONNECT, 0-255 wrapping, the same value in the NDEATH will and the NBIRTH
  [tck-id-topics-nbirth-bdseq-increment] [tck-id-payloads-nbirth-bdseq-repeat]; a rebirth keeps
  it [tck-id-operational-behavior-data-commands-rebirth-action-3].
- seq: 0 in every NBIRTH [tck-id-payloads-sequence-num-zero-nbirth], then one more on every
  DBIRTH, NDATA, DDATA and DDEATH, 255 followed by 0 [tck-id-payloads-sequence-num-incrementing].
- aliases: every device metric has one, unique across the edge node
  [tck-id-payloads-alias-uniqueness]; births carry name and alias
  [tck-id-payloads-alias-birth-requirement], data only the alias
  [tck-id-payloads-alias-data-cmd-requirement]; 'Node Control/Rebirth' has none
  [tck-id-operational-behavior-data-commands-rebirth-name-aliases].
- births carry every metric with its current value or is_null
  [tck-id-operational-behavior-data-publish-dbirth-values]; a device is born when the scheduler
  has it online and dies (DDEATH) when it goes offline [tck-id-operational-behavior-device-ddeath].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.drivers.bus import DeviceConfig
from edge_agent.protocol.readings import Quality, Reading
from edge_agent.runtime.sparkplug.metrics import (
    BDSEQ,
    REBIRTH,
    metric_type,
    point_properties,
    reading_metric,
)
from edge_agent.runtime.sparkplug.payload import (
    DataType,
    Metric,
    Payload,
    Property,
    encode_payload,
)

NAMESPACE = "spBv1.0"  # [tck-id-topic-structure-namespace-a]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish: every session message is QoS 0, retain false
    [tck-id-payloads-nbirth-qos] [tck-id-payloads-ddata-qos]."""

    topic: str
    payload: bytes
    kind: str          # NBIRTH, DBIRTH, NDATA, DDATA, DDEATH
    metrics: int = 0


@dataclass(frozen=True, slots=True)
class _PointInfo:
    alias: int
    datatype: DataType
    props: tuple[Property, ...]


def death_payload(bdseq: int, now_ms: int) -> bytes:
    """The NDEATH payload: only the bdSeq metric, an Int64, and no seq
    [tck-id-topics-ndeath-payload] [tck-id-topics-ndeath-seq]."""
    return encode_payload(Payload(timestamp=now_ms, metrics=(
        Metric(name=BDSEQ, datatype=DataType.INT64, value=bdseq),)))


class Session:
    """One edge node's metrics and counters across its MQTT sessions."""

    def __init__(self, group_id: str, edge_node_id: str, devices: Sequence[DeviceConfig]) -> None:
        self.group_id = group_id
        self.edge_node_id = edge_node_id
        self.devices = {d.name: d for d in devices}
        # Aliases from 1 in config order: the same on every birth of this config.
        self.points: dict[tuple[str, str], _PointInfo] = {}
        for d in devices:
            for p in d.points:
                self.points[(d.name, p.name)] = _PointInfo(len(self.points) + 1,
                                                          metric_type(p), point_properties(p))
        self.last: dict[tuple[str, str], Reading] = {}   # the newest reading of each point
        self.bad: set[tuple[str, str]] = set()           # points whose last report was bad
        self.status: dict[str, str] = {d.name: "unknown" for d in devices}
        self.born: set[str] = set()    # devices with a DBIRTH in the current birth sequence
        self.live = False              # the NBIRTH of the current connection is out
        self.bdseq = 0
        self.seq = 0
        self._now_ms = 0  # the wall clock (ms) the next messages are stamped with (``at``)

    def topic(self, kind: str, device: str | None = None) -> str:
        """spBv1.0/{group}/{kind}/{node}[/{device}] [tck-id-topic-structure]."""
        base = f"{NAMESPACE}/{self.group_id}/{kind}/{self.edge_node_id}"
        return base if device is None else f"{base}/{device}"

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) % 256
        return self.seq

    # ------------------------------------------------------------------ what comes in

    def observe(self, readings: Sequence[Reading]) -> None:
        """Remember readings as current values (the newest of each point), publishing nothing."""
        last = self.last
        for r in readings:
            key = (r.device, r.point)
            prev = last.get(key)
            if (prev is None or r.ts_ms >= prev.ts_ms) and key in self.points:
                last[key] = r

    def set_status(self, device: str, status: str) -> list[Outgoing]:
        """Record a device's scheduler state; a DBIRTH or DDEATH when live and it changed."""
        if device not in self.status:
            return []
        self.status[device] = status
        if not self.live:
            return []
        if status == "online" and device not in self.born:
            return [self._dbirth(device, self._now_ms)]
        if status == "offline" and device in self.born:
            self.born.discard(device)
            return [self._ddeath(device, self._now_ms)]
        return []

    def at(self, now_ms: int) -> Session:
        """Set the wall clock (ms) the next messages are stamped with; returns self."""
        self._now_ms = now_ms
        return self

    def connected(self, bdseq: int) -> None:
        """A new MQTT session with this bdSeq: nothing is born in it yet."""
        self.bdseq = bdseq
        self.live = False
        self.born.clear()

    def disconnected(self) -> None:
        """The MQTT session ended: no more publishing until the next birth."""
        self.live = False
        self.born.clear()

    # ------------------------------------------------------------------ what goes out

    def births(self) -> list[Outgoing]:
        """NBIRTH, then a DBIRTH for every online device [tck-id-payloads-dbirth-order].

        Also a rebirth: the same bdSeq, seq from 0 again, every metric with its current value.
        """
        now = self._now_ms
        self.seq = 0
        self.born.clear()
        nbirth = Payload(timestamp=now, seq=0, metrics=(
            Metric(name=BDSEQ, datatype=DataType.INT64, value=self.bdseq, timestamp=now),
            Metric(name=REBIRTH, datatype=DataType.BOOLEAN, value=False, timestamp=now)))
        out = [Outgoing(self.topic("NBIRTH"), encode_payload(nbirth), "NBIRTH", 2)]
        self.live = True
        out += [self._dbirth(name, now) for name, st in self.status.items() if st == "online"]
        return out

    def _dbirth(self, device: str, now: int) -> Outgoing:
        metrics: list[Metric] = []
        for p in self.devices[device].points:
            key = (device, p.name)
            info = self.points[key]
            last = self.last.get(key)
            if last is None:  # never read: null, with its type [tck-id-topics-dbirth-metrics]
                metrics.append(Metric(name=p.name, alias=info.alias, timestamp=now,
                                      datatype=info.datatype, is_null=True,
                                      properties=info.props))
            else:
                metrics.append(reading_metric(last, info.datatype, info.alias, name=p.name,
                                              props=info.props))
                self._note_quality(last)
        self.born.add(device)
        payload = Payload(timestamp=now, seq=self._next_seq(), metrics=tuple(metrics))
        return Outgoing(self.topic("DBIRTH", device), encode_payload(payload), "DBIRTH",
                        len(metrics))

    def _ddeath(self, device: str, now: int) -> Outgoing:
        payload = Payload(timestamp=now, seq=self._next_seq())
        return Outgoing(self.topic("DDEATH", device), encode_payload(payload), "DDEATH")

    def _note_quality(self, r: Reading) -> bool:
        """Record whether ``r`` is bad; True when it is good after a bad one."""
        key = (r.device, r.point)
        was_bad = key in self.bad
        if r.quality is Quality.GOOD:
            self.bad.discard(key)
        else:
            self.bad.add(key)
        return was_bad

    def data(self, readings: Sequence[Reading]) -> list[Outgoing]:
        """DDATA for each born device among ``readings`` (by alias, oldest first); others are
        only remembered. Nothing goes out before the NBIRTH [tck-id-payloads-ddata-order]."""
        self.observe(readings)
        if not self.live:
            return []
        by_device: dict[str, list[Reading]] = {}
        for r in readings:
            if r.device in self.born and (r.device, r.point) in self.points:
                by_device.setdefault(r.device, []).append(r)
        out = []
        for device, rs in by_device.items():
            # Oldest first [tck-id-operational-behavior-data-publish-dbirth-order].
            rs.sort(key=lambda r: r.ts_ms)
            metrics = []
            for r in rs:
                info = self.points[(device, r.point)]
                was_bad = self._note_quality(r)
                metrics.append(reading_metric(r, info.datatype, info.alias, was_bad=was_bad))
            payload = Payload(timestamp=self._now_ms, seq=self._next_seq(), metrics=tuple(metrics))
            out.append(Outgoing(self.topic("DDATA", device),
                                encode_payload(payload, with_datatypes=False), "DDATA",
                                len(metrics)))
        return out

    def alias_of(self, device: str, point: str) -> int | None:
        """The alias of a device's point, or None if the node has no such metric."""
        info = self.points.get((device, point))
        return None if info is None else info.alias

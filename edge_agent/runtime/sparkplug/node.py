"""The Sparkplug edge node's MQTT connection: a thin shell around ``Session`` and ``intake``.

A second uplink beside ``runtime.uplink`` (which stays the guaranteed path: QoS 1, fed from the
durable spool). This one is live-only: readings are published as DDATA while a Sparkplug
session is up and otherwise only remembered as the current values of the next birth.

One connection at a time, a fresh aiomqtt client for each (a reused one keeps its first will,
and the will must carry this connection's bdSeq), reconnecting with back-off:

1. bdSeq: the next one, kept in ``state_dir`` so a restarted agent does not repeat the bdSeq of
   the session its NDEATH will ends [tck-id-topics-nbirth-bdseq-increment];
2. CONNECT with MQTT 3.1.1, clean session [tck-id-principles-persistence-clean-session-311],
   and the NDEATH as will: QoS 1, not retained, only bdSeq
   [tck-id-payloads-ndeath-will-message-qos] [tck-id-payloads-ndeath-will-message-retain];
3. subscribe NCMD and DCMD at QoS 1 [tck-id-message-flow-edge-node-ncmd-subscribe]
   [tck-id-message-flow-device-dcmd-subscribe] and, with a primary host, its STATE;
4. births (NBIRTH, DBIRTHs) at once, or with a primary host once its STATE says online
   [tck-id-message-flow-edge-node-birth-publish-phid-wait];
5. then DDATA, DBIRTH and DDEATH as readings arrive and devices come and go, rebirth on NCMD;
   a STATE offline of the primary host (newer than its online) ends the session with an NDEATH
   [tck-id-message-flow-edge-node-birth-publish-phid-offline]; a stop publishes the NDEATH
   before the DISCONNECT [tck-id-operational-behavior-edge-node-intentional-disconnect-ndeath].

Everything is published by one task in order, so seq numbers go out in the order they are made.
Incoming messages go through ``intake.parse_message``; a rejection is counted and logged (the
first ``LOGGED_REJECTIONS`` at warning level, then one in ``LOG_EVERY``) and changes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiomqtt

from edge_agent.config.model import SiteConfig
from edge_agent.protocol.backoff import Backoff
from edge_agent.protocol.broker import client_options
from edge_agent.protocol.clock import Clock
from edge_agent.protocol.errors import SparkplugError, UplinkError
from edge_agent.protocol.readings import Reading
from edge_agent.runtime.reconnect import probe
from edge_agent.runtime.sparkplug.bdseq import BdSeqStore
from edge_agent.runtime.sparkplug.intake import DeviceWrite, HostState, Rebirth, parse_message
from edge_agent.runtime.sparkplug.session import NAMESPACE, Outgoing, Session, death_payload
from edge_agent.runtime.uplink import until_first_fails

log = logging.getLogger(__name__)

MAX_PENDING_EVENTS = 10_000   # readings events beyond this are dropped (live-only) and counted
MAX_INCOMING_QUEUE = 1000     # messages aiomqtt may hold for us before it drops them
LOGGED_REJECTIONS = 20
LOG_EVERY = 1000


@dataclass
class SparkplugCounters:
    """What the Sparkplug node has done since start (reported in health)."""

    connects: int = 0
    births: int = 0
    rebirths: int = 0
    rebirths_coalesced: int = 0   # requests answered by a birth sequence already due
    published: dict[str, int] = field(default_factory=dict)   # by message type
    published_bytes: int = 0
    published_metrics: int = 0
    rejected: dict[str, int] = field(default_factory=dict)    # by message type
    dcmd_refused: int = 0
    host_offline: int = 0
    stale_state: int = 0
    dropped_events: int = 0
    last_error: str | None = None
    last_rejection: str | None = None


@dataclass(frozen=True, slots=True)
class _Data:
    readings: list[Reading]


@dataclass(frozen=True, slots=True)
class _Status:
    device: str
    status: str


@dataclass(frozen=True, slots=True)
class _Rebirth:
    pass


@dataclass(frozen=True, slots=True)
class _Host:
    online: bool


_Event = _Data | _Status | _Rebirth | _Host


class _HostOffline(UplinkError):
    """The primary host went offline: end this session and start over."""


class SparkplugNode:
    """The gateway as a Sparkplug B edge node on the site's broker."""

    def __init__(self, cfg: SiteConfig, clock: Clock, *, backoff: Backoff | None = None,
                 timeout_s: float = 10.0, goodbye_timeout_s: float = 2.0) -> None:
        sc = cfg.sparkplug
        self.mqtt = cfg.mqtt
        self.client_id = sc.client_id or f"{cfg.gateway_id}-spb"
        self.primary_host = sc.primary_host_id
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.timeout_s = timeout_s
        self.goodbye_timeout_s = goodbye_timeout_s
        self.session = Session(sc.group_id, sc.edge_node_id, cfg.devices)
        self.bdseq = BdSeqStore(cfg.state_dir / "sparkplug-bdseq")
        self.counters = SparkplugCounters()
        self._events: deque[_Event] = deque()
        self._wake = asyncio.Event()
        self._connected = False
        self._host_online = False
        self._host_ts: int | None = None   # timestamp of the newest STATE taken
        self._failing = False
        self._rebirth_pending = False

    # ------------------------------------------------------------------ from the agent

    def observe(self, readings: Sequence[Reading]) -> None:
        """Readings as polled (before report by exception): the current values of the next
        births. The scheduler reports a device online before handing over the readings of the
        same poll, so its DBIRTH, published later by the publisher task, carries them."""
        self.session.observe(readings)

    def offer(self, readings: Sequence[Reading]) -> None:
        """Readings just reported on the guaranteed path: DDATA if live, else remembered."""
        if not self._connected:
            self.session.observe(readings)
            return
        if len(self._events) >= MAX_PENDING_EVENTS:
            self.counters.dropped_events += 1
            self.session.observe(readings)
            return
        self._push(_Data(list(readings)))

    def device_status(self, device: str, status: str) -> None:
        """A device's scheduler state changed (online/offline): DBIRTH or DDEATH if live."""
        if self._connected:
            self._push(_Status(device, status))
        else:
            self.session.set_status(device, status)

    def stats_dict(self) -> dict[str, object]:
        """Counters and session state, for the health document."""
        return {**dataclasses.asdict(self.counters), "connected": self._connected,
                "live": self.session.live, "bdseq": self.session.bdseq,
                "primary_host_online": self._host_online if self.primary_host else None,
                "devices_born": sorted(self.session.born)}

    def _push(self, event: _Event) -> None:
        self._events.append(event)
        self._wake.set()

    def _now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    # ------------------------------------------------------------------ the connection loop

    async def run(self) -> None:
        """Connect, keep the session, reconnect with backoff, forever; cancel to stop."""
        while True:
            try:
                await self._connection()
            except (aiomqtt.MqttError, UplinkError, OSError) as exc:
                self._note_failure(exc)
            await self.clock.sleep(self.backoff.next_delay())

    def _note_failure(self, exc: BaseException) -> None:
        self.counters.last_error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, _HostOffline):
            log.info("sparkplug: %s", exc)
        elif self._failing:
            log.debug("sparkplug connection to %s still failing: %s", self.mqtt.url, exc)
        else:
            self._failing = True
            log.warning("sparkplug connection to %s failed: %s (retrying with backoff, "
                        "logged once)", self.mqtt.url, self.counters.last_error)

    async def _connection(self) -> None:
        # bdSeq goes up with every MQTT CONNECT sent ([tck-id-payloads-ndeath-seq-inc]), not
        # with every try: a broker that refuses the socket gets no CONNECT and costs none.
        await probe(self.mqtt)
        bdseq = self.bdseq.next()
        ndeath = self.session.topic("NDEATH")
        will = aiomqtt.Will(ndeath, death_payload(bdseq, self._now_ms()), qos=1, retain=False)
        opts = client_options(self.mqtt)
        opts["protocol"] = aiomqtt.ProtocolVersion.V311
        client = aiomqtt.Client(**opts, will=will, identifier=self.client_id, clean_session=True,
                                timeout=self.timeout_s,
                                max_queued_incoming_messages=MAX_INCOMING_QUEUE)
        async with client:
            self.session.connected(bdseq)
            self._host_online = False
            self._connected = True
            self.counters.connects += 1
            try:
                g, n = self.session.group_id, self.session.edge_node_id
                await client.subscribe(f"{NAMESPACE}/{g}/NCMD/{n}", qos=1)
                await client.subscribe(f"{NAMESPACE}/{g}/DCMD/{n}/+", qos=1)
                if self.primary_host is not None:
                    await client.subscribe(f"{NAMESPACE}/STATE/{self.primary_host}", qos=1)
                self.backoff.reset()
                if self._failing:
                    self._failing = False
                    log.info("sparkplug connection to %s up again", self.mqtt.url)
                await until_first_fails(self._watch(client), self._publisher(client, bdseq))
            except _HostOffline:
                await self._death(client, bdseq)
                raise
            except asyncio.CancelledError:
                await self._death(client, bdseq)
                raise
            finally:
                self._connected = False
                self.session.disconnected()
                self._settle_events()

    async def _death(self, client: aiomqtt.Client, bdseq: int) -> None:
        # A clean DISCONNECT suppresses the will (MQTT 3.1.1, 3.14.4), so the NDEATH goes first.
        try:
            await asyncio.wait_for(client.publish(
                self.session.topic("NDEATH"), death_payload(bdseq, self._now_ms()), qos=1,
                retain=False), self.goodbye_timeout_s)
            self._count(Outgoing(self.session.topic("NDEATH"), b"", "NDEATH"))
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.info("sparkplug NDEATH not published on the way out: %s", exc)

    def _settle_events(self) -> None:
        """Events left when a session ends become plain observations for the next birth."""
        while self._events:
            event = self._events.popleft()
            if isinstance(event, _Data):
                self.session.observe(event.readings)
            elif isinstance(event, _Status):
                self.session.set_status(event.device, event.status)
        self._rebirth_pending = False  # the next session starts with a birth sequence

    # ------------------------------------------------------------------ publishing

    def _may_birth(self) -> bool:
        return self.primary_host is None or self._host_online

    async def _publisher(self, client: aiomqtt.Client, bdseq: int) -> None:
        while True:
            if not self.session.live and self._may_birth():
                self.counters.births += 1
                await self._send(client, self.session.at(self._now_ms()).births())
            await self._wake.wait()
            self._wake.clear()
            while self._events:
                await self._handle(client, self._events.popleft())

    async def _handle(self, client: aiomqtt.Client, event: _Event) -> None:
        session = self.session.at(self._now_ms())
        if isinstance(event, _Data):
            await self._send(client, session.data(event.readings))
        elif isinstance(event, _Status):
            await self._send(client, session.set_status(event.device, event.status))
        elif isinstance(event, _Rebirth) and session.live:
            self._rebirth_pending = False
            # Data stops, then a complete birth sequence, same bdSeq
            # [tck-id-operational-behavior-data-commands-rebirth-action-1..3].
            self.counters.rebirths += 1
            await self._send(client, session.births())
        elif isinstance(event, _Rebirth):
            self._rebirth_pending = False  # not live: the next births answer it anyway
        elif isinstance(event, _Host):
            online = event.online
            self._host_online = online
            if not online and session.live:
                self.counters.host_offline += 1
                raise _HostOffline(f"primary host {self.primary_host!r} went offline: NDEATH "
                                   "published, reconnecting to wait for it")
            if online and not session.live:
                self.counters.births += 1
                await self._send(client, session.births())

    async def _send(self, client: aiomqtt.Client, out: list[Outgoing]) -> None:
        for msg in out:
            # QoS 0, retain false for every session message [tck-id-topics-nbirth-mqtt]
            # [tck-id-topics-ddata-mqtt] [tck-id-topics-dbirth-mqtt] [tck-id-topics-ddeath-mqtt]
            await client.publish(msg.topic, msg.payload, qos=0, retain=False)
            self._count(msg)

    def _count(self, msg: Outgoing) -> None:
        c = self.counters
        c.published[msg.kind] = c.published.get(msg.kind, 0) + 1
        c.published_bytes += len(msg.payload)
        c.published_metrics += msg.metrics

    # ------------------------------------------------------------------ receiving

    async def _watch(self, client: aiomqtt.Client) -> None:
        # Ends with MqttError when the connection drops: that tears the session down.
        async for message in client.messages:
            self._take(str(message.topic), message.payload)
        raise UplinkError("sparkplug message stream ended")

    def _take(self, topic: str, payload: object) -> None:
        """One incoming message through the intake: a command, or a counted rejection."""
        # The kind counts rejections: one of a fixed few (NCMD, DCMD, STATE), never a level
        # the sender chose.
        levels = topic.split("/")
        kind = "STATE" if levels[1:2] == ["STATE"] else levels[2] if len(levels) > 2 else "?"
        if kind not in ("NCMD", "DCMD", "STATE"):
            kind = "other"
        try:
            if not isinstance(payload, bytes | bytearray):
                raise SparkplugError(f"{topic}: payload is not bytes")
            cmd = parse_message(topic, bytes(payload), self.session, self.primary_host)
        except SparkplugError as exc:
            self._reject(kind, str(exc))
            return
        if isinstance(cmd, Rebirth):
            # Requests that arrive before the birth sequence goes out are all answered by it:
            # a flood of NCMD costs one birth sequence per publisher turn, not one each.
            if self._rebirth_pending:
                self.counters.rebirths_coalesced += 1
            else:
                self._rebirth_pending = True
                self._push(_Rebirth())
        elif isinstance(cmd, DeviceWrite):
            self.counters.dcmd_refused += 1
            self._reject("DCMD", f"DCMD for {cmd.device} ({', '.join(n for n, _ in cmd.writes)}) "
                         "refused: writes reach a device only through the operator's signed "
                         "command", count=False)
        elif isinstance(cmd, HostState):
            self._host_state(cmd)

    def _host_state(self, st: HostState) -> None:
        # A STATE older than the newest one taken is stale (a late retained copy): ignored.
        if self._host_ts is not None and st.timestamp < self._host_ts:
            self.counters.stale_state += 1
            return
        self._host_ts = st.timestamp
        self._push(_Host(st.online))

    def _reject(self, kind: str, reason: str, *, count: bool = True) -> None:
        c = self.counters
        if count:
            c.rejected[kind] = c.rejected.get(kind, 0) + 1
        c.last_rejection = reason[:300]
        total = sum(c.rejected.values()) + c.dcmd_refused
        if total <= LOGGED_REJECTIONS or total % LOG_EVERY == 0:
            log.warning("sparkplug %s rejected (%d so far): %s", kind, total, c.last_rejection)

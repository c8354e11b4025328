"""``edge-fleet ingest``: the cloud side of the data path, deduplicating and gap-aware.

Subscribes to every gateway's data and schema topics at QoS 1 (optionally as a shared
subscription ``$share/GROUP/...`` so several workers split the load), decodes each batch with
``edge_agent.codecs.batch.decode_batch``, and stores its readings once per (gateway, epoch, seq).
Schema messages are kept in the database (``parking``), so any worker decodes any version 3
batch whose schema any worker was sent; a batch whose schema is not there yet is parked, the
gateway is asked for the schema (``schema-request``, at most every ``SCHEMA_REQUEST_S`` per
gateway), and the batch is stored when the schema arrives.

Nothing is acknowledged before it is committed: paho's automatic PUBACK is turned off and each
message is acknowledged after the transaction holding it commits, and the session is persistent
(a fixed client id, clean_session false), so a crashed ingest gets its unacknowledged messages
again from the broker. Messages that arrive together are committed together (one fsync).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

import aiomqtt

from edge_agent.codecs.schema import SchemaBook, SchemaLimits, StreamSchema, parse_schema
from edge_agent.fleet.ingest import parking
from edge_agent.fleet.ingest import receipts as rc
from edge_agent.fleet.ingest.intake import (
    DEFAULT_INGEST_LIMITS,
    IngestCounters,
    IngestLimits,
    ReadingBudget,
    decode_message,
)
from edge_agent.fleet.ingest.store import (
    DEFERRED,
    DUPLICATE,
    PARKED,
    SCHEMA,
    STORED,
    IngestStore,
    Outcome,
    Received,
)
from edge_agent.fleet.intake import quote
from edge_agent.fleet.supervisor import EXIT_TASK_FAILED, RUNNING, Supervisor
from edge_agent.protocol import topics
from edge_agent.protocol.backoff import Backoff
from edge_agent.protocol.broker import MqttConfig, client_options
from edge_agent.protocol.clock import Clock, SystemClock
from edge_agent.protocol.rejections import Rejections

log = logging.getLogger(__name__)

MAX_GROUP = 500  # messages committed in one transaction at most
DEFERRED_POLL_S = 1.0  # how often deferred batches are offered to their gateways' budgets
HTTP_ROUTES = {"/v1/health": ("GET",)}
STATUS_S = 60.0  # how often a running ingest logs its status line
SCHEMA_REQUEST_S = 30.0  # a gateway is asked for one schema at most this often


def _exit_process() -> None:
    raise SystemExit(EXIT_TASK_FAILED)


def _payload_bytes(payload: object) -> bytes | None:
    # bytes(payload) of an int would allocate that many bytes: only bytes-like ones are data.
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray | memoryview):
        return bytes(payload)
    return None


class Ingest:
    """One ingest worker: broker in, database out; every loop supervised, every message total.

    A message that cannot be stored is set aside in the ``rejected`` table, acknowledged and
    counted per reason (``rejections``; logged once per reason, then as periodic counts), and
    the next one is taken: a poison message is neither lost silently nor delivered again to
    stop the next ingest. An error of the database itself fails the group, which is then not
    acknowledged: the MQTT loop dies, is restarted by the supervisor with back-off, and the
    broker delivers the group again. A loop that cannot be restarted ends the process with
    status 1. ``status()`` (and the log line every ``status_s``) says what it is doing.
    """

    def __init__(self, mqtt: MqttConfig, store: IngestStore, *, share_group: str | None = None,
                 client_id: str = "edge-ingest", gap_scan_s: float = 10.0,
                 limits: IngestLimits = DEFAULT_INGEST_LIMITS, status_s: float = STATUS_S,
                 supervisor: Supervisor | None = None, clock: Clock | None = None,
                 receipts: bool = True) -> None:
        self.mqtt = mqtt
        self.store = store
        store.deferred_cap_bytes = limits.gateway_deferred_bytes
        self.prefix = topics.check_prefix(mqtt.topic_prefix)
        self.filters = [f"$share/{share_group}/{f}" if share_group else f
                        for f in (topics.subscription(self.prefix, topics.SCHEMA),
                                  topics.subscription(self.prefix, topics.DATA),
                                  topics.subscription(self.prefix, topics.STATE))]
        self.receipts = receipts  # publish receipts (protocol.receipts) after each commit
        self.marks = rc.Marks()
        self.filter = " ".join(self.filters)  # for the log
        self.client_id = client_id
        self.gap_scan_s = gap_scan_s
        self.limits = limits
        self.status_s = status_s
        self.clock = clock or SystemClock()
        self.counters = IngestCounters()
        self.rejections = Rejections("ingest", log, summary_s=status_s, clock=self.clock)
        self.counters.rejected_by_reason = self.rejections.counts
        self.supervisor = supervisor or Supervisor(clock=self.clock)
        self.budget = ReadingBudget(limits.gateway_readings_per_s, limits.gateway_burst_readings)
        self.subscribed = asyncio.Event()
        self.book = SchemaBook(limits=SchemaLimits(max_bytes=limits.max_schema_bytes))
        self._arrived: set[tuple[str, bytes]] = set()   # schemas kept since the last unpark
        self._wanted: set[tuple[str, bytes]] = set()    # schemas to ask gateways for
        self._asked: dict[str, float] = {}  # gateway -> when it was last asked
        self._client: aiomqtt.Client | None = None
        self.last_message_ms: int | None = None
        self.last_error: str | None = None
        self._backoff = Backoff(0.2, 5.0, random.Random(client_id))

    def _now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    async def run(self) -> None:
        """Consume until cancelled; if a loop cannot be restarted, end the process with status 1.

        The end does not depend on the caller awaiting this task (the command awaits only
        its stop signal): a loop callback raises SystemExit, which asyncio lets out of the
        event loop, before the caller would be woken by this task's return.
        """
        sup = self.supervisor
        sup.start("ingest-mqtt", self._mqtt_loop)
        sup.start("ingest-gaps", self._scan_loop)
        sup.start("ingest-deferred", self._deferred_loop)
        sup.start("ingest-status", self._status_loop)
        if self.receipts:
            sup.start("ingest-receipts", self._receipt_loop)
        try:
            await sup.fatal.wait()
        finally:
            await sup.stop()
            try:
                self.store.scan_gaps()
            except Exception:  # the database may be what failed; gaps are scanned next time
                log.exception("ingest: the last gap scan failed")
            self.rejections.maybe_summarise(force=True)
            log.info("%s", self.status_line())
        log.critical("ingest: %s; exiting with status %d", sup.failure, EXIT_TASK_FAILED)
        asyncio.get_running_loop().call_soon(_exit_process)

    async def _mqtt_loop(self) -> None:
        """Connect, consume, reconnect with back-off; a broker error is not a crash."""
        while True:
            try:
                await self._connection()
            except aiomqtt.MqttError as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("ingest: broker %s: %s (reconnecting)", self.mqtt.url, exc)
            finally:
                self.subscribed.clear()
            await asyncio.sleep(self._backoff.next_delay())

    async def _scan_loop(self) -> None:
        while True:
            await asyncio.sleep(self.gap_scan_s)
            gaps = self.store.scan_gaps()
            if gaps:
                log.info("ingest: %d open gaps, e.g. %s", len(gaps), gaps[:3])
            # Batches still parked: ask again (a request or its answer may have been lost).
            for gw, digest, _n in self.store.query(parking.WAITING):
                with contextlib.suppress(ValueError):
                    self._wanted.add((str(gw), bytes.fromhex(str(digest))))
            if self._client is not None:
                await self._request_schemas(self._client)

    async def _deferred_loop(self) -> None:
        while True:
            await self.clock.sleep(DEFERRED_POLL_S)
            self.release_deferred()

    def release_deferred(self) -> int:
        """Store deferred batches, oldest first per gateway, as far as their gateways' budgets
        allow now; how many were released."""
        released = 0
        for gateway in self.store.deferred_gateways():
            ready: list[Received] = []
            ids: list[int] = []
            for row_id, topic, payload in self.store.next_deferred(gateway, MAX_GROUP):
                r = decode_message(topic, payload, self.prefix, self.limits,
                                   schemas=self._schema)
                n = len(r.batch.readings) if r.batch is not None else 0
                if not self.budget.take(gateway, n, self.clock.monotonic()):
                    break
                ready.append(r)
                ids.append(row_id)
            if ready:
                self._count(ready, self.store.record_each(ready, unpark=ids))
                self.counters.commits += 1
                released += len(ready)
        self.counters.released += released
        return released

    async def _receipt_loop(self) -> None:
        while True:
            await self.clock.sleep(rc.RECEIPT_S)
            if self._client is not None and self.subscribed.is_set() and self.marks.pending:
                try:
                    self.counters.receipts += await rc.publish_marked(
                        self._client, self.store, self.prefix, self.marks)
                except aiomqtt.MqttError as exc:  # marks kept; the next connection sends them
                    log.debug("ingest: receipts not sent: %s", exc)

    def _epoch_end(self, m: aiomqtt.Message) -> None:
        """A gateway's retained state names the end of its previous epoch: keep it."""
        try:
            rc.record_epoch_end(self.store, m.topic.value, _payload_bytes(m.payload),
                                self.prefix)
        except ValueError as exc:
            self.rejections.reject("state", f"topic {quote(m.topic.value)}: {exc}")

    async def _status_loop(self) -> None:
        while True:
            await self.clock.sleep(self.status_s)
            self.rejections.maybe_summarise()
            log.info("%s", self.status_line())

    async def _connection(self) -> None:
        opts = client_options(self.mqtt)
        opts["protocol"] = aiomqtt.ProtocolVersion.V311
        client = aiomqtt.Client(**opts, identifier=self.client_id, clean_session=False)
        client._client.manual_ack_set(True)  # PUBACK after commit, not on receipt
        async with client:
            for topic_filter in self.filters:
                await client.subscribe(topic_filter, qos=1)
            self._client = client
            self.counters.connects += 1
            self._backoff.reset()
            self.subscribed.set()
            log.info("ingest subscribed to %s on %s as %s", self.filter, self.mqtt.url,
                     self.client_id)
            messages = client.messages
            async for first in messages:
                group = [first]
                while len(messages) and len(group) < MAX_GROUP:  # what already arrived
                    group.append(await messages.__anext__())
                self._commit(group)
                for m in group:
                    client._client.ack(m.mid, m.qos)
                self._unpark()
                await self._request_schemas(client)

    def _intake(self, m: aiomqtt.Message) -> Received:
        """One message as the store takes it: a batch within every limit, or a rejection."""
        topic = m.topic.value
        payload = _payload_bytes(m.payload)
        if payload is None:
            parsed = topics.parse_topic(topic, self.prefix)
            return Received(topic, b"", None, f"payload is {type(m.payload).__name__}, not "
                            "bytes", "not_bytes", parsed.gateway if parsed else None)
        r = decode_message(topic, payload, self.prefix, self.limits, schemas=self._schema,
                           book=self.book)
        b = r.batch
        if b is not None and not self.budget.take(b.gateway, len(b.readings),
                                                  self.clock.monotonic()):
            return Received(topic, payload, b,
                            f"gateway {b.gateway!r} is over its budget of "
                            f"{self.limits.gateway_readings_per_s:.0f} readings/s (burst "
                            f"{self.limits.gateway_burst_readings}): batch epoch {b.epoch} "
                            f"seq {b.seq} of {len(b.readings)} readings deferred",
                            "rate", r.gateway, defer=True)
        return r

    def _commit(self, group: list[aiomqtt.Message]) -> None:
        """Store a group; raises only if the database itself fails (nothing is acked then)."""
        states = [m for m in group if m.topic.value.endswith("/" + topics.STATE)]
        for m in states:
            self._epoch_end(m)
        group = [m for m in group if m not in states]
        self.counters.messages += len(group)
        self.last_message_ms = self._now_ms()
        self._record([self._intake(m) for m in group])

    def _record(self, received: list[Received]) -> None:
        """Store what the intake made of a group and count each outcome."""
        outcomes = self.store.record_each(received)
        self.counters.commits += 1
        self._count(received, outcomes)

    def _count(self, received: list[Received], outcomes: list[Outcome]) -> None:
        for r, outcome in zip(received, outcomes, strict=True):
            if r.batch is not None and outcome.status in (STORED, DUPLICATE):
                self.marks.mark(r.batch.gateway, r.batch.epoch)  # its receipt is due
            if outcome.status == DEFERRED:
                self.counters.deferred += 1
            elif outcome.status == STORED:
                self.counters.batches += 1
                self.counters.readings += len(r.batch.readings) if r.batch is not None else 0
            elif outcome.status == DUPLICATE:
                self.counters.duplicates += 1
            elif outcome.status == SCHEMA and r.schema is not None:
                self.counters.schemas += 1
                self._arrived.add((r.schema.gateway, r.schema.hash))
            elif outcome.status == PARKED and r.missing is not None and r.gateway is not None:
                self.counters.parked += 1
                self._wanted.add((r.gateway, r.missing))
            else:
                self.counters.rejected += 1
                self.rejections.reject(outcome.reason or "undecodable",
                                       f"topic {quote(r.topic)} ({len(r.payload)} bytes): "
                                       f"{outcome.error}")

    def _schema(self, gateway: str, digest: bytes) -> StreamSchema | None:
        """A gateway's schema: kept in memory, else from the database (any worker's)."""
        schema = self.book.lookup(gateway, digest)
        if schema is None:
            rows = self.store.query(parking.SELECT_SCHEMA, (gateway, digest.hex()))
            if rows:
                schema = parse_schema(parking.blob(rows[0][0]), self.book.limits)
                self.book.put(schema)
        return schema

    def _unpark(self) -> None:
        """Store the parked batches whose schema has come, oldest first, a group at a time."""
        arrived, self._arrived = self._arrived, set()
        for gateway, digest in sorted(arrived):
            self._wanted.discard((gateway, digest))
            while rows := self.store.query(parking.SELECT_PARKED,
                                           (gateway, digest.hex(), MAX_GROUP)):
                received = [decode_message(str(topic), parking.blob(payload), self.prefix,
                                           self.limits, schemas=self._schema)
                            for _id, topic, payload in rows]
                outcomes = self.store.record_each(received, unpark=[int(r[0]) for r in rows])
                self.counters.unparked += len(rows)
                self.counters.commits += 1
                self._count(received, outcomes)
                if any(o.status == PARKED for o in outcomes):
                    break  # cannot happen with the schema here; never loop on it
            log.info("ingest: schema %s of %s arrived; its parked batches were decoded",
                     digest.hex(), gateway)

    async def _request_schemas(self, client: aiomqtt.Client) -> None:
        """Ask gateways for the schemas parked batches wait for, one request per gateway every
        ``SCHEMA_REQUEST_S`` at most (made-up hashes cost one publish per interval)."""
        now = self.clock.monotonic()
        wanted, self._wanted = self._wanted, set()
        for gateway, digest in sorted(wanted):
            last = self._asked.get(gateway)
            if last is not None and now - last < SCHEMA_REQUEST_S:
                continue
            if len(self._asked) > 10_000:
                self._asked.clear()
            self._asked[gateway] = now
            await client.publish(topics.schema_request_topic(self.prefix, gateway),
                                 digest.hex().encode(), qos=1)
            self.counters.schema_requests += 1

    def status(self) -> dict[str, Any]:
        """The consumer's state: connection, last message, counters, tasks."""
        c = self.counters
        last = self.last_message_ms
        return {"connected": self.subscribed.is_set(), "connects": c.connects,
                "last_connect_error": self.last_error, "last_message_ms": last,
                "last_message_age_s": None if last is None
                else round(max(0, self._now_ms() - last) / 1000, 3),
                "received": c.messages, "stored": c.batches, "readings": c.readings,
                "duplicates": c.duplicates, "rejected": c.rejected,
                "deferred": c.deferred, "released": c.released, "schemas": c.schemas,
                "parked": c.parked, "unparked": c.unparked,
                "schema_requests": c.schema_requests, "receipts": c.receipts,
                "rejected_by_reason": dict(sorted(c.rejected_by_reason.items())),
                "commits": c.commits, "tasks": self.supervisor.snapshot()}

    def health(self) -> dict[str, Any]:
        """What ``GET /v1/health`` answers: ``ok`` only while subscribed with every task running."""
        return {"ok": self.subscribed.is_set() and self.supervisor.all_running(),
                "client_id": self.client_id, "subscription": self.filter, **self.status()}

    async def http(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        """The health endpoint's handler (the routes let only ``GET /v1/health`` through)."""
        return 200, self.health()

    def status_line(self) -> str:
        """``status()`` as one log line."""
        s = self.status()
        age = s["last_message_age_s"]
        restarts = {name: t["restarts"] for name, t in s["tasks"].items() if t["restarts"]}
        failing = {name: t["state"] for name, t in s["tasks"].items() if t["state"] != RUNNING}
        return (f"ingest status: {'connected' if s['connected'] else 'NOT connected'}, last "
                f"message {'never' if age is None else f'{age:.1f} s ago'}; received "
                f"{s['received']}, stored {s['stored']} batches ({s['readings']} readings), "
                f"{s['duplicates']} duplicates, rejected {s['rejected']} "
                f"{s['rejected_by_reason'] or ''}; {s['commits']} commits, {s['connects']} "
                f"connects; task restarts {restarts or 'none'}"
                + (f", tasks not running {failing}" if failing else ""))

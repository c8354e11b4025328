"""The MQTT uplink: one connection at a time; takes batches from the store, publishes, acks.

A thin I/O shell around aiomqtt 2.5 (paho-mqtt 2.2). aiomqtt does not reconnect, so ``run`` loops:
a FRESH client per connection (a reused one replays stale in-flight publishes and keeps its first
will), retained online state on connect, then the batch store drained oldest-first at QoS 1, one
batch in flight; a batch leaves the store only after its PUBACK. Delivery is at least once: a
batch whose PUBACK was lost is sent again after reconnecting, and the consumer drops duplicates
by (gateway, epoch, seq).

The store (``edge_agent.runtime.store``: the durable spool, or the memory store) is given at
construction and shared with the agent, which appends to it; the uplink never receives a batch,
it waits on the store's readiness, takes, publishes and acknowledges or releases. Batches stored
before a connection are its backlog: paced with a ``RatePacer`` so a replay does not starve live
data or the link. State, health and other JSON documents are published directly.

Version 3 batches need their schema (``edge_agent.runtime.schemas``): it is published retained on
every connection before the backlog, and again when a consumer asks on the schema-request topic
(by hash, for the current or a kept earlier epoch; at most once per ``SCHEMA_RESEND_S`` each,
so requests cannot make the gateway flood its link).

MQTT 5 is used so the PUBACK reason code can be checked (aiomqtt ignores it): a code >= 0x80
(e.g. 0x87 not authorised, MQTT 5.0 section 3.4.2.1) is an UplinkError, the batch stays first in
the store and the connection is retried with backoff, so a refused batch is never lost.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.codecs.schema import HASH_BYTES
from edge_agent.protocol import topics
from edge_agent.protocol.backoff import Backoff
from edge_agent.protocol.broker import MqttConfig, client_options, no_delay
from edge_agent.protocol.clock import Clock
from edge_agent.protocol.errors import UplinkError
from edge_agent.runtime.reconnect import probe, reconnect_backoff
from edge_agent.runtime.schemas import SchemaShelf
from edge_agent.runtime.spool_core import RatePacer
from edge_agent.runtime.store import BatchStore

log = logging.getLogger(__name__)

MessageHandler = Callable[[aiomqtt.Message], Awaitable[None]]

SCHEMA_RESEND_S = 10.0      # a schema is sent again on request at most this often
MAX_SCHEMA_REQUEST = 64     # bytes of a schema request read at most (a hash in hex)


@dataclass
class UplinkCounters:
    """What the uplink has done since start (reported in health, with the store's memory drops)."""

    connects: int = 0
    disconnects: int = 0
    published_batches: int = 0
    published_bytes: int = 0
    rejected_publishes: int = 0
    health_skipped: int = 0
    handler_errors: int = 0
    schemas_sent: int = 0
    schema_requests: int = 0
    schema_requests_refused: int = 0   # malformed, unknown hash, or asked again too soon
    last_error: str | None = None


_LAST_MID: contextvars.ContextVar[int | None] = contextvars.ContextVar("_LAST_MID", default=None)


class _AckCheckingClient(aiomqtt.Client):
    """An aiomqtt.Client that keeps the PUBACK reason codes aiomqtt drops.

    aiomqtt 2.5's ``publish`` does not return the message id, so the paho ``publish`` it calls
    is wrapped to leave the id in a context variable of the calling task.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.puback_reasons: dict[int, ReasonCode] = {}
        paho_publish = self._client.publish

        def publish_noting_mid(*a: Any, **kw: Any) -> Any:
            info = paho_publish(*a, **kw)
            _LAST_MID.set(info.mid)
            return info

        self._client.publish = publish_noting_mid  # type: ignore[method-assign]

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: ReasonCode,
                    properties: Any) -> None:
        self.puback_reasons[mid] = reason_code
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_acked(self, topic: str, payload: bytes, *, qos: int,
                            retain: bool = False) -> None:
        """Publish and raise UplinkError if the broker's PUBACK carries a failure code."""
        _LAST_MID.set(None)
        await self.publish(topic, payload, qos=qos, retain=retain)
        mid = _LAST_MID.get()
        reason = self.puback_reasons.pop(mid, None) if mid is not None else None
        if reason is not None and reason.is_failure:
            raise UplinkError(f"broker refused the publish to {topic}: "
                              f"PUBACK reason 0x{reason.value:02x} {reason}")


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True, default=str).encode()


async def until_first_fails(*coros: Coroutine[Any, Any, None]) -> None:
    """Run the coroutines together; when the first one ends, cancel the rest and raise its error."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
        raise UplinkError("an uplink connection task ended without an error")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Uplink:
    """The gateway's MQTT connection: state, data batches, health, JSON publishes, subscriptions."""

    def __init__(self, mqtt: MqttConfig, gateway: str, epoch: int, version: str, clock: Clock,
                 *, store: BatchStore, pacer: RatePacer | None = None,
                 backoff: Backoff | None = None, timeout_s: float = 10.0,
                 goodbye_timeout_s: float = 2.0, schemas: SchemaShelf | None = None) -> None:
        self.mqtt = mqtt
        self.gateway = topics.check_level("gateway id", gateway)
        self.prefix = topics.check_prefix(mqtt.topic_prefix)
        self.epoch = epoch
        self.version = version
        self.clock = clock
        self.backoff = backoff or reconnect_backoff()
        self.timeout_s = timeout_s
        self.goodbye_timeout_s = goodbye_timeout_s
        self.counters = UplinkCounters()
        self.connected = asyncio.Event()
        self.store = store
        self._pacer = pacer
        self._client: _AckCheckingClient | None = None
        self._failing = False
        self._handlers: dict[str, MessageHandler] = {}
        self._state_topic = topics.state_topic(self.prefix, gateway)
        self._data_topic = topics.data_topic(self.prefix, gateway)
        self._schema_topic = topics.schema_topic(self.prefix, gateway)
        self.schemas = schemas
        self._schema_sent_at: dict[bytes, float] = {}
        self.state_extra: dict[str, Any] = {}  # more for the state document (prev_epoch, ...)
        if schemas is not None:
            self._handlers[topics.schema_request_topic(self.prefix, gateway)] = \
                self._on_schema_request

    # ------------------------------------------------------------------ public API

    @property
    def pending(self) -> int:
        """Batches waiting in the store (the in-flight one included)."""
        return self.store.pending

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every stored batch is acknowledged; False if ``timeout_s`` passed first."""
        try:
            await asyncio.wait_for(self.store.readiness.empty.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def stats_dict(self) -> dict[str, object]:
        """Counters, connection state and store depth, for the health document."""
        return {**dataclasses.asdict(self.counters),
                "dropped_batches": self.store.dropped_in_memory,
                "connected": self.connected.is_set(), "pending": self.pending}

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        """Call ``handler`` for messages matching the filter (subscribed on every connect)."""
        self._handlers[topic_filter] = handler

    async def publish_json(self, suffix: str, doc: dict[str, Any], *, retain: bool = False,
                           qos: int = 1) -> None:
        """Publish ``doc`` as JSON on {prefix}/{gateway}/{suffix}; UplinkError if offline."""
        for level in suffix.split("/"):
            topics.check_level(f"topic suffix {suffix!r}: level", level)
        topic = f"{self.prefix}/{self.gateway}/{suffix}"
        client = self._client
        if client is None or not self.connected.is_set():
            raise UplinkError(f"cannot publish to {topic}: not connected to {self.mqtt.url}")
        try:
            await client.publish_acked(topic, _json(doc), qos=qos, retain=retain)
        except aiomqtt.MqttError as exc:
            raise UplinkError(f"publish to {topic} failed: {exc}") from exc

    async def publish_health(self, doc: dict[str, Any]) -> None:
        """Publish a health document at QoS 0; skipped (and counted) when offline."""
        if not self.connected.is_set():
            self.counters.health_skipped += 1
            return
        try:
            await self.publish_json(topics.HEALTH, doc, qos=0)
        except UplinkError as exc:
            self.counters.health_skipped += 1
            log.debug("health not published: %s", exc)

    async def run(self) -> None:
        """Connect, publish, reconnect with backoff, forever; cancel to stop (publishes offline)."""
        while True:
            try:
                await probe(self.mqtt)  # fails fast while the broker is away (reconnect.py)
                await self._connection()
            except (aiomqtt.MqttError, UplinkError, OSError, TimeoutError) as exc:
                self._note_failure(exc)
            await self.clock.sleep(self.backoff.next_delay())

    # ------------------------------------------------------------------ internals

    def _state_doc(self, status: str, reason: str | None = None) -> bytes:
        doc: dict[str, Any] = {"status": status, "version": self.version, "epoch": self.epoch,
                               "ts": int(self.clock.now() * 1000), **self.state_extra}
        if reason:
            doc["reason"] = reason
        return _json(doc)

    def _note_failure(self, exc: BaseException) -> None:
        self.counters.last_error = f"{type(exc).__name__}: {exc}"
        if self._failing:
            log.debug("uplink to %s still failing: %s", self.mqtt.url, exc)
        else:  # once per outage, not once per retry
            self._failing = True
            log.warning("uplink to %s failed: %s (retrying with backoff, logged once)",
                        self.mqtt.url, self.counters.last_error)

    async def _connection(self) -> None:
        will = aiomqtt.Will(self._state_topic, self._state_doc("offline", "connection lost"),
                            qos=1, retain=True)
        client = _AckCheckingClient(
            **client_options(self.mqtt), will=will, timeout=self.timeout_s,
            identifier=self.mqtt.client_id or f"edge-agent-{self.gateway}")
        async with client:
            no_delay(client)  # QoS 1 acks and publishes without Nagle's 40 ms stalls
            self._client = client
            self.counters.connects += 1
            self.store.mark_backlog()
            self.connected.set()
            try:
                await client.publish_acked(self._state_topic, self._state_doc("online"),
                                           qos=1, retain=True)
                if self.schemas is not None:  # before the backlog: its batches need it
                    await self._send_schema(client, self.schemas.current.raw, retain=True)
                for topic_filter in self._handlers:
                    await client.subscribe(topic_filter, qos=1)
                self.backoff.reset()
                if self._failing:
                    self._failing = False
                    log.info("uplink to %s connected again", self.mqtt.url)
                await until_first_fails(self._watch(client), self._drain(client))
            except asyncio.CancelledError:
                await self._goodbye(client)
                raise
            finally:
                self._client = None
                self.connected.clear()
                self.counters.disconnects += 1

    async def _goodbye(self, client: _AckCheckingClient) -> None:
        # A clean DISCONNECT suppresses the will (MQTT 5.0 3.14.2.1), so say offline ourselves.
        try:
            await asyncio.wait_for(
                client.publish_acked(self._state_topic, self._state_doc("offline", "shutdown"),
                                     qos=1, retain=True), self.goodbye_timeout_s)
        except (aiomqtt.MqttError, UplinkError, TimeoutError) as exc:
            log.info("offline state not published on shutdown: %s", exc)

    async def _send_schema(self, client: _AckCheckingClient, raw: bytes, *,
                           retain: bool) -> None:
        await client.publish_acked(self._schema_topic, raw, qos=1, retain=retain)
        self.counters.schemas_sent += 1

    async def _on_schema_request(self, message: aiomqtt.Message) -> None:
        """A consumer asks for a schema by its hash in hex (empty: the current one)."""
        self.counters.schema_requests += 1
        payload = message.payload
        problem = None
        digest = b""
        if not isinstance(payload, bytes | bytearray) or len(payload) > MAX_SCHEMA_REQUEST:
            problem = "not a short byte string"
        else:
            text = bytes(payload).strip()
            try:
                digest = bytes.fromhex(text.decode("ascii")) if text else b""
            except (UnicodeDecodeError, ValueError):
                problem = "not a hash in hex"
        shelf, client = self.schemas, self._client
        if shelf is None or client is None:
            return
        digest = digest or shelf.current.hash
        raw = None if problem or len(digest) != HASH_BYTES else shelf.find(digest)
        now = self.clock.monotonic()
        last = self._schema_sent_at.get(digest)
        if raw is None or (last is not None and now - last < SCHEMA_RESEND_S):
            self.counters.schema_requests_refused += 1
            log.debug("schema request refused: %s", problem or (
                "unknown schema" if raw is None else "sent moments ago"))
            return
        if len(self._schema_sent_at) > 64:
            self._schema_sent_at.clear()
        self._schema_sent_at[digest] = now
        await self._send_schema(client, raw, retain=raw == shelf.current.raw)

    async def _watch(self, client: _AckCheckingClient) -> None:
        # The message iterator raises MqttError when the connection drops: this is the
        # watchdog that tears the connection down, and it delivers subscribed messages.
        async for message in client.messages:
            for topic_filter, handler in self._handlers.items():
                if message.topic.matches(topic_filter):
                    try:
                        await handler(message)
                    except Exception:  # a handler's bug must not drop the connection
                        self.counters.handler_errors += 1
                        log.exception("handler for %s failed on %s", topic_filter,
                                      message.topic)
        raise UplinkError("message stream ended")

    async def _drain(self, client: _AckCheckingClient) -> None:
        store = self.store
        while True:
            await store.readiness.waiting.wait()
            item = await store.take()
            if item is None:  # the store cleared ``waiting``: sleep until the next batch
                continue
            try:
                if item.backlog and self._pacer is not None:
                    delay = self._pacer.delay(self.clock.monotonic())
                    if delay > 0:
                        await self.clock.sleep(delay)
                await client.publish_acked(self._data_topic, item.payload, qos=1)
            except UplinkError:
                store.release(item)
                self.counters.rejected_publishes += 1
                raise
            except BaseException:
                store.release(item)
                raise
            if item.backlog and self._pacer is not None:
                self._pacer.spend(self.clock.monotonic(), len(item.payload))
            await store.ack(item)
            self.counters.published_batches += 1
            self.counters.published_bytes += len(item.payload)

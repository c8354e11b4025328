"""``edge-fleet serve``: the fleet service's I/O shell.

Connects to the broker (reconnecting with backoff, a fresh client each time), consumes every
gateway's reported/health/state into the registry, drives rollouts through the lease-holding
``RolloutDriver`` (publishing desired bundles retained at QoS 1 on ``{prefix}/{gw}/desired/
{kind}``), and serves the enrolment endpoint. Any number of instances can share one database
and one broker: each records every report it receives (idempotent updates) and only the lease
holder of a rollout publishes its offers. With ``share_group`` the instances subscribe through
``$share/GROUP/`` and the broker hands each report or health message to one of them, so the
intake load is split; the lease holder reads every report back from the database. Messages
already queued are taken in together, in order, in one transaction.

Nothing stops silently. Every message is taken in under explicit limits
(``edge_agent.fleet.intake``); one the intake or the database refuses is counted per reason and
logged without flooding (``Rejections``), and the consumer goes on. The loops (MQTT consumer,
rollout tick, status) run under a ``Supervisor``: a loop that dies is logged, restarted with
back-off and shown in ``GET /v1/health``; one that cannot be restarted ends ``run`` with
``TaskFailedError`` (the process exits non-zero).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import ssl
import uuid
from typing import Any

import aiomqtt

from edge_agent.fleet import actions as ops
from edge_agent.fleet.cmdstore import RESULT_LIMITS, record_result
from edge_agent.fleet.httpd import HttpLimits, HttpStats, serve_http
from edge_agent.fleet.intake import (
    HEALTH_LIMITS,
    REPORT_LIMITS,
    STATE_LIMITS,
    IntakeError,
    JsonLimits,
    parse_state,
    quote,
    read_json,
)
from edge_agent.fleet.probe import IntakeProbe
from edge_agent.fleet.registry import Registry
from edge_agent.fleet.rollout_driver import RolloutDriver
from edge_agent.fleet.supervisor import Supervisor, TaskFailedError
from edge_agent.protocol import topics
from edge_agent.protocol.backoff import Backoff
from edge_agent.protocol.broker import client_options, parse_broker_url
from edge_agent.protocol.bundle import bundle_kind
from edge_agent.protocol.clock import Clock, SystemClock
from edge_agent.protocol.errors import ConfigError, UplinkError
from edge_agent.protocol.ids import check_broker_user, is_reserved
from edge_agent.protocol.rejections import Rejections

log = logging.getLogger(__name__)

# What the service subscribes to, and the limits each kind is read under.
INTAKE: dict[str, JsonLimits] = {topics.REPORTED: REPORT_LIMITS, topics.HEALTH: HEALTH_LIMITS,
                                 topics.STATE: STATE_LIMITS, topics.CMD_RESULT: RESULT_LIMITS}
# The endpoint answers other paths and methods 404/405 itself, before reading any body.
HTTP_ROUTES = {"/v1/health": ("GET",), "/v1/enroll": ("POST",)}
MAX_TOKEN = 256  # issued tokens have 32 characters
STATUS_S = 10.0  # how often the status loop looks for rejection counts to summarise
SHARE_GROUP = re.compile(r"[A-Za-z0-9_-]{1,64}")  # no '/', '+', '#' in a share name
BATCH_MAX = 500  # messages taken in per transaction at most


class ConsumerStats:
    """The MQTT consumer's state, as health reports it."""

    def __init__(self) -> None:
        self.connects = 0
        self.last_connect_ms: int | None = None
        self.last_disconnect_ms: int | None = None
        self.last_error: str | None = None
        self.last_message_ms: int | None = None
        self.recorded: dict[str, int] = {kind: 0 for kind in INTAKE}


class FleetService:
    """One instance of the fleet service."""

    def __init__(self, registry: Registry, broker_url: str, *, username: str | None = None,
                 password: str | None = None, prefix: str = "edge", tick_s: float = 0.5,
                 lease_s: float = 10.0, http_host: str | None = None, http_port: int = 0,
                 public_broker_url: str | None = None, clock: Clock | None = None,
                 owner: str | None = None, publish_concurrency: int = 200,
                 supervisor: Supervisor | None = None, rejection_summary_s: float = 60.0,
                 http_tls: ssl.SSLContext | None = None, http_insecure: bool = False,
                 http_limits: HttpLimits | None = None, share_group: str | None = None) -> None:
        self.registry = registry
        self.mqtt = parse_broker_url(broker_url, username=username, password=password,
                                     topic_prefix=prefix)
        self.prefix = topics.check_prefix(prefix)
        self.tick_s = tick_s
        self.clock = clock or SystemClock()
        self.owner = owner or f"fleet-{uuid.uuid4().hex[:8]}"
        # The client id is a reserved name (fleet-*), which no gateway id can be, and a gateway
        # always connects as its own id (docs/broker.md): no gateway can throw this one off.
        try:
            self.client_id = check_broker_user(
                self.owner if is_reserved(self.owner) else f"fleet-{self.owner}")
        except ValueError as e:
            raise ConfigError(f"instance name {self.owner!r}: {e}") from None
        self.driver = RolloutDriver(registry, self._publish_desired, owner=self.owner,
                                    lease_s=lease_s, now_ms=self._now_ms)
        if share_group is not None and not SHARE_GROUP.fullmatch(share_group):
            raise ConfigError(f"share group {share_group!r}: expected 1-64 of a-z, A-Z, 0-9, "
                              "'-' and '_'")
        self.share_group = share_group
        self.probe = IntakeProbe(registry, self.prefix, self.client_id, int(lease_s * 1000))
        if http_host is not None and http_tls is None and not http_insecure:
            # enrolment hands out broker passwords: plain HTTP only when asked for by name
            raise ConfigError("the enrolment endpoint needs TLS (a certificate and key), or "
                              "an explicit insecure plain-HTTP choice")
        self.http_host = http_host
        self.http_port = http_port
        self.http_tls = http_tls
        self.http_limits = http_limits or HttpLimits()
        self.http_stats = HttpStats()
        self.http_scheme = "https" if http_tls is not None else "http"
        self.public_broker_url = public_broker_url or broker_url
        self.publish_concurrency = publish_concurrency
        self.connected = asyncio.Event()
        self.http_ready = asyncio.Event()
        self.messages = 0
        self.reports = 0
        self.enrolled = 0
        self.stats = ConsumerStats()
        self.rejections = Rejections("fleet intake", log, summary_s=rejection_summary_s,
                                     clock=self.clock)
        # The enrolment endpoint's refusals: counted in http_stats, logged through this.
        self.http_rejections = Rejections("enrolment endpoint", log,
                                          summary_s=rejection_summary_s, clock=self.clock)
        self.supervisor = supervisor or Supervisor(clock=self.clock)
        self._client: aiomqtt.Client | None = None

    def _now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    # ------------------------------------------------------------------ MQTT

    async def _publish_desired(self, offers: list[tuple[str, bytes]]) -> None:
        """Publish offers retained at QoS 1, many in flight at once; raises if any failed."""
        if (client := self._client) is None:
            raise UplinkError("not connected to the broker")
        sem = asyncio.Semaphore(self.publish_concurrency)

        async def one(gw: str, blob: bytes) -> None:
            async with sem:
                await client.publish(topics.desired_topic(self.prefix, gw, bundle_kind(blob)),
                                     blob, qos=1, retain=True)

        await asyncio.gather(*(one(gw, blob) for gw, blob in offers))

    def _take(self, msg: aiomqtt.Message) -> tuple[str, str] | str:
        """Take in one message: its kind if recorded, else (reason, text) of its refusal.

        What the database raises propagates (the caller decides what is lost with it).
        """
        topic = str(msg.topic)
        self.messages += 1
        now = self._now_ms()
        self.stats.last_message_ms = now
        if topic == self.probe.topic:
            self.probe.received(msg.payload, now)
            return ""
        kind, gateway, arg = self._kind(topic)
        if kind == "topic":
            return ("topic:not_a_gateway_topic", f"topic {quote(topic)}: not a gateway's "
                    "reported, health, state or cmd-result topic (or its gateway id breaks the "
                    "id rule)")
        try:
            known = self._record(gateway, kind, msg.payload, now, arg)
        except IntakeError as exc:
            return (f"{kind}:{exc.code}", f"topic {quote(topic)}: {exc}")
        if not known:
            return (f"{kind}:unknown_gateway", f"topic {quote(topic)}: gateway {gateway!r} "
                    "is not enrolled")
        return kind

    def _kind(self, topic: str) -> tuple[str, str, str]:
        ref = topics.parse_topic(topic, self.prefix)
        if ref is None or ref.kind not in INTAKE:
            return "topic", "", ""
        return ref.kind, ref.gateway, ref.arg

    def _settle(self, outcome: tuple[str, str] | str) -> None:
        if isinstance(outcome, tuple):
            self.rejections.reject(*outcome)
        elif outcome:  # "" is the intake probe
            self.stats.recorded[outcome] += 1

    async def _handle(self, msg: aiomqtt.Message) -> None:
        """Take in one message; whatever is wrong with it is counted and logged, never raised."""
        try:
            outcome = self._take(msg)
        except Exception as exc:  # the database refused this message: it alone is lost
            topic = str(msg.topic)
            self.rejections.reject(f"{self._kind(topic)[0]}:database", f"topic {quote(topic)}: "
                                   f"{type(exc).__name__}: {quote(str(exc), 300)}")
            return
        self._settle(outcome)

    async def _handle_batch(self, msgs: list[aiomqtt.Message]) -> None:
        """Take in the messages waiting, in their order, in one transaction (one commit).

        If the database refuses any, nothing of the batch is kept and each message is taken
        again on its own, so only the one it refuses is lost, as without batching.
        """
        if len(msgs) == 1:
            await self._handle(msgs[0])
            return
        counters = (self.messages, self.reports, dict(self.stats.recorded))
        try:
            with self.registry.transaction():
                outcomes = [self._take(m) for m in msgs]
        except Exception:
            self.messages, self.reports, self.stats.recorded = counters
            for m in msgs:
                await self._handle(m)
            return
        for outcome in outcomes:
            self._settle(outcome)

    def _record(self, gateway: str, kind: str, payload: object, now: int, arg: str = "") -> bool:
        """Parse one message under its kind's limits and store it; False if not enrolled."""
        doc = read_json(payload, INTAKE[kind])
        if kind == topics.CMD_RESULT:
            return record_result(self.registry, gateway, arg, doc, now)
        if kind == topics.REPORTED:
            self.reports += 1
            return self.registry.record_report(gateway, doc, now, arg)
        if kind == topics.HEALTH:
            return self.registry.record_health(gateway, doc, now)
        return self.registry.record_state(gateway, parse_state(doc), now, doc.get("version"))

    async def _connection(self, backoff: Backoff) -> None:
        opts = client_options(self.mqtt)
        async with aiomqtt.Client(identifier=self.client_id, **opts) as client:
            for kind in INTAKE:
                # With a share group, the broker hands each message to one instance of the
                # group: N instances each take 1/N of the fleet's reports and health.
                sub = topics.subscription(self.prefix, kind)
                if self.share_group is not None:
                    sub = f"$share/{self.share_group}/{sub}"
                await client.subscribe(sub, qos=1)
            await client.subscribe(self.probe.topic, qos=1)  # never shared: it comes back here
            # Up to publish_concurrency offers wait for their PUBACKs by design: not a warning.
            client.pending_calls_threshold = self.publish_concurrency + 10
            self._client = client
            self.connected.set()
            self.stats.connects += 1
            self.stats.last_connect_ms = self._now_ms()
            backoff.reset()
            log.info("fleet %s connected to %s", self.owner, self.mqtt.url)
            try:
                async for msg in client.messages:
                    batch = [msg]
                    # Whatever else is already queued goes in the same transaction: a busy
                    # fleet costs one commit per batch, not one per message.
                    while len(client.messages) and len(batch) < BATCH_MAX:
                        batch.append(await anext(client.messages))
                    await self._handle_batch(batch)
            finally:
                self._client = None
                self.connected.clear()
                self.stats.last_disconnect_ms = self._now_ms()

    async def _mqtt_loop(self) -> None:
        """Connect, consume, reconnect with back-off; a broker error is not a crash."""
        backoff = Backoff(base_s=0.2, cap_s=10.0, rng=random.Random(self.owner))
        while True:
            try:
                await self._connection(backoff)
            except (aiomqtt.MqttError, OSError) as exc:
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("fleet broker connection: %s", exc)
            await self.clock.sleep(backoff.next_delay())

    async def _status_loop(self) -> None:
        """Summarise rejection counts now and then, also when no message comes to trigger it."""
        while True:
            await self.clock.sleep(STATUS_S)
            self.rejections.maybe_summarise()
            self.http_rejections.maybe_summarise()

    async def _tick_loop(self) -> None:
        while True:
            await self.connected.wait()
            try:
                now, client = self._now_ms(), self._client
                if client is not None and self.probe.due(now):
                    await client.publish(self.probe.topic, self.probe.payload(now), qos=1)
                await self.driver.step(now, self.probe.judged_ms(now))
            except (aiomqtt.MqttError, UplinkError) as exc:
                # The offers stay in the persisted outbox and are published on a later tick.
                log.warning("publishing offers failed: %s", exc)
            await self.clock.sleep(self.tick_s)

    # ------------------------------------------------------------------ HTTP enrolment

    async def _http(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        if path == "/v1/health" and method == "GET":
            return 200, self.health()
        if path != "/v1/enroll":
            return 404, {"error": f"no endpoint {path}"}
        if method != "POST":
            return 405, {"error": "POST a JSON body {\"token\": T}"}
        token = body.get("token") if isinstance(body, dict) and len(body) == 1 else None
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN:
            return 400, {"error": "body must be {\"token\": \"...\"} and nothing else"}
        try:
            answer = ops.enroll(self.registry, token, broker_url=self.public_broker_url,
                                prefix=self.prefix, now_ms=self._now_ms())
        except ConfigError as exc:
            return 403, {"error": str(exc)}
        self.enrolled += 1
        log.info("enrolled gateway %s (site %s)", answer["gateway_id"], answer["site"])
        return 200, answer

    # ------------------------------------------------------------------ health and run

    def health(self) -> dict[str, Any]:
        """What ``GET /v1/health`` answers: the consumer's and every task's state, truthfully.

        ``ok`` is true only while connected with every task running; the endpoint itself
        answers 200 whenever it answers (enrolment works without the broker).
        """
        connected = self.connected.is_set()
        st = self.stats
        last = st.last_message_ms
        return {
            "ok": connected and self.supervisor.all_running(),
            "owner": self.owner,
            "connected": connected,
            "consumer": {
                "connected": connected, "connects": st.connects,
                "last_connect_ms": st.last_connect_ms,
                "last_disconnect_ms": st.last_disconnect_ms,
                "last_connect_error": st.last_error, "messages": self.messages,
                "last_message_ms": last,
                "last_message_age_s": None if last is None
                else round(max(0, self._now_ms() - last) / 1000, 3),
                "recorded": dict(st.recorded),
                "rejected": dict(sorted(self.rejections.counts.items())),
                "rejected_total": self.rejections.total,
            },
            "tasks": self.supervisor.snapshot(),
            # The enrolment endpoint's answers, refusals by reason and connections cut.
            "http": None if self.http_host is None else self.http_stats.snapshot(),
            "rollouts_set_aside": dict(self.driver.broken),
            "enrolled": self.enrolled,
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; leases are released on the way out.

        TaskFailedError if a supervised task could not be restarted (the caller exits non-zero).
        """
        server = None
        if self.http_host is not None:
            server = await serve_http(self.http_host, self.http_port, self._http,
                                      tls=self.http_tls, limits=self.http_limits,
                                      stats=self.http_stats, routes=HTTP_ROUTES,
                                      rejections=self.http_rejections)
            self.http_port = server.sockets[0].getsockname()[1]
            log.info("enrolment endpoint on %s://%s:%d/v1/enroll", self.http_scheme,
                     self.http_host, self.http_port)
            if self.http_tls is None:
                log.warning("enrolment endpoint is PLAIN HTTP (--insecure-http): enrolment "
                            "tokens and the broker passwords handed out cross the network in "
                            "clear; use it only on loopback or behind a TLS-terminating proxy")
        self.http_ready.set()
        sup = self.supervisor
        sup.start("fleet-mqtt", self._mqtt_loop)
        sup.start("fleet-tick", self._tick_loop)
        sup.start("fleet-status", self._status_loop)
        waits = [asyncio.create_task(stop.wait(), name="fleet-stop"),
                 asyncio.create_task(sup.fatal.wait(), name="fleet-fatal")]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in waits:
                t.cancel()
            await sup.stop()
            if server is not None:
                server.close()
                await server.wait_closed()
            try:
                self.driver.release_all()
            except Exception:  # the database may be what failed; the leases then expire
                log.exception("releasing rollout leases failed (they expire by themselves)")
            self.rejections.maybe_summarise(force=True)
        if sup.failure is not None and not stop.is_set():
            raise TaskFailedError(sup.failure)

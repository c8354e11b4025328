"""``edge-fleet serve``: the fleet service's I/O shell.

Connects to the broker (reconnecting with backoff, a fresh client each time), consumes every
gateway's reported/health/state into the registry, drives rollouts through the lease-holding
``RolloutDriver`` (publishing desired bundles retained at QoS 1 on ``{prefix}/{gw}/desired/
{kind}``), and serves the enrolment endpoint. Any number of instances can share one database
and one broker: each records every report (idempotent upserts) and only the lease holder of a
rollout publishes its offers.

Nothing stops silently. Every message is taken in under explicit limits before the registry
sees a value (``edge_agent.fleet.intake``); a message that is refused, or that the database
refuses, is counted per reason and logged without flooding (``Rejections``), and the
consumer goes on with the next one, so one gateway's retained message cannot stop the
fleet's intake nor kill a restarted service on subscribe. The loops (MQTT consumer, rollout
tick, status) run under a ``Supervisor``: a loop that dies is logged with its traceback,
restarted with back-off and shown in ``GET /v1/health`` at once; one that cannot be restarted
ends ``run`` with ``TaskFailedError`` (the process exits non-zero).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import uuid
from typing import Any

import aiomqtt

from edge_agent.fleet import actions as ops
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
                                 topics.STATE: STATE_LIMITS}
# The endpoint answers other paths and methods 404/405 itself, before reading any body.
HTTP_ROUTES = {"/v1/health": ("GET",), "/v1/enroll": ("POST",)}
MAX_TOKEN = 256  # issued tokens have 32 characters
STATUS_S = 10.0  # how often the status loop looks for rejection counts to summarise


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
                 http_limits: HttpLimits | None = None) -> None:
        self.registry = registry
        self.mqtt = parse_broker_url(broker_url, username=username, password=password,
                                     topic_prefix=prefix)
        self.prefix = topics.check_prefix(prefix)
        self.tick_s = tick_s
        self.clock = clock or SystemClock()
        self.owner = owner or f"fleet-{uuid.uuid4().hex[:8]}"
        # The MQTT client id is a reserved name (fleet-*), which no gateway id can be: client
        # ids are global across the broker's listeners, and a gateway always connects as its
        # own id (docs/broker.md), so no gateway can throw this instance off.
        try:
            self.client_id = check_broker_user(
                self.owner if is_reserved(self.owner) else f"fleet-{self.owner}")
        except ValueError as e:
            raise ConfigError(f"instance name {self.owner!r}: {e}") from None
        self.driver = RolloutDriver(registry, self._publish_desired, owner=self.owner,
                                    lease_s=lease_s)
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
        client = self._client
        if client is None:
            raise UplinkError("not connected to the broker")
        sem = asyncio.Semaphore(self.publish_concurrency)

        async def one(gw: str, blob: bytes) -> None:
            async with sem:
                await client.publish(topics.desired_topic(self.prefix, gw, bundle_kind(blob)),
                                     blob, qos=1, retain=True)

        await asyncio.gather(*(one(gw, blob) for gw, blob in offers))

    async def _handle(self, msg: aiomqtt.Message) -> None:
        """Take in one message; whatever is wrong with it is counted and logged, never raised."""
        topic = str(msg.topic)
        self.messages += 1
        now = self._now_ms()
        self.stats.last_message_ms = now
        ref = topics.parse_topic(topic, self.prefix)
        kind = ref.kind if ref is not None and ref.kind in INTAKE else "topic"
        gateway = ref.gateway if ref is not None else ""
        try:
            if kind == "topic":
                raise IntakeError("not_a_gateway_topic", "not a gateway's reported, health or "
                                  "state topic (or its gateway id breaks the id rule)")
            known = self._record(gateway, kind, msg.payload, now)
        except IntakeError as exc:
            self.rejections.reject(f"{kind}:{exc.code}", f"topic {quote(topic)}: {exc}")
            return
        except Exception as exc:  # the database refused this message: it alone is lost
            self.rejections.reject(f"{kind}:database", f"topic {quote(topic)}: "
                                   f"{type(exc).__name__}: {quote(str(exc), 300)}")
            return
        if not known:
            self.rejections.reject(f"{kind}:unknown_gateway", f"topic {quote(topic)}: "
                                   f"gateway {gateway!r} is not enrolled")
            return
        self.stats.recorded[kind] += 1

    def _record(self, gateway: str, kind: str, payload: object, now: int) -> bool:
        """Parse one message under its kind's limits and store it; False if not enrolled."""
        doc = read_json(payload, INTAKE[kind])
        if kind == topics.REPORTED:
            self.reports += 1
            return self.registry.record_report(gateway, doc, now)
        if kind == topics.HEALTH:
            return self.registry.record_health(gateway, doc, now)
        return self.registry.record_state(gateway, parse_state(doc), now)

    async def _connection(self, backoff: Backoff) -> None:
        opts = client_options(self.mqtt)
        async with aiomqtt.Client(identifier=self.client_id, **opts) as client:
            for kind in INTAKE:
                await client.subscribe(topics.subscription(self.prefix, kind), qos=1)
            self._client = client
            self.connected.set()
            self.stats.connects += 1
            self.stats.last_connect_ms = self._now_ms()
            backoff.reset()
            log.info("fleet %s connected to %s", self.owner, self.mqtt.url)
            try:
                async for msg in client.messages:
                    await self._handle(msg)
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
                await self.driver.step(self._now_ms())
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

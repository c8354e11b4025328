"""``edge-fleet serve``: the fleet service's I/O shell.

Connects to the broker (reconnecting with backoff, a fresh client each time), consumes every
gateway's reported/health/state into the registry, drives rollouts through the lease-holding
``RolloutDriver`` (publishing desired bundles retained at QoS 1 on ``{prefix}/{gw}/desired/
{kind}``), and serves the enrolment endpoint. Any number of instances can share one database
and one broker: each records every report (idempotent upserts) and only the lease holder of a
rollout publishes its offers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from typing import Any

import aiomqtt

from edge_agent.fleet import actions as ops
from edge_agent.fleet.httpd import serve_http
from edge_agent.fleet.registry import Registry
from edge_agent.fleet.rollout_driver import RolloutDriver
from edge_agent.protocol import topics
from edge_agent.protocol.backoff import Backoff
from edge_agent.protocol.broker import client_options, parse_broker_url
from edge_agent.protocol.clock import Clock, SystemClock
from edge_agent.protocol.errors import ConfigError, UplinkError

log = logging.getLogger(__name__)


class FleetService:
    """One instance of the fleet service."""

    def __init__(self, registry: Registry, broker_url: str, *, username: str | None = None,
                 password: str | None = None, prefix: str = "edge", tick_s: float = 0.5,
                 lease_s: float = 10.0, http_host: str | None = None, http_port: int = 0,
                 public_broker_url: str | None = None, clock: Clock | None = None,
                 owner: str | None = None, publish_concurrency: int = 200) -> None:
        self.registry = registry
        self.mqtt = parse_broker_url(broker_url, username=username, password=password,
                                     topic_prefix=prefix)
        self.prefix = topics.check_prefix(prefix)
        self.tick_s = tick_s
        self.clock = clock or SystemClock()
        self.owner = owner or f"fleet-{uuid.uuid4().hex[:8]}"
        self.driver = RolloutDriver(registry, self._publish_desired, owner=self.owner,
                                    lease_s=lease_s)
        self.http_host = http_host
        self.http_port = http_port
        self.public_broker_url = public_broker_url or broker_url
        self.publish_concurrency = publish_concurrency
        self.connected = asyncio.Event()
        self.http_ready = asyncio.Event()
        self.messages = 0
        self.reports = 0
        self.enrolled = 0
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
                await client.publish(topics.desired_topic(self.prefix, gw, "config"), blob,
                                     qos=1, retain=True)

        await asyncio.gather(*(one(gw, blob) for gw, blob in offers))

    async def _handle(self, msg: aiomqtt.Message) -> None:
        ref = topics.parse_topic(str(msg.topic), self.prefix)
        if ref is None or not isinstance(msg.payload, bytes | bytearray) or not msg.payload:
            return
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            log.warning("%s: payload is not JSON; ignored", msg.topic)
            return
        if not isinstance(doc, dict):
            return
        self.messages += 1
        now = self._now_ms()
        if ref.kind == topics.REPORTED:
            self.reports += 1
            self.registry.record_report(ref.gateway, doc, now)
        elif ref.kind == topics.HEALTH:
            self.registry.record_health(ref.gateway, doc, now)
        elif ref.kind == topics.STATE:
            self.registry.record_state(ref.gateway, doc.get("status") == "online", now)

    async def _connection(self) -> None:
        opts = client_options(self.mqtt)
        async with aiomqtt.Client(identifier=self.owner, **opts) as client:
            for kind in (topics.REPORTED, topics.HEALTH, topics.STATE):
                await client.subscribe(topics.subscription(self.prefix, kind), qos=1)
            self._client = client
            self.connected.set()
            log.info("fleet %s connected to %s", self.owner, self.mqtt.url)
            try:
                async for msg in client.messages:
                    await self._handle(msg)
            finally:
                self._client = None
                self.connected.clear()

    async def _mqtt_loop(self) -> None:
        backoff = Backoff(base_s=0.2, cap_s=10.0, rng=random.Random(self.owner))
        while True:
            try:
                await self._connection()
            except (aiomqtt.MqttError, OSError) as exc:
                log.warning("fleet broker connection: %s", exc)
            await self.clock.sleep(backoff.next_delay())

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
            return 200, {"ok": True, "owner": self.owner, "connected": self.connected.is_set()}
        if path != "/v1/enroll":
            return 404, {"error": f"no endpoint {path}"}
        if method != "POST":
            return 405, {"error": "POST a JSON body {\"token\": T}"}
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            return 400, {"error": "body must be {\"token\": \"...\"}"}
        try:
            answer = ops.enroll(self.registry, token, broker_url=self.public_broker_url,
                                prefix=self.prefix, now_ms=self._now_ms())
        except ConfigError as exc:
            return 403, {"error": str(exc)}
        self.enrolled += 1
        log.info("enrolled gateway %s (site %s)", answer["gateway_id"], answer["site"])
        return 200, answer

    # ------------------------------------------------------------------ run

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; leases are released on the way out."""
        server = None
        if self.http_host is not None:
            server = await serve_http(self.http_host, self.http_port, self._http)
            self.http_port = server.sockets[0].getsockname()[1]
            log.info("enrolment endpoint on http://%s:%d/v1/enroll", self.http_host,
                     self.http_port)
        self.http_ready.set()
        tasks = [asyncio.create_task(self._mqtt_loop(), name="fleet-mqtt"),
                 asyncio.create_task(self._tick_loop(), name="fleet-tick")]
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            if server is not None:
                server.close()
                await server.wait_closed()
            self.driver.release_all()

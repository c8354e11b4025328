"""``edge-agent ingest``: the cloud side of the data path, deduplicating and gap-aware.

Subscribes to every gateway's data topic at QoS 1 (optionally as a shared subscription
``$share/GROUP/...`` so several workers split the load), decodes each batch with
``edge_agent.codecs.batch.decode_batch``, and stores its readings once per (gateway, epoch, seq).

Nothing is acknowledged before it is committed: paho's automatic PUBACK is turned off and each
message is acknowledged after the transaction holding it commits, and the session is persistent
(a fixed client id, clean_session false), so a crashed ingest gets its unacknowledged messages
again from the broker. Messages that arrive together are committed together (one fsync).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import sys
import time
from dataclasses import dataclass

import aiomqtt

from edge_agent.codecs.batch import decode_batch
from edge_agent.fleet.ingest.store import IngestStore, Received
from edge_agent.protocol import topics
from edge_agent.protocol.backoff import Backoff
from edge_agent.protocol.broker import client_options, parse_broker_url
from edge_agent.protocol.errors import CodecError, ConfigError, EdgeError

log = logging.getLogger(__name__)

MAX_GROUP = 500  # messages committed in one transaction at most


@dataclass
class IngestCounters:
    """What this ingest process did."""

    messages: int = 0
    batches: int = 0
    duplicates: int = 0
    rejected: int = 0
    commits: int = 0
    connects: int = 0


def decode_message(topic: str, payload: bytes, prefix: str) -> Received:
    """Decode one data message; a bad one is kept as a rejection, never raised."""
    parsed = topics.parse_topic(topic, prefix)
    try:
        batch = decode_batch(payload)
    except CodecError as exc:
        return Received(topic, payload, None, str(exc))
    if parsed is None or parsed[1] != topics.DATA or parsed[0] != batch.gateway:
        # a gateway may only publish its own data (its ACL should say so too)
        return Received(topic, payload, None,
                        f"batch of gateway {batch.gateway!r} on topic {topic!r}")
    return Received(topic, payload, batch)


class Ingest:
    """One ingest worker: broker in, database out."""

    def __init__(self, broker_url: str, store: IngestStore, *, prefix: str = "edge",
                 share_group: str | None = None, client_id: str = "edge-ingest",
                 gap_scan_s: float = 10.0) -> None:
        self.mqtt = parse_broker_url(broker_url, topic_prefix=prefix)
        self.store = store
        self.prefix = topics.check_prefix(prefix)
        data = topics.subscription(self.prefix, topics.DATA)
        self.filter = f"$share/{share_group}/{data}" if share_group else data
        self.client_id = client_id
        self.gap_scan_s = gap_scan_s
        self.counters = IngestCounters()
        self.subscribed = asyncio.Event()
        self._backoff = Backoff(0.2, 5.0, random.Random(client_id))

    async def run(self) -> None:
        """Consume forever, reconnecting with backoff; cancel to stop."""
        scanner = asyncio.create_task(self._scan_loop(), name="ingest-gaps")
        try:
            while True:
                try:
                    await self._connection()
                except aiomqtt.MqttError as exc:
                    log.warning("ingest: broker %s: %s (reconnecting)", self.mqtt.url, exc)
                self.subscribed.clear()
                await asyncio.sleep(self._backoff.next_delay())
        finally:
            scanner.cancel()
            await asyncio.gather(scanner, return_exceptions=True)
            self.store.scan_gaps()

    async def _scan_loop(self) -> None:
        while True:
            await asyncio.sleep(self.gap_scan_s)
            gaps = self.store.scan_gaps()
            if gaps:
                log.info("ingest: %d open gaps, e.g. %s", len(gaps), gaps[:3])

    async def _connection(self) -> None:
        opts = client_options(self.mqtt)
        opts["protocol"] = aiomqtt.ProtocolVersion.V311
        client = aiomqtt.Client(**opts, identifier=self.client_id, clean_session=False)
        client._client.manual_ack_set(True)  # PUBACK after commit, not on receipt
        async with client:
            await client.subscribe(self.filter, qos=1)
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

    def _commit(self, group: list[aiomqtt.Message]) -> None:
        received = [decode_message(m.topic.value, bytes(m.payload), self.prefix)
                    for m in group]
        new, dups = self.store.record(received)
        self.counters.messages += len(group)
        self.counters.batches += new
        self.counters.duplicates += dups
        self.counters.commits += 1
        bad = [r for r in received if r.batch is None]
        self.counters.rejected += len(bad)
        for r in bad:
            log.warning("ingest: rejected a message on %s: %s", r.topic, r.error)


def ingest_main(argv: list[str]) -> int:
    """``edge-agent ingest``: run an ingest worker, or print what a database holds."""
    ap = argparse.ArgumentParser(prog="edge-agent ingest",
                                 description="Store every gateway's readings once, noting gaps.")
    ap.add_argument("--broker", help="broker URL (mqtt://host:port, mqtts://, unix://)")
    ap.add_argument("--db", default="ingest.db",
                    help="sqlite:///path, a file path (default ingest.db) or postgresql://...")
    ap.add_argument("--db-schema", help="PostgreSQL schema to use (created if missing)")
    ap.add_argument("--prefix", default="edge", help="topic prefix (default edge)")
    ap.add_argument("--share", metavar="GROUP",
                    help="join the shared subscription $share/GROUP to split load with others")
    ap.add_argument("--client-id", default="edge-ingest",
                    help="MQTT client id; its session keeps unacknowledged messages (unique "
                    "per worker)")
    ap.add_argument("--gap-scan-s", type=float, default=10.0)
    ap.add_argument("--report", action="store_true", help="print totals and open gaps, exit")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    from edge_agent.protocol.shell import run_until_signal, setup_logging

    setup_logging(args.verbose)
    try:
        store = IngestStore(args.db, schema=args.db_schema)
    except (ConfigError, OSError, EdgeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a database driver's own error type: report it, do not trace
        print(f"error: --db {args.db}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    try:
        if args.report:
            store.scan_gaps()
            s = store.summary()
            for gw, epoch, batches, readings, dups, max_seq in s["streams"]:
                print(f"{gw} epoch {epoch}: {batches} batches (max seq {max_seq}), "
                      f"{readings} readings, {dups} duplicates dropped")
            for gw, epoch, lo, hi in s["open_gaps"]:
                print(f"gap: {gw} epoch {epoch} seq {lo}..{hi}")
            print(f"{len(s['open_gaps'])} open gaps, {s['rejected']} rejected messages")
            return 0
        if not args.broker:
            print("error: --broker is required (or --report)", file=sys.stderr)
            return 2
        try:
            ingest = Ingest(args.broker, store, prefix=args.prefix, share_group=args.share,
                            client_id=args.client_id, gap_scan_s=args.gap_scan_s)
        except (ConfigError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

        async def main(stop: asyncio.Event) -> None:
            task = asyncio.create_task(ingest.run())
            await stop.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        started = time.monotonic()
        run_until_signal(main)
        c = ingest.counters
        log.info("ingest stopped after %.0f s: %d messages, %d batches stored, %d duplicates, "
                 "%d rejected, %d commits", time.monotonic() - started, c.messages, c.batches,
                 c.duplicates, c.rejected, c.commits)
        return 0
    finally:
        store.close()

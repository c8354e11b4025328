"""``edge-fleet ingest`` (and its alias ``edge-agent ingest``): the command around the worker.

Checks the broker URL, its login and the prefix before a database is touched, opens the store,
serves ``GET /v1/health`` when ``--http`` is given, and runs one ``consumer.Ingest`` until a
signal; ``--report`` prints totals and open gaps instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time

from edge_agent.fleet.httpd import serve_http
from edge_agent.fleet.ingest.consumer import HTTP_ROUTES, Ingest
from edge_agent.fleet.ingest.store import IngestStore
from edge_agent.protocol import topics
from edge_agent.protocol.broker import URL_TEXT, MqttConfig, parse_broker_url
from edge_agent.protocol.errors import CommandError
from edge_agent.protocol.shell import (
    add_broker_login,
    broker_password,
    check_broker_url,
    host_port,
    opened,
    run_until_signal,
    setup_logging,
)

log = logging.getLogger(__name__)


def add_ingest_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``edge-fleet ingest`` (and of its alias ``edge-agent ingest``)."""
    ap.add_argument("--broker", help=f"broker URL ({URL_TEXT}); no credentials in it")
    add_broker_login(ap)
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
    ap.add_argument("--no-receipts", action="store_true",
                    help="do not publish receipts (gateways then delete batches on PUBACK, or "
                    "after their retention; docs/spool.md)")
    ap.add_argument("--http", metavar="HOST:PORT",
                    help="serve GET /v1/health here (read-only status; bind it to loopback or a "
                    "monitoring network)")
    ap.add_argument("--report", action="store_true", help="print totals and open gaps, exit")
    ap.add_argument("-v", "--verbose", action="store_true")


def print_report(store: IngestStore) -> None:
    """Totals per stream, every open gap, and the rejected messages a database holds."""
    store.scan_gaps()
    s = store.summary()
    for gw, epoch, batches, readings, dups, max_seq in s["streams"]:
        print(f"{gw} epoch {epoch}: {batches} batches (max seq {max_seq}), "
              f"{readings} readings, {dups} duplicates dropped")
    for gw, epoch, lo, hi in s["open_gaps"]:
        print(f"gap: {gw} epoch {epoch} seq {lo}..{hi}")
    print(f"{len(s['open_gaps'])} open gaps, {s['rejected']} rejected messages")
    for reason, count in s["rejected_by_reason"].items():
        print(f"rejected: {count} {reason}")


def ingest_command(args: argparse.Namespace) -> int:
    """``edge-fleet ingest``: run an ingest worker until a signal, or print a report."""
    setup_logging(args.verbose)
    mqtt: MqttConfig | None = None
    if not args.report:
        if not args.broker:
            raise CommandError("--broker is required (or --report)")
        # the broker, its login and the prefix are checked before a database is touched
        topics.check_prefix(args.prefix)
        mqtt = parse_broker_url(check_broker_url(args.broker), username=args.username,
                                password=broker_password(args.username, args.password_file),
                                topic_prefix=args.prefix)
    store = opened("--db", args.db, lambda: IngestStore(args.db, schema=args.db_schema))
    try:
        if mqtt is None:
            print_report(store)
            return 0
        ingest = Ingest(mqtt, store, share_group=args.share, client_id=args.client_id,
                        gap_scan_s=args.gap_scan_s, receipts=not args.no_receipts)
        listen = host_port(args.http, "--http") if args.http else None

        async def main(stop: asyncio.Event) -> None:
            server = None
            if listen is not None:
                server = await serve_http(*listen, ingest.http, routes=HTTP_ROUTES)
                port = server.sockets[0].getsockname()[1]
                log.info("ingest health on http://%s:%d/v1/health", listen[0], port)
            task = asyncio.create_task(ingest.run())
            try:
                await stop.wait()
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                if server is not None:
                    server.close()

        started = time.monotonic()
        run_until_signal(main)
        c = ingest.counters
        log.info("ingest stopped after %.0f s: %d messages, %d batches stored, %d duplicates, "
                 "%d rejected, %d commits", time.monotonic() - started, c.messages, c.batches,
                 c.duplicates, c.rejected, c.commits)
        return 0
    finally:
        store.close()

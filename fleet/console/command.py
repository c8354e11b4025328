"""``edge-fleet console`` (the web console) and ``edge-fleet user add`` (its accounts).

The console is one process per instance: every instance opened on the same registry database
(and the same ingest database) serves the same console, so several can run behind a load
balancer; the alarm evaluator runs in whichever instance holds its lease.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import socket
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from edge_agent.fleet.console.sender import add_sender_arguments, sender_from_args
from edge_agent.protocol.clock import SystemClock
from edge_agent.protocol.errors import CommandError, ConfigError
from edge_agent.protocol.shell import (
    check_db_url,
    host_port,
    opened,
    run_until_signal,
    setup_logging,
)

log = logging.getLogger(__name__)
DEFAULT_LISTEN = "127.0.0.1:8480"


def add_console_arguments(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``console`` and ``user`` on edge-fleet's subcommand parser."""
    p = sub.add_parser("console", parents=[common], help="serve the web console")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"where to serve it (default {DEFAULT_LISTEN}; port 0: any free port)")
    p.add_argument("--ingest-db", default="ingest.db",
                   help="the ingest's database (sqlite:///path, a path or postgresql://...)")
    p.add_argument("--tls-cert", type=Path, metavar="FILE", help="PEM certificate (chain)")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument("--insecure-http", action="store_true",
                   help="serve plain HTTP (loopback or behind a TLS-terminating proxy only)")
    p.add_argument("--alarm-delay-s", type=float, default=10.0,
                   help="how long a condition holds before its alarm is raised (default 10)")
    p.add_argument("--device-stale-s", type=float, default=300.0,
                   help="a device without any reading this long is offline (default 300)")
    p.add_argument("--evaluate-s", type=float, default=2.0, help="alarm evaluation period")
    p.add_argument("-v", "--verbose", action="store_true")
    add_sender_arguments(p)  # --operator-key, --broker ...: the Commands page sends
    p.set_defaults(fn=console_command)

    p = sub.add_parser("user", parents=[common], help="console accounts: add, list")
    p.add_argument("action", choices=("add", "list"))
    p.add_argument("name", nargs="?")
    p.add_argument("--role", choices=("viewer", "operator"), default="viewer")
    p.add_argument("--password-file", type=Path,
                   help="read the password from this file (default: ask on the terminal)")
    p.set_defaults(fn=user_command)


def user_command(args: argparse.Namespace) -> int:
    """``edge-fleet user add NAME --role ROLE`` / ``edge-fleet user list``."""
    from edge_agent.fleet.console.accounts import Accounts, check_name, check_new_password
    from edge_agent.fleet.registry import Registry

    if args.action == "add":
        if not args.name:
            raise CommandError("user add needs a NAME")
        check_name(args.name)
        if args.password_file:
            try:
                password = args.password_file.read_text().strip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise CommandError(f"--password-file {args.password_file}: {exc}") from None
        elif sys.stdin.isatty():
            password = getpass.getpass(f"password for {args.name}: ")
            if getpass.getpass("again: ") != password:
                raise CommandError("the two passwords differ")
        else:
            raise CommandError("no terminal to ask the password on: give --password-file FILE")
        check_new_password(password)
    accounts = Accounts(opened("--db", args.db, lambda: Registry(args.db)))
    if args.action == "list":
        for name, role in accounts.users():
            print(f"{name} {role}")
        return 0
    accounts.add_user(args.name, args.role, password, int(time.time() * 1000))
    print(f"user {args.name} ({args.role}) saved")
    return 0


def _tls(args: argparse.Namespace) -> tuple[str, str] | None:
    """(cert, key) to serve HTTPS with; CommandError for contradicting options."""
    from edge_agent.fleet.httpd import server_tls_context

    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise CommandError("--tls-cert FILE and --tls-key FILE go together")
        if args.insecure_http:
            raise CommandError("--insecure-http contradicts --tls-cert/--tls-key: choose one")
        server_tls_context(args.tls_cert, args.tls_key)  # the same checks and messages
        return str(args.tls_cert), str(args.tls_key)
    host, _ = host_port(args.listen, "--listen")
    if not args.insecure_http and host not in ("127.0.0.1", "::1", "localhost"):
        raise CommandError(f"--listen {args.listen}: passwords and session cookies would go in "
                           "clear: give --tls-cert FILE --tls-key FILE, or --insecure-http "
                           "behind a TLS-terminating proxy")
    return None


def console_command(args: argparse.Namespace) -> int:
    """``edge-fleet console``: serve the console until SIGINT/SIGTERM."""
    import uvicorn

    from edge_agent.fleet.console.accounts import Accounts
    from edge_agent.fleet.console.app import build_app
    from edge_agent.fleet.console.evaluator import Evaluator
    from edge_agent.fleet.console.readings import ReadingsDb
    from edge_agent.fleet.console.web import Console
    from edge_agent.fleet.registry import Registry

    class Server(uvicorn.Server):
        """uvicorn's server without its own signal handling: run_until_signal owns them."""

        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield

    setup_logging(args.verbose)
    check_db_url(args.ingest_db, "--ingest-db")
    host, port = host_port(args.listen, "--listen")
    tls = _tls(args)
    sender = sender_from_args(args)  # before anything opens: a shared key file stops here
    if not (0 < args.alarm_delay_s <= 3600 and 0.2 <= args.evaluate_s <= 600
            and 1 <= args.device_stale_s <= 86400):
        raise CommandError("--alarm-delay-s 0..3600, --evaluate-s 0.2..600, --device-stale-s "
                           "1..86400")
    registry = opened("--db", args.db, lambda: Registry(args.db))
    readings = opened("--ingest-db", args.ingest_db, lambda: ReadingsDb(args.ingest_db))
    clock = SystemClock()
    evaluator = Evaluator(registry, readings, clock, interval_s=args.evaluate_s,
                          delay_s=args.alarm_delay_s, stale_s=args.device_stale_s)
    console = Console(registry, Accounts(registry), readings, evaluator, clock,
                      secure=tls is not None, sender=sender)
    if sender is not None and (problem := sender.key_problem(registry)):
        log.warning("--operator-key: %s", problem)
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host
                                    else socket.AF_INET, reuse_port=False)
    except OSError as exc:
        raise ConfigError(f"--listen {args.listen}: {exc.strerror or exc}") from None

    async def main(stop: asyncio.Event) -> None:
        app = build_app(console, stop)
        config = uvicorn.Config(app, log_level="debug" if args.verbose else "warning",
                                access_log=args.verbose, timeout_graceful_shutdown=3,
                                ssl_certfile=tls[0] if tls else None,
                                ssl_keyfile=tls[1] if tls else None,
                                limit_concurrency=500, h11_max_incomplete_event_size=16384,
                                server_header=False)
        server = Server(config)
        evaluation = asyncio.create_task(evaluator.run(stop), name="alarm-evaluator")
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="console-http")
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        bound = sock.getsockname()
        print(f"console {'https' if tls else 'http'}://{host}:{bound[1]}", flush=True)
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        server.should_exit = True
        await serving
        await evaluation
        stopping.cancel()

    try:
        run_until_signal(main)
    finally:
        readings.close()
        registry.close()
    return 0

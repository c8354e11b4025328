"""The ``edge-fleet`` operator command line (console script ``edge_agent.fleet.cli:main``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_agent.fleet import actions as ops
from edge_agent.fleet import rollout as ro
from edge_agent.fleet.brokerconf import (
    DEFAULT_FLEET_LISTENER,
    mosquitto_hash,
    write_broker_config,
)
from edge_agent.fleet.cmdcli import add_cmd_parser, add_operator_arguments
from edge_agent.fleet.console.command import add_console_arguments
from edge_agent.fleet.ingest.command import add_ingest_arguments, ingest_command
from edge_agent.fleet.listing import gateway_table
from edge_agent.fleet.registry import Registry
from edge_agent.fleet.release_cli import (
    add_release_arguments,
    add_release_rollout_arguments,
    release_command,
    release_payload,
)
from edge_agent.fleet.rollout_driver import RolloutStore
from edge_agent.fleet.swreport import software_lines
from edge_agent.protocol.bundle import make_bundle
from edge_agent.protocol.errors import CommandError
from edge_agent.protocol.ids import is_reserved
from edge_agent.protocol.keys import (
    PrivateKey,
    load_private,
    load_public,
    write_private,
    write_public,
)
from edge_agent.protocol.shell import (
    add_broker_login,
    broker_password,
    check_broker_url,
    check_db_url,
    host_port,
    opened,
    run_cli,
    run_until_signal,
    setup_logging,
)

DEFAULT_DB = "sqlite:///fleet.db"


def _db(args: argparse.Namespace) -> Registry:
    return opened("--db", args.db, lambda: Registry(args.db))


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write NAME.key (0600) and NAME.pub."""
    key = PrivateKey.generate()
    args.dir.mkdir(parents=True, exist_ok=True)
    priv, pub = args.dir / f"{args.name}.key", args.dir / f"{args.name}.pub"
    if priv.exists():
        raise CommandError(f"{priv} exists; refusing to overwrite a key")
    write_private(priv, key)
    write_public(pub, key.public)
    print(f"{priv} (private, 0600)\n{pub} keyid {key.public.keyid}")
    return 0


def cmd_root(args: argparse.Namespace) -> int:
    """root init | rotate | show."""
    reg = _db(args)
    if args.action == "show":
        root = reg.latest_root()
        from edge_agent.protocol.bundle import root_fingerprint

        s = root["signed"]
        print(f"root v{s['version']} expires {_when(s['expires'] * 1000)}\n"
              f"fingerprint {root_fingerprint(root)}")
        for role, spec in s["roles"].items():
            print(f"  {role}: {spec['threshold']} of {len(spec['keyids'])}: "
                  + " ".join(k[:12] for k in spec["keyids"]))
        return 0
    if not args.root_key or not args.release_key or not args.sign:
        raise CommandError(f"root {args.action} needs --root-key, --release-key and --sign")
    fn = ops.init_root if args.action == "init" else ops.rotate_root
    env = fn(reg, [load_public(p) for p in args.root_key], args.threshold,
             [load_public(p) for p in args.release_key], args.release_threshold,
             [load_private(p) for p in args.sign], expires_days=args.expires_days,
             operator_keys=[load_public(p) for p in args.operator_key],
             operator_threshold=args.operator_threshold)
    print(f"root v{env['signed']['version']} stored with {len(env['signatures'])} signatures")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    """Sign a payload into a bundle file (offline use)."""
    now = int(time.time())
    blob = make_bundle(args.kind, args.version, args.payload.read_bytes(),
                       [load_private(p) for p in args.key], issued=now,
                       expires=now + args.expires_days * ops.DAY_S, gateways=args.gateway,
                       sites=args.site, tags=args.tag)
    args.out.write_bytes(blob)
    print(f"{args.out}: {args.kind} v{args.version}, {len(blob)} bytes")
    return 0


def cmd_enroll_token(args: argparse.Namespace) -> int:
    """Print a single-use enrolment token."""
    token = ops.issue_token(_db(args), args.gateway, args.site, args.tag, ttl_s=args.ttl_s)
    print(token)
    return 0


def cmd_gateways(args: argparse.Namespace) -> int:
    """A table of every gateway."""
    print(gateway_table(_db(args).gateways(), _when))
    return 0


def _status_line(state: dict[str, Any]) -> str:
    s = ro.summary(state)
    c = s["counts"]
    parts = " ".join(f"{k} {v}" for k, v in sorted(c.items()))
    extra = f" ({s['abort_reason']})" if s["abort_reason"] else ""
    return (f"{s['id']}  {s['kind']} v{s['version']}  {s['status']}{extra}  wave "
            f"{s['wave']}/{s['waves']}  {s['gateways']} gateways: {parts}")


def cmd_rollout(args: argparse.Namespace) -> int:
    """rollout start | status | pause | resume | abort."""
    reg = _db(args)
    store = RolloutStore(reg)
    if args.action == "start":
        if not (args.config or args.release) or not args.target or not args.key:
            raise CommandError("rollout start needs --config FILE (or --release VERSION), "
                               "--target SEL and --key FILE")
        payload, kind, version = release_payload(args) if args.release else (
            args.config.read_bytes(), "config", None)
        state = ops.start_rollout(
            reg, payload, args.target, [load_private(p) for p in args.key], kind=kind,
            version=version,
            waves=ops.parse_waves(args.waves), abort_above_pct=args.abort_above,
            abort_min_count=args.abort_min, wave_deadline_s=args.deadline_s,
            expires_days=args.expires_days)
        print(f"rollout {state['plan']['id']} started: {_status_line(state)}")
        return 0
    if args.action == "status":
        ids = [args.id] if args.id else store.all()[:10]
        while True:
            for rid in ids:
                state, _, command = store.load(rid)
                pending = f"  [{command.split(':')[0]} pending]" if command else ""
                print(_status_line(state) + pending)
                if args.id and state["plan"]["kind"] == "software":  # docs/updates.md
                    for line in software_lines(reg, args.id, args.verbose):
                        print(line)
                if args.id and args.verbose:
                    for gw, why in sorted(state["reasons"].items())[:20]:
                        print(f"    {gw}: {why}")
                    for ts, text in state["events"][-10:]:
                        print(f"    {_when(ts)} {text}")
            if not args.watch or all(store.load(r)[0]["status"] not in ro.ACTIVE for r in ids):
                return 0
            time.sleep(args.interval_s)
    if not args.id:
        raise CommandError(f"rollout {args.action} needs a rollout id")
    try:
        store.command(args.id, args.action, args.reason)
    except KeyError:
        raise CommandError(f"no rollout {args.id!r}") from None
    print(f"rollout {args.id}: {args.action} queued (applied by the service on its next tick)")
    return 0


def _http_endpoint(args: argparse.Namespace) -> tuple[str | None, int, ssl.SSLContext | None]:
    """(host, port, TLS context) of ``serve``'s enrolment endpoint; CommandError if the options
    would serve it over plain HTTP without ``--insecure-http``, or contradict each other."""
    from edge_agent.fleet.httpd import server_tls_context

    if not args.http:
        if args.tls_cert or args.tls_key or args.insecure_http:
            raise CommandError("--tls-cert, --tls-key and --insecure-http need --http HOST:PORT")
        return None, 0, None
    host, port = host_port(args.http, "--http")
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise CommandError("--tls-cert FILE and --tls-key FILE go together")
        if args.insecure_http:
            raise CommandError("--insecure-http contradicts --tls-cert/--tls-key: choose one")
        return host, port, server_tls_context(args.tls_cert, args.tls_key)
    if not args.insecure_http:
        raise CommandError(f"--http {args.http}: enrolment hands out broker passwords and takes "
                           "tokens, so it is served over TLS: give --tls-cert FILE --tls-key FILE "
                           "(PEM), or --insecure-http for plain HTTP on loopback or behind a "
                           "TLS-terminating proxy")
    return host, port, None


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the fleet service until SIGINT/SIGTERM."""
    from edge_agent.fleet.service import FleetService

    setup_logging(args.verbose)
    password = broker_password(args.username, args.password_file)
    host, port, tls = _http_endpoint(args)
    public = check_broker_url(args.public_broker, "--public-broker") if args.public_broker \
        else None
    svc = FleetService(_db(args), check_broker_url(args.broker), username=args.username,
                       password=password, prefix=args.prefix, tick_s=args.tick_s,
                       lease_s=args.lease_s, http_host=host, http_port=port,
                       public_broker_url=public, owner=args.instance, http_tls=tls,
                       http_insecure=args.insecure_http, share_group=args.share_group)

    async def main(stop: asyncio.Event) -> None:
        task = asyncio.create_task(svc.run(stop))
        await svc.http_ready.wait()
        if svc.http_host is not None:
            print(f"enrolment {svc.http_scheme}://{svc.http_host}:{svc.http_port}", flush=True)
        await task

    run_until_signal(main)
    return 0


def cmd_broker_config(args: argparse.Namespace) -> int:
    """Write mosquitto password and ACL files from the registry."""
    entries = _db(args).password_hashes()
    if args.fleet_password_file:
        entries = [(args.fleet_user, mosquitto_hash(args.fleet_password_file.read_text()
                                                    .strip())), *entries]
    snippet = write_broker_config(args.out, entries, prefix=args.prefix,
                                  fleet_user=args.fleet_user, fleet_listener=args.fleet_listener,
                                  outage_s=args.outage_h * 3600, autosave_s=args.autosave_s)
    print(f"{len(entries)} users; include {snippet} in mosquitto.conf right after the "
          f"gateways' listener (the fleet's listener is {args.fleet_listener}), SIGHUP to reload")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=os.environ.get("EDGE_FLEET_DB", DEFAULT_DB),
                        help="sqlite:///path or postgresql://... (env EDGE_FLEET_DB)")
    ap = argparse.ArgumentParser(prog="edge-fleet", description="The edge fleet service.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("keygen", parents=[common], help="make an Ed25519 key pair")
    p.add_argument("name")
    p.add_argument("--dir", type=Path, default=Path("."))
    p.set_defaults(fn=cmd_keygen)

    p = sub.add_parser("root", parents=[common], help="root metadata: init, rotate, show")
    p.add_argument("action", choices=("init", "rotate", "show"))
    p.add_argument("--root-key", type=Path, action="append", default=[])
    p.add_argument("--threshold", type=int, default=1)
    p.add_argument("--release-key", type=Path, action="append", default=[])
    p.add_argument("--release-threshold", type=int, default=1)
    p.add_argument("--sign", type=Path, action="append", default=[],
                   help="private root keys signing (old and new for a rotation)")
    p.add_argument("--expires-days", type=int, default=365)
    add_operator_arguments(p)
    p.set_defaults(fn=cmd_root)

    p = sub.add_parser("sign", parents=[common], help="sign a payload into a bundle file")
    p.add_argument("--kind", default="config")
    p.add_argument("--version", type=int, required=True)
    p.add_argument("--payload", type=Path, required=True)
    p.add_argument("--key", type=Path, action="append", required=True)
    p.add_argument("--gateway", action="append", default=[])
    p.add_argument("--site", action="append", default=[])
    p.add_argument("--tag", action="append", default=[])
    p.add_argument("--expires-days", type=int, default=30)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(fn=cmd_sign)

    p = sub.add_parser("enroll-token", parents=[common], help="a single-use enrolment token")
    p.add_argument("--gateway", required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--tag", action="append", default=[])
    p.add_argument("--ttl-s", type=int, default=3600)
    p.set_defaults(fn=cmd_enroll_token)

    p = sub.add_parser("gateways", parents=[common], help="a table of gateways")
    p.set_defaults(fn=cmd_gateways)

    def rollout_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path)
        add_release_rollout_arguments(p)
        p.add_argument("--target", action="append", default=[],
                       help="gw:ID, site:NAME, tag:NAME or all (repeatable)")
        p.add_argument("--waves", default="1,10,50,100")
        p.add_argument("--abort-above", type=float, default=10.0, help="failed percent")
        p.add_argument("--abort-min", type=int, default=3, help="outcomes before aborting")
        p.add_argument("--deadline-s", type=float, default=600.0, help="per wave")
        p.add_argument("--expires-days", type=int, default=30)
        p.add_argument("--key", type=Path, action="append", default=[], help="release key")
        p.add_argument("--reason", default="by hand")
        p.add_argument("--watch", action="store_true")
        p.add_argument("--interval-s", type=float, default=1.0)
        p.add_argument("-v", "--verbose", action="store_true")
        p.set_defaults(fn=cmd_rollout)

    p = sub.add_parser("rollout", parents=[common], help="start, status, pause, resume, abort")
    p.add_argument("action", choices=("start", "status", "pause", "resume", "abort"))
    p.add_argument("id", nargs="?")
    rollout_args(p)
    for verb in ("pause", "resume", "abort"):
        p = sub.add_parser(verb, parents=[common], help=f"rollout {verb} ID")
        p.add_argument("id")
        rollout_args(p)
        p.set_defaults(action=verb)

    p = sub.add_parser("serve", parents=[common], help="run the fleet service")
    p.add_argument("--broker", required=True, help="broker URL; no credentials in it")
    add_broker_login(p)
    p.add_argument("--prefix", default="edge")
    p.add_argument("--http", metavar="HOST:PORT", help="serve enrolment (HTTPS) here")
    p.add_argument("--tls-cert", type=Path, metavar="FILE",
                   help="PEM certificate (chain) of the enrolment endpoint")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument("--insecure-http", action="store_true",
                   help="serve enrolment over plain HTTP: tokens and broker passwords in clear "
                        "(loopback or behind a TLS-terminating proxy only)")
    p.add_argument("--public-broker", help="broker URL handed to gateways at enrolment")
    p.add_argument("--tick-s", type=float, default=0.5)
    p.add_argument("--lease-s", type=float, default=10.0)
    p.add_argument("--instance", help="this instance's name (default: random)")
    p.add_argument("--share-group", metavar="NAME", help="take reports and health through "
                   "$share/NAME/ subscriptions: instances of one group split them (docs/scale.md)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("broker-config", parents=[common], help="mosquitto passwd and acl")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--prefix", default="edge")
    p.add_argument("--fleet-user", default="fleet")
    p.add_argument("--fleet-password-file", type=Path)
    p.add_argument("--fleet-listener", default=DEFAULT_FLEET_LISTENER,
                   metavar="HOST:PORT|unix:/PATH",
                   help="the fleet's own listener, which refuses gateway credentials "
                        f"(default {DEFAULT_FLEET_LISTENER}; docs/broker.md)")
    p.add_argument("--outage-h", type=float, default=24.0, help="hours of every gateway's "
                   "batches the broker queues for an absent ingest (max_queued_messages)")
    p.add_argument("--autosave-s", type=int, default=60, help="broker autosave_interval")
    p.set_defaults(fn=cmd_broker_config)

    # its own --db: the readings database is not the registry
    p = sub.add_parser("ingest", help="store every gateway's readings once, noting gaps",
                       description="Store every gateway's readings once, noting gaps.")
    add_ingest_arguments(p)
    p.set_defaults(fn=ingest_command)
    add_cmd_parser(sub, common)
    p = sub.add_parser("release", help="software releases: build, list, show")
    add_release_arguments(p)
    p.set_defaults(fn=release_command)
    add_console_arguments(sub, common)  # console, user (fleet/console/command.py)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``edge-fleet`` console script."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    fn: Callable[[argparse.Namespace], int] = args.fn

    def checked(args: argparse.Namespace) -> int:
        # Every command with a database (the registry's or the ingest's) refuses a password
        # in its URL before anything else runs.
        check_db_url(args.db)
        client_id = getattr(args, "client_id", None)
        if isinstance(client_id, str) and not is_reserved(client_id):
            # Client ids are global on the broker: a gateway whose id equals this one would
            # take the ingest's session (and its queued batches) over (docs/broker.md).
            # Warned, not refused: renaming a persistent session orphans its queue.
            print(f"edge-fleet {args.command}: warning: --client-id {client_id!r} is not one "
                  "of the fleet's reserved names: a gateway enrolled with that id could take "
                  "this session over; use edge-ingest-NAME or ingest-NAME", file=sys.stderr)
        return fn(args)

    return run_cli(f"edge-fleet {args.command}", checked if hasattr(args, "db") else fn, args)


if __name__ == "__main__":
    sys.exit(main())

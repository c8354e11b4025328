"""``edge-fleet release build | list | show``: the operator's side of software releases."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from edge_agent.fleet.release import (
    build_release,
    describe,
    find_release,
    list_releases,
)
from edge_agent.protocol.errors import CommandError
from edge_agent.protocol.keys import load_private

DAY_S = 86_400


def add_release_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``edge-fleet release``."""
    ap.add_argument("action", choices=("build", "list", "show", "serve"))
    ap.add_argument("version", nargs="?", help="release version X.Y.Z (build: defaults to "
                    "the source tree's; show: required)")
    ap.add_argument("--releases", type=Path,
                    default=Path(os.environ.get("EDGE_FLEET_RELEASES", "releases")),
                    help="where releases are kept (env EDGE_FLEET_RELEASES; default releases)")
    ap.add_argument("--src", type=Path, default=Path("."), help="the source tree to build")
    ap.add_argument("--min-from", default="0.0.0",
                    help="the oldest running version this release may upgrade (X.Y.Z)")
    ap.add_argument("--key", type=Path, action="append", default=[], help="release key")
    ap.add_argument("--gateway", action="append", default=[])
    ap.add_argument("--site", action="append", default=[])
    ap.add_argument("--tag", action="append", default=[])
    ap.add_argument("--expires-days", type=int, default=90)
    ap.add_argument("--find-links", type=Path, action="append", default=[],
                    help="a directory of wheels to take dependencies from (repeatable)")
    ap.add_argument("--offline", action="store_true",
                    help="never ask the package index: every dependency from --find-links")
    ap.add_argument("--json", action="store_true", help="show: print JSON")
    ap.add_argument("--listen", default="0.0.0.0:8443", help="serve: HOST:PORT")
    ap.add_argument("--tls-cert", type=Path, help="serve: certificate (PEM)")
    ap.add_argument("--tls-key", type=Path, help="serve: private key (PEM)")
    ap.add_argument("--insecure-http", action="store_true",
                    help="serve: plain HTTP (tests only; the artefacts are hash-checked anyway)")


def release_command(args: argparse.Namespace) -> int:
    """Run ``edge-fleet release``."""
    if args.action == "build":
        if not args.key:
            raise CommandError("release build needs --key FILE (a release key)")
        if not (args.gateway or args.site or args.tag):
            raise CommandError("release build needs a target: --gateway, --site or --tag")
        now = int(time.time())
        started = time.monotonic()
        rel = build_release(args.src, args.releases, [load_private(k) for k in args.key],
                            version=args.version, min_from=args.min_from, issued=now,
                            expires=now + args.expires_days * DAY_S, gateways=args.gateway,
                            sites=args.site, tags=args.tag, find_links=args.find_links,
                            offline=args.offline)
        m = rel.manifest
        print(f"{rel.path}: edge-agent {m.version} (number {m.number}, from {m.min_from}), "
              f"{m.python} {','.join(m.platforms)}, {m.size} bytes, built in "
              f"{time.monotonic() - started:.1f} s")
        return 0
    if args.action == "serve":
        from edge_agent.fleet.httpd import server_tls_context
        from edge_agent.fleet.release_http import serve_releases

        host, _, port = args.listen.rpartition(":")
        tls = None
        if args.tls_cert and args.tls_key:
            tls = server_tls_context(args.tls_cert, args.tls_key)
        elif not args.insecure_http:
            raise CommandError("release serve needs --tls-cert and --tls-key "
                               "(or --insecure-http)")
        serve_releases(args.releases, host or "0.0.0.0", int(port), tls)
        return 0
    if args.action == "list":
        rels = list_releases(args.releases)
        print(f"{'version':<10} {'number':>9} {'from':<10} {'python':<7} {'bytes':>11} platforms")
        for rel in rels:
            m = rel.manifest
            print(f"{m.version:<10} {m.number:>9} {m.min_from:<10} {m.python:<7} {m.size:>11} "
                  f"{','.join(m.platforms)}")
        print(f"{len(rels)} releases in {args.releases}")
        return 0
    if not args.version:
        raise CommandError("release show needs a VERSION")
    info = describe(find_release(args.releases, args.version))
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    m = info["manifest"]
    print(f"release {m['version']} (number {m['number']}) at {info['path']}")
    print(f"  upgrades from {m['min_from']} or later; {m['python']} on "
          f"{', '.join(m['platforms'])}")
    for art in m["artefacts"]:
        print(f"  {art['name']}: {art['length']} bytes sha256 {art['sha256']} "
              f"[{info['files'].get(art['name'])}]")
    b = info["bundle"]
    if isinstance(b, dict):
        print(f"  bundle: {b['kind']} v{b['version']} targets {b['targets']} issued "
              f"{b['issued']} expires {b['expires']} signed by "
              f"{', '.join(k[:12] for k in b['keyids'])}")
    else:
        print(f"  bundle: {b}")
    return 0


def add_release_rollout_arguments(ap: argparse.ArgumentParser) -> None:
    """``rollout start --release VERSION [--releases DIR]``: roll a release out in waves."""
    ap.add_argument("--release", help="roll out this software release (X.Y.Z) instead of a "
                    "config")
    ap.add_argument("--releases", type=Path,
                    default=Path(os.environ.get("EDGE_FLEET_RELEASES", "releases")),
                    help="where releases are kept (env EDGE_FLEET_RELEASES)")


def release_payload(args: argparse.Namespace) -> tuple[bytes, str, int]:
    """The signed payload, kind and bundle version of ``--release``: the release manifest."""
    manifest = find_release(args.releases, args.release).manifest
    return manifest.to_bytes(), "software", manifest.number

"""``edge-agent update bootstrap | stage | status``: the gateway's side of releases by hand.

``bootstrap`` installs the first release from a wheelhouse file (the installer's step, once);
``stage`` takes a signed software bundle file and the fleet's release URL and stages it up to
the switch, as the agent does with a bundle from ``desired/software``; ``status`` prints the
journal. The supervisor (``edge-agent supervise``) does the rest.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
from pathlib import Path

from edge_agent.protocol.errors import CommandError
from edge_agent.protocol.release import version_number
from edge_agent.update.journal import load_journal, persist
from edge_agent.update.releases import current_version, install, switch_current, unpack


def _bootstrap(args: argparse.Namespace) -> int:
    version_number(args.version)  # VerificationError (an EdgeError) names a bad spelling
    wheels = args.root / "releases" / args.version / "wheels"
    unpack(args.wheelhouse, wheels)
    install(args.root, args.version, wheels, base_python=sys.executable)
    switch_current(args.root, args.version)
    j = load_journal(args.root)
    j.target = j.committed = args.version
    j.target_number = j.committed_number = version_number(args.version)
    persist(args.root, j, "commit")
    print(f"{args.root}/current -> releases/{args.version} (committed)")
    return 0


def _stage(args: argparse.Namespace) -> int:
    from edge_agent.control.truststore import load_trust  # the verifier needs the trust
    from edge_agent.update.stage import stage_release

    ctx = None
    if args.cafile:
        ctx = ssl.create_default_context(cafile=str(args.cafile))
    report = stage_release(args.bundle.read_bytes(), load_trust(args.state_dir), args.root,
                           args.url, time.time(), max_bytes=args.max_bytes,
                           rate_bps=args.rate_bps, context=ctx)
    print(json.dumps(report, sort_keys=True))
    return 0 if report["result"] == "switched" else 1


def update_main(argv: list[str]) -> int:
    """Run ``edge-agent update``."""
    ap = argparse.ArgumentParser(prog="edge-agent update")
    sub = ap.add_subparsers(dest="action", required=True)
    p = sub.add_parser("bootstrap", help="install the first release from a wheelhouse")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--wheelhouse", type=Path, required=True)
    p.add_argument("--version", required=True)
    p = sub.add_parser("stage", help="stage a signed release up to the switch")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--url", required=True, help="the fleet's release URL (https://HOST/releases)")
    p.add_argument("--cafile", type=Path, help="CA of the fleet's HTTPS certificate")
    p.add_argument("--max-bytes", type=int, default=256 * 1024 * 1024)
    p.add_argument("--rate-bps", type=float, help="pace the download")
    p = sub.add_parser("status", help="print the update journal")
    p.add_argument("--root", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.action == "bootstrap":
        return _bootstrap(args)
    if args.action == "stage":
        return _stage(args)
    if not args.root.is_dir():
        raise CommandError(f"{args.root}: no install root")
    doc = load_journal(args.root).to_json()
    doc["current"] = current_version(args.root)
    print(json.dumps(doc, indent=1, sort_keys=True))
    return 0

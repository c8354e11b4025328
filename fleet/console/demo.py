"""The fleet side of ``make demo``: a registry that knows the demo gateway, and a console user.

``python -m edge_agent.fleet.console.demo --db URL --gateway ID --site SITE`` enrols the
gateway in the registry directly (the demo's broker takes anonymous clients, so no token
round trip is needed) and creates the operator ``demo`` with a fresh random password, which
it prints on its last line as ``user demo password ...``.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time

from edge_agent.fleet.console.accounts import Accounts
from edge_agent.fleet.registry import Registry
from edge_agent.protocol.shell import cli_command, opened

DEMO_USER = "demo"


@cli_command("edge-fleet demo setup")
def main(argv: list[str] | None = None) -> int:
    """Register the demo gateway and its console user."""
    ap = argparse.ArgumentParser(prog="edge-fleet demo setup")
    ap.add_argument("--db", required=True)
    ap.add_argument("--gateway", required=True)
    ap.add_argument("--site", required=True)
    ap.add_argument("--tag", action="append", default=[])
    args = ap.parse_args(argv)
    registry = opened("--db", args.db, lambda: Registry(args.db))
    try:
        now_ms = int(time.time() * 1000)
        registry.add_gateway(args.gateway, args.site, args.tag, now_ms)
        password = secrets.token_urlsafe(9)
        Accounts(registry).add_user(DEMO_USER, "operator", password, now_ms)
    finally:
        registry.close()
    print(f"user {DEMO_USER} password {password}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

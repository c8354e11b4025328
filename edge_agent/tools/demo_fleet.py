"""The operations-centre half of ``make demo``: fleet service, ingest and web console.

They run as child processes through their own commands (``python -m edge_agent.fleet...``):
the gateway side starts them but imports nothing of the fleet. Their output goes to log files
beside the broker's, so the terminal keeps showing the live tail.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edge_agent.config.model import SiteConfig
from edge_agent.protocol.errors import CommandError
from edge_agent.tools.devbroker import free_port
from edge_agent.tools.procs import spawn_until_ready

FLEET = [sys.executable, "-m", "edge_agent.fleet.cli"]


def start_fleet_side(cfg: SiteConfig, broker_url: str, workdir: Path,
                     procs: list[tuple[str, subprocess.Popen[bytes]]]) -> tuple[str, str, str]:
    """Start the three fleet processes (appended to ``procs``); (console URL, user, password)."""
    workdir.mkdir(parents=True, exist_ok=True)
    registry, ingest_db = f"sqlite:///{workdir / 'fleet.db'}", f"sqlite:///{workdir / 'ingest.db'}"
    setup = subprocess.run([sys.executable, "-m", "edge_agent.fleet.console.demo", "--db",
                            registry, "--gateway", cfg.gateway_id, "--site", cfg.site,
                            "--tag", "demo"], capture_output=True, text=True, check=False)
    last = setup.stdout.strip().splitlines()[-1:] or [""]
    if setup.returncode != 0 or not last[0].startswith("user "):
        raise CommandError(f"the fleet's demo setup failed: {setup.stderr.strip()[-500:]}")
    _, user, _, password = last[0].split()
    prefix = cfg.mqtt.topic_prefix
    procs.append(("fleet service", spawn_until_ready(
        [*FLEET, "serve", "--db", registry, "--broker", broker_url, "--prefix", prefix],
        workdir / "service.log", None, what="the fleet service")))
    procs.append(("ingest", spawn_until_ready(
        [*FLEET, "ingest", "--db", ingest_db, "--broker", broker_url, "--prefix", prefix,
         "--client-id", "edge-ingest-demo"], workdir / "ingest.log", None, what="the ingest")))
    port = free_port()
    procs.append(("console", spawn_until_ready(
        [*FLEET, "console", "--db", registry, "--ingest-db", ingest_db, "--listen",
         f"127.0.0.1:{port}"], workdir / "console.log", "console http",
        what="the web console")))
    return f"http://127.0.0.1:{port}", user, password

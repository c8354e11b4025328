"""The demo's own operations centre: keys, a root delegating an operator, the fleet service, the
demo gateway enrolled in it (so signed commands work on the demo site), the ingest and the web
console with a demo operator.

Done the way an operator does it, with the product's commands as child processes (the gateway
never imports the fleet): ``edge-fleet keygen`` (root, release, operator), ``edge-fleet root
init --operator-key``, ``edge-fleet enroll-token``, ``edge-fleet serve`` (enrolment over plain
HTTP on loopback, and the intake that stores every ``cmd-result``), then ``edge-agent enroll``
into the demo's state dir, pinning the root by its fingerprint; ``edge-fleet user add``,
``edge-fleet ingest`` and ``edge-fleet console`` (with the operator key: its Commands page
signs and sends). The fleet files and logs live in ``DIR/``
(``run/demo-fleet`` beside the demo's state dir) and are made fresh on every run.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent.config.model import SiteConfig
from edge_agent.protocol.errors import CommandError
from edge_agent.tools.devbroker import free_port
from edge_agent.tools.procs import spawn_until_ready, stop_process

FLEET = [sys.executable, "-m", "edge_agent.fleet.cli"]
AGENT = [sys.executable, "-m", "edge_agent"]
SERVE_UP_S = 20.0
DEMO_USER = "demo"


@dataclass
class DemoFleet:
    """The running demo fleet: its service process and what an operator needs to command."""

    serve: subprocess.Popen[bytes]
    db: str
    operator_key: Path
    # the ingest and the console when started (``with_console``), and how to sign in
    others: list[tuple[str, subprocess.Popen[bytes]]]
    console_url: str = ""
    password: str = ""

    def send_line(self, cfg: SiteConfig, broker_url: str) -> str:
        """The command line that dims a lamp of the demo site."""
        return (f"{sys.executable} -m edge_agent.fleet.cli cmd send --db {self.db} --gateway "
                f"{cfg.gateway_id} dim 40 --lamps lamp-101 --key {self.operator_key} "
                f"--broker {broker_url}")


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise CommandError(f"demo fleet: {' '.join(argv[2:5])} failed: {done.stderr.strip()}",
                           status=1)
    return done.stdout


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + SERVE_UP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CommandError(f"demo fleet: edge-fleet serve exited ({proc.returncode})",
                               status=1)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise CommandError(f"demo fleet: edge-fleet serve did not listen on {port}", status=1)


def start_demo_fleet(cfg: SiteConfig, broker_url: str, fleet_dir: Path, *,
                     with_console: bool = False) -> DemoFleet:
    """Make the keys and root, start the service, enrol the demo gateway (and with
    ``with_console`` start the ingest and the console with a demo operator); the running fleet."""
    if fleet_dir.exists():
        shutil.rmtree(fleet_dir)  # a fresh fleet each run: the demo gateway is re-enrolled
    fleet_dir.mkdir(parents=True)
    db = f"sqlite:///{fleet_dir / 'fleet.db'}"
    for name in ("root", "release", "operator"):
        _run([*FLEET, "keygen", name, "--dir", str(fleet_dir)])
    _run([*FLEET, "root", "init", "--db", db, "--root-key", str(fleet_dir / "root.pub"),
          "--release-key", str(fleet_dir / "release.pub"),
          "--operator-key", str(fleet_dir / "operator.pub"), "--sign", str(fleet_dir / "root.key")])
    shown = _run([*FLEET, "root", "show", "--db", db])
    fingerprint = shown.split("fingerprint", 1)[1].split()[0]
    token = fleet_dir / "token"
    token.write_text(_run([*FLEET, "enroll-token", "--db", db, "--gateway", cfg.gateway_id,
                           "--site", cfg.site, "--tag", "demo"]).strip())
    token.chmod(0o600)
    port = free_port()
    serve = subprocess.Popen([*FLEET, "serve", "--db", db, "--broker", broker_url,
                              "--http", f"127.0.0.1:{port}", "--insecure-http",
                              "--instance", "demo", "--prefix", cfg.mqtt.topic_prefix],
                             stdout=(fleet_dir / "serve.log").open("wb"),
                             stderr=subprocess.STDOUT)
    fleet = DemoFleet(serve, db, fleet_dir / "operator.key", [])
    try:
        _wait_listening(port, serve)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        _run([*AGENT, "enroll", "--fleet", f"http://127.0.0.1:{port}", "--token-file",
              str(token), "--state-dir", str(cfg.state_dir), "--root-sha256", fingerprint,
              "--insecure-http", "--force"])
        if with_console:
            _start_console(fleet, cfg, broker_url, fleet_dir)
    except BaseException:
        for _name, proc in reversed(fleet.others):
            stop_process(proc)
        stop_process(serve)
        raise
    return fleet


def _start_console(fleet: DemoFleet, cfg: SiteConfig, broker_url: str, fleet_dir: Path) -> None:
    """The demo operator's account, the ingest (the console's readings) and the console."""
    fleet.password = secrets.token_urlsafe(9)
    secret = fleet_dir / "demo-password"
    secret.write_text(fleet.password + "\n")
    secret.chmod(0o600)
    _run([*FLEET, "user", "add", DEMO_USER, "--role", "operator", "--db", fleet.db,
          "--password-file", str(secret)])
    ingest_db = f"sqlite:///{fleet_dir / 'ingest.db'}"
    fleet.others.append(("ingest", spawn_until_ready(
        [*FLEET, "ingest", "--db", ingest_db, "--broker", broker_url, "--prefix",
         cfg.mqtt.topic_prefix, "--client-id", "edge-ingest-demo"], fleet_dir / "ingest.log",
        None, what="the ingest")))
    port = free_port()
    # the demo's operator key and broker: the Commands page signs and sends (docs/console.md)
    fleet.others.append(("console", spawn_until_ready(
        [*FLEET, "console", "--db", fleet.db, "--ingest-db", ingest_db, "--listen",
         f"127.0.0.1:{port}", "--operator-key", str(fleet.operator_key), "--broker", broker_url,
         "--prefix", cfg.mqtt.topic_prefix], fleet_dir / "console.log", "console http",
        what="the web console")))
    fleet.console_url = f"http://127.0.0.1:{port}"

"""Simulated gateways for rollout tests and the scale benchmark: many in one process.

Each gateway is one MQTT connection (its own aiomqtt client, its own credentials if enrolled)
running the real gateway-side code, ``edge_agent.control.plane.ControlPlane`` with its verifier and
persisted trust state and journal; only the agent behind it is simulated: "validate" parses the
payload as TOML and checks the gateway id if it names one, "dry run" and "switch" write the
running config file, and "healthy" is true unless the gateway is listed in ``--fail`` and the
config contains the marker ``broken`` (injected failures).

    python -m tests.support.simgateway --broker URL --state-root DIR GW [GW ...]

Each gateway's state dir is DIR/GW and must hold a trust.json (enrolment writes one). Prints
"ready N" when all are subscribed, then one line per apply report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import signal
import sys
import tomllib
from pathlib import Path
from typing import Any

import aiomqtt

from edge_agent.control.plane import ControlPlane
from edge_agent.protocol import topics
from edge_agent.protocol.backoff import Backoff
from edge_agent.protocol.broker import client_options, parse_broker_url
from edge_agent.protocol.errors import ConfigError
from edge_agent.protocol.fileio import atomic_write

log = logging.getLogger(__name__)
RUNNING_FILE = "running.toml"


class SimGateway:
    """One simulated gateway: an MQTT client feeding bundles to a real ControlPlane."""

    def __init__(self, gateway: str, state_dir: Path, broker_url: str, *, prefix: str = "edge",
                 fail: bool = False, hold_s: float = 0.0, fsync: bool = True) -> None:
        self.gateway = gateway
        self.state_dir = state_dir
        self.prefix = prefix
        self.fail = fail
        ident = state_dir / "identity.json"
        creds: dict[str, Any] = json.loads(ident.read_bytes())["mqtt"] if ident.exists() else {}
        self.mqtt = parse_broker_url(broker_url, username=creds.get("username"),
                                     password=creds.get("password"), topic_prefix=prefix)
        self.control: ControlPlane[bytes] = ControlPlane(
            state_dir, validate=self._validate, dry_run=self._dry_run, switch=self._switch,
            healthy=self._healthy, hold_s=hold_s, check_every_s=max(0.05, hold_s / 5),
            fsync=fsync)
        self.running: bytes | None = None
        self.candidate: bytes | None = None
        self.reports: list[dict[str, Any]] = []
        # The latest report until the broker acknowledged it. As the agent does (it retries a
        # report until an uplink takes it), a report whose publish failed (a connection lost,
        # a PUBACK later than the client's timeout in a starved process) is sent again on the
        # next connection: without this, a gateway that applied but lost its report answers
        # the retained offer redelivered on reconnect with "current", which is not reported,
        # and the fleet, never hearing of it, fails it at the deadline.
        self.unsent: dict[str, Any] | None = None

    # the simulated agent
    def _validate(self, payload: bytes) -> bytes:
        try:
            doc = tomllib.loads(payload.decode())
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config is not TOML: {exc}") from exc
        gw = doc.get("gateway", {}).get("id") if isinstance(doc.get("gateway"), dict) else None
        if gw is not None and gw != self.gateway:
            raise ConfigError(f"config is for gateway {gw!r}, this is {self.gateway!r}")
        return payload

    async def _dry_run(self, cfg: bytes) -> None:
        self.candidate = cfg

    async def _switch(self, cfg: bytes) -> None:
        self.running = cfg
        atomic_write(self.state_dir / RUNNING_FILE, cfg, fsync=self.control.fsync)

    async def _healthy(self) -> tuple[bool, str]:
        if self.fail and self.running is not None and b"broken" in self.running:
            return False, "device meter not polled since the switch"
        return True, "devices polled, uplink up"

    def boot(self) -> dict[str, Any] | None:
        """Recover after a restart and run the last known good config."""
        good, report = self.control.boot()
        self.running = good
        if good is not None:
            atomic_write(self.state_dir / RUNNING_FILE, good, fsync=self.control.fsync)
        return report

    async def _publish_report(self, client: aiomqtt.Client, report: dict[str, Any]) -> None:
        if report is not self.unsent:
            self.reports.append(report)
            print(f"report {self.gateway} {json.dumps(report, sort_keys=True)}", flush=True)
        self.unsent = report
        await client.publish(topics.reported_topic(self.prefix, self.gateway),
                             json.dumps(report, sort_keys=True).encode(), qos=1, retain=True)
        self.unsent = None

    async def run(self, ready: asyncio.Queue[str], boot_report: dict[str, Any] | None) -> None:
        """Connect (reconnecting with backoff) and apply every desired bundle that arrives."""
        backoff = Backoff(base_s=0.2, cap_s=5.0, rng=random.Random(self.gateway))
        signalled = False
        while True:
            try:
                async with aiomqtt.Client(identifier=self.gateway,
                                          **client_options(self.mqtt)) as client:
                    await client.subscribe(topics.desired_topic(self.prefix, self.gateway,
                                                                "config"), qos=1)
                    if boot_report is not None:
                        first, boot_report = boot_report, None
                        await self._publish_report(client, first)
                    elif self.unsent is not None:
                        await self._publish_report(client, self.unsent)
                    if not signalled:
                        signalled = True
                        await ready.put(self.gateway)
                    backoff.reset()
                    async for msg in client.messages:
                        if isinstance(msg.payload, bytes) and msg.payload:
                            report = await self.control.offer(msg.payload, self.running)
                            if report["result"] != "current":
                                await self._publish_report(client, report)
            except aiomqtt.MqttError as exc:
                log.warning("%s: %s", self.gateway, exc)
            await asyncio.sleep(backoff.next_delay())


async def run_many(gateways: list[SimGateway], stop: asyncio.Event) -> None:
    """Run every gateway until ``stop``; prints "ready N" once all are subscribed."""
    ready: asyncio.Queue[str] = asyncio.Queue()
    tasks = []
    for gw in gateways:
        tasks.append(asyncio.create_task(gw.run(ready, gw.boot()), name=gw.gateway))
        await asyncio.sleep(0)
    for _ in gateways:
        await ready.get()
    print(f"ready {len(gateways)}", flush=True)
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m tests.support.simgateway``."""
    ap = argparse.ArgumentParser(prog="simgateway", description=__doc__.split("\n")[0])
    ap.add_argument("--broker", required=True)
    ap.add_argument("--state-root", type=Path, required=True)
    ap.add_argument("--prefix", default="edge")
    ap.add_argument("--fail", default="", help="comma-separated gateways whose health gate "
                    "fails for a config containing 'broken'")
    ap.add_argument("--hold-s", type=float, default=0.0, help="health gate hold time")
    ap.add_argument("--no-fsync", action="store_true")
    ap.add_argument("gateways", nargs="+")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    failing = set(filter(None, args.fail.split(",")))
    sims = [SimGateway(gw, args.state_root / gw, args.broker, prefix=args.prefix,
                       fail=gw in failing, hold_s=args.hold_s, fsync=not args.no_fsync)
            for gw in args.gateways]

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_many(sims, stop)

    asyncio.run(runner())
    return 0


if __name__ == "__main__":
    sys.exit(main())

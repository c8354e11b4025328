"""The gateway process: runs the agent on its config and takes signed configs from the fleet.

A config bundle arrives retained on ``{prefix}/{gateway}/desired/config``. The control plane
(edge_agent/control.py) verifies it against the trust pinned at enrolment, then calls back
here to validate it (parse it as a site config), dry-run it (every device of the new config
answers one read on the live bus), switch (stop the running agent, start one on the new
config) and check health (uplink up, no device offline) for the hold time, and then commits
it or switches back. The result goes to ``{prefix}/{gateway}/reported``, retained.

A gateway that is not enrolled (no trusted state in its state directory) runs its local
config and ignores desired configs: it has nothing to verify them with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt

from edge_agent.config.loader import load_config
from edge_agent.config.model import SiteConfig
from edge_agent.control.truststore import TRUST_FILE
from edge_agent.drivers.bus import Bus, SerialBus
from edge_agent.drivers.modbus.planner import plan_reads
from edge_agent.drivers.modbus.transport import BusTransport
from edge_agent.protocol import topics
from edge_agent.protocol.clock import Clock, SystemClock
from edge_agent.protocol.errors import ConfigError, DeviceError, EdgeError, UplinkError
from edge_agent.runtime.agent import Agent
from edge_agent.runtime.scheduler import GATEWAY_NO_ANSWER
from edge_agent.runtime.systemd import Watchdog

if TYPE_CHECKING:
    from edge_agent.control.plane import ControlPlane

log = logging.getLogger(__name__)


def _endpoint(bus: Bus) -> str:
    return f"serial:{bus.port}" if isinstance(bus, SerialBus) else f"tcp:{bus.host}:{bus.port}"


class Gateway:
    """Owns the running Agent and, when enrolled, the control plane that may replace it."""

    def __init__(self, config_path: Path, *, broker_url: str | None = None,
                 health_gate_s: float = 30.0, clock: Clock | None = None) -> None:
        self.config_path = config_path
        self.broker_url = broker_url
        self.health_gate_s = health_gate_s
        self.clock = clock or SystemClock()
        self.local = load_config(config_path, broker_url=broker_url)
        self.cfg = self.local
        self.agent: Agent | None = None
        self._agent_stop = asyncio.Event()
        self._agent_task: asyncio.Task[None] | None = None
        self._offers: asyncio.Queue[bytes] = asyncio.Queue()
        self.control: ControlPlane[SiteConfig] | None = None
        if (self.local.state_dir / TRUST_FILE).exists():
            # Imported only when enrolled: the verifier's crypto costs ~6 MB of RSS.
            from edge_agent.control.plane import ControlPlane

            self.control = ControlPlane(
                self.local.state_dir, validate=self.validate, dry_run=self.dry_run,
                switch=self.switch, healthy=self.healthy, kind="config",
                hold_s=health_gate_s, clock=self.clock)

    # ------------------------------------------------------------------ callbacks

    def validate(self, payload: bytes) -> SiteConfig:
        """Parse a config payload as if it were the operator's file (same folder, same paths)."""
        folder = self.config_path.absolute().parent
        fd, name = tempfile.mkstemp(prefix=".fleet-config-", suffix=".toml", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
            cfg = load_config(Path(name), broker_url=self.broker_url)
        finally:
            os.unlink(name)
        if cfg.gateway_id != self.local.gateway_id:
            raise ConfigError(f"config bundle: gateway.id = {cfg.gateway_id!r}: expected this "
                              f"gateway's id {self.local.gateway_id!r}")
        return cfg

    async def dry_run(self, cfg: SiteConfig) -> None:
        """Every device of ``cfg`` must answer one read on the live bus (any answer counts)."""
        running = {} if self.agent is None else {
            _endpoint(t.bus): t for t in self.agent.transports.values()}
        silent: list[str] = []
        for name, bus in cfg.buses.items():
            devices = cfg.devices_on(name)
            if not devices:
                continue
            # A bus the running agent holds (a serial port is exclusive) is probed through
            # its transport, whose lock interleaves the probe with the live polls.
            shared = running.get(_endpoint(bus))
            transport = shared or BusTransport(bus)
            try:
                for d in devices:
                    first = plan_reads(d.points[:1], max_gap=0)[0]
                    reply = await transport.read(d.unit_id, first.table, first.address,
                                                 first.count)
                    if reply.error is not None or reply.exception_code in GATEWAY_NO_ANSWER:
                        why = reply.error or f"gateway exception {reply.exception_code}"
                        silent.append(f"{d.name} (unit {d.unit_id} on {name}): {why}")
            finally:
                if shared is None:
                    await transport.close()
        if silent:
            raise DeviceError("devices did not answer: " + "; ".join(silent))

    async def switch(self, cfg: SiteConfig) -> None:
        """Stop the running agent and start one on ``cfg``; EdgeError if it never gets going."""
        await self._stop_agent()
        self._start_agent(cfg)
        agent = self.agent
        assert agent is not None
        slowest = max((d.poll_interval_s for d in cfg.devices), default=1.0)
        deadline = self.clock.monotonic() + max(15.0, 3 * slowest)
        while self.clock.monotonic() < deadline:
            states = [s for sched in agent.schedulers.values() for s in sched.devices.values()]
            if agent.uplink.connected.is_set() and all(s.polls for s in states):
                return
            await self.clock.sleep(0.2)
        raise UplinkError("the new config did not get the uplink connected and every device "
                          "polled in time")

    async def healthy(self) -> tuple[bool, str]:
        """Uplink connected and no device offline."""
        agent = self.agent
        if agent is None:
            return False, "no agent running"
        if not agent.uplink.connected.is_set():
            return False, f"uplink not connected to {self.cfg.mqtt.url}"
        offline = [name for sched in agent.schedulers.values()
                   for name, s in sched.devices.items() if s.status == "offline"]
        if offline:
            return False, f"devices offline: {', '.join(sorted(offline))}"
        return True, "uplink up, all devices answering"

    # ------------------------------------------------------------------ agent lifecycle

    def _start_agent(self, cfg: SiteConfig) -> None:
        self.cfg = cfg
        self.agent = Agent(cfg, self.clock)
        if self.control is not None:
            prefix = cfg.mqtt.topic_prefix
            self.agent.uplink.subscribe(topics.desired_topic(prefix, cfg.gateway_id, "config"),
                                        self._on_desired)
        self._agent_stop = asyncio.Event()
        self._agent_task = asyncio.create_task(self.agent.run(self._agent_stop), name="agent")

    async def _stop_agent(self) -> None:
        if self._agent_task is not None:
            self._agent_stop.set()
            await self._agent_task
        self._agent_task = None
        self.agent = None

    async def _on_desired(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        if isinstance(payload, bytes | bytearray) and payload:
            # Applied by the offers task: applying stops the agent whose uplink called us.
            await self._offers.put(bytes(payload))

    async def _publish_report(self, report: dict[str, Any]) -> None:
        """Publish a control-plane report retained, waiting for an uplink for up to a minute."""
        if self.control is not None:
            report = {**report, "status": self.control.status()}
        for _ in range(60):
            agent = self.agent
            if agent is not None and agent.uplink.connected.is_set():
                with contextlib.suppress(UplinkError):
                    await agent.uplink.publish_json(topics.REPORTED, report, retain=True)
                    return
            await self.clock.sleep(1.0)
        log.warning("control report not published (no uplink): %s", report)

    async def _apply_offers(self) -> None:
        assert self.control is not None
        while True:
            blob = await self._offers.get()
            try:
                report = await self.control.offer(blob, self.cfg)
            except EdgeError as exc:  # the control plane reports; this is a last resort
                log.exception("config bundle could not be handled")
                report = {"kind": "config", "result": "failed", "reason": str(exc)}
            await self._publish_report(report)

    async def _ping_watchdog(self, watchdog: Watchdog, interval_s: float) -> None:
        # Pinged from the event loop itself: a hung loop stops the pings and systemd
        # restarts the service (WatchdogSec in the unit that install-service writes).
        while True:
            watchdog.ping()
            await self.clock.sleep(interval_s)

    # ------------------------------------------------------------------ run

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set."""
        boot_report = None
        if self.control is None:
            log.info("not enrolled (no %s in %s): running the local config; desired configs "
                     "from the fleet are ignored", TRUST_FILE, self.local.state_dir)
        else:
            good, boot_report = self.control.boot()
            if good is not None:
                try:
                    self.cfg = self.validate(good)
                    log.info("running the last config the fleet committed (v%s)",
                             self.control.journal.good_version)
                except EdgeError as exc:
                    log.error("the committed fleet config no longer loads (%s); running the "
                              "local config %s", exc, self.config_path)
        self._start_agent(self.cfg)
        watchdog = Watchdog()
        watchdog.notify_ready()
        helpers: list[asyncio.Task[None]] = []
        async with asyncio.TaskGroup() as tg:
            if watchdog.interval_s is not None:
                helpers.append(tg.create_task(self._ping_watchdog(watchdog, watchdog.interval_s),
                                              name="watchdog"))
            if self.control is not None:
                helpers.append(tg.create_task(self._apply_offers(), name="control"))
            if boot_report is not None:
                helpers.append(tg.create_task(self._publish_report(boot_report),
                                              name="boot-report"))
            await stop.wait()
            watchdog.notify_stopping()
            for task in helpers:
                task.cancel()
            await self._stop_agent()

"""The gateway process: runs the agent on its config and takes signed configs from the fleet.

A config bundle arrives retained on ``{prefix}/{gateway}/desired/config``. The control plane
(``edge_agent.control.plane``) verifies it against the trust pinned at enrolment, then calls back
here to validate it (parse it as a site config), dry-run it (every device of the new config
answers one read on the live bus), switch (stop the running agent, start one on the new
config) and check health (uplink up, no device offline) for the hold time, and then commits
it or switches back. The result goes to ``{prefix}/{gateway}/reported``, retained.

An unenrolled gateway (no trusted state) runs its local config and ignores desired configs.

Nothing stops silently: stopping the agent has a deadline (the agent's own stop budget plus a
margin; past it the agent is cancelled, and tasks that still do not end are reported), a
switch has one sized for its config, and the systemd watchdog is pinged only while the
gateway makes progress: no stop or switch past its deadline, no bus poller past its
heartbeat, no failed revert. Otherwise systemd restarts the service, on the last good config.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt

from edge_agent.config.loader import load_config, load_config_bytes
from edge_agent.config.model import SiteConfig
from edge_agent.control.local import LocalControl
from edge_agent.control.truststore import TRUST_FILE
from edge_agent.drivers.bus import Bus, DeviceConfig, SerialBus
from edge_agent.drivers.dlt645.planner import plan_meter_reads
from edge_agent.drivers.dlt645.transport import MeterTransport
from edge_agent.drivers.modbus.planner import plan_reads
from edge_agent.drivers.transport import Reply
from edge_agent.protocol import topics
from edge_agent.protocol.clock import Clock, SystemClock
from edge_agent.protocol.errors import ConfigError, DeviceError, EdgeError, UplinkError
from edge_agent.protocol.tasks import describe_tasks, stop_tasks
from edge_agent.runtime.agent import Agent, open_store, stop_budget_s
from edge_agent.runtime.buses import (
    AnyTransport,
    TransportFactory,
    open_transport,
    request_budget_s,
)
from edge_agent.runtime.lifecycle import Operations, Overrun
from edge_agent.runtime.scheduler import GATEWAY_NO_ANSWER
from edge_agent.runtime.systemd import Watchdog

if TYPE_CHECKING:
    from edge_agent.control.plane import ControlPlane

log = logging.getLogger(__name__)

STOP_MARGIN_S = 2.0        # beyond the agent's stop budget before its run is cancelled
START_MARGIN_S = 5.0       # a switch's deadline beyond stopping and getting the new one going
DRY_RUN_MARGIN_S = 5.0     # a dry run's deadline beyond its probes (opening ports, connects)
HELPERS_STOP_S = 2.0       # the gateway's own tasks (watchdog, offers) to end at exit
SWEEP_S = 2.0              # tasks still left at exit to end after their cancel
EXIT_STUCK = 70            # EX_SOFTWARE: exited although tasks would not end


def _endpoint(bus: Bus) -> str:
    return f"serial:{bus.port}" if isinstance(bus, SerialBus) else f"tcp:{bus.host}:{bus.port}"


async def _probe(transport: AnyTransport, d: DeviceConfig) -> Reply:
    """One read of ``d``'s first point through the transport of its bus's protocol."""
    if isinstance(transport, MeterTransport):
        if not d.meter_points:
            return Reply(error="the running bus speaks DL/T 645; the new config Modbus")
        return await transport.read_request(d.unit_id, plan_meter_reads(d.meter_points[:1])[0])
    if not d.points:
        return Reply(error="the running bus speaks Modbus; the new config DL/T 645")
    return await transport.read_request(d.unit_id, plan_reads(d.points[:1], max_gap=0)[0])


class Gateway:
    """Owns the running Agent and, when enrolled, the control plane that may replace it."""

    def __init__(self, config_path: Path, *, broker_url: str | None = None,
                 health_gate_s: float = 30.0, clock: Clock | None = None,
                 own_process: bool = True,
                 make_transport: TransportFactory = open_transport) -> None:
        self.config_path = config_path
        self.make_transport = make_transport
        # The gateway is the whole process (``edge-agent run``): at exit, tasks left running
        # are cancelled until they end, and if they will not the process exits anyway.
        self.own_process = own_process
        self.broker_url = broker_url
        self.health_gate_s = health_gate_s
        self.clock = clock or SystemClock()
        self.local = load_config(config_path, broker_url=broker_url)
        self.cfg = self.local
        self.agent: Agent | None = None
        self._agent_stop = asyncio.Event()
        self._agent_task: asyncio.Task[None] | None = None
        self._offers: asyncio.Queue[bytes] = asyncio.Queue()
        self.ops = Operations(self.clock)   # stops and switches in progress, with deadlines
        self.degraded: str | None = None    # set when a stop had to abandon tasks
        self.control: ControlPlane[SiteConfig] | None = None
        if (self.local.state_dir / TRUST_FILE).exists():
            # Imported only when enrolled: the verifier's crypto costs ~6 MB of RSS.
            from edge_agent.control.plane import ControlPlane

            self.control = ControlPlane(
                self.local.state_dir, validate=self.validate, dry_run=self.dry_run,
                switch=self.switch, healthy=self.healthy, kind="config",
                hold_s=health_gate_s, clock=self.clock, switch_timeout_s=self.switch_budget_s,
                dry_run_timeout_s=self.dry_run_budget_s, ops=self.ops)
        self.extras = LocalControl(self.local.state_dir, self.control, self.clock)
        self.overrides = self.extras.overrides

    # ------------------------------------------------------------------ callbacks

    def validate(self, payload: bytes) -> SiteConfig:
        """Parse a config payload in the place of the operator's file; writes nothing."""
        # From the bytes: under the unit (ProtectSystem=strict) the config's directory is
        # read-only, so no temporary file may go beside it. Relative paths resolve against the
        # operator's config directory, and every file the payload names must be there or in
        # the local state dir, which the payload cannot move (config.paths).
        cfg = load_config_bytes(payload, source="config bundle",
                                base_dir=self.config_path.absolute().parent,
                                state_dir=self.local.state_dir, broker_url=self.broker_url)
        if cfg.gateway_id != self.local.gateway_id:
            raise ConfigError(f"config bundle: gateway.id = {cfg.gateway_id!r}: expected this "
                              f"gateway's id {self.local.gateway_id!r}")
        return cfg

    async def dry_run(self, cfg: SiteConfig) -> None:
        """Every device of ``cfg`` must answer one read on the live bus (any answer counts)."""
        agent = self.agent
        running = {} if agent is None else {
            _endpoint(agent.cfg.buses[name]): t for name, t in agent.transports.items()}
        silent: list[str] = []
        for name, bus in cfg.buses.items():
            devices = cfg.devices_on(name)
            if not devices:
                continue
            # A bus the running agent holds (a serial port is exclusive) is probed through
            # its transport, whose lock interleaves the probe with the live polls.
            shared = running.get(_endpoint(bus))
            transport = shared or self.make_transport(bus)
            try:
                for d in devices:
                    reply = await _probe(transport, d)
                    if reply.error is not None or reply.exception_code in GATEWAY_NO_ANSWER:
                        why = reply.error or f"gateway exception {reply.exception_code}"
                        where = f"address {d.address}" if d.address else f"unit {d.unit_id}"
                        silent.append(f"{d.name} ({where} on {name}): {why}")
            finally:
                if shared is None:
                    await transport.close()
        if silent:
            raise DeviceError("devices did not answer: " + "; ".join(silent))

    def dry_run_budget_s(self, cfg: SiteConfig) -> float:
        """The deadline of ``dry_run(cfg)``: one read per device, each bus in turn.

        A probe on a bus the running agent holds may wait for the poll in flight first, so
        each device is allowed two reads' worth of its bus's request budget.
        """
        per_bus = (2 * request_budget_s(bus) * len(cfg.devices_on(name))
                   for name, bus in cfg.buses.items())
        return sum(per_bus) + DRY_RUN_MARGIN_S

    def _start_wait_s(self, cfg: SiteConfig) -> float:
        slowest = max((d.poll_interval_s for d in cfg.devices), default=1.0)
        return max(15.0, 3 * slowest)

    def switch_budget_s(self, cfg: SiteConfig) -> float:
        """The deadline of a switch to ``cfg``: stop the running agent, get the new one going."""
        agent = self.agent
        stopping = 0.0 if agent is None else stop_budget_s(agent.store.durable) + STOP_MARGIN_S
        return stopping + self._start_wait_s(cfg) + START_MARGIN_S

    async def switch(self, cfg: SiteConfig) -> None:
        """Stop the running agent and start one on ``cfg``; EdgeError if the old one would not
        stop or the new one never gets going."""
        await self._stop_agent()
        await self._start_agent(cfg)
        agent = self.agent
        assert agent is not None
        deadline = self.clock.monotonic() + self._start_wait_s(cfg)
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
        stalled = agent.stalled()
        if stalled:
            return False, f"buses stalled: {'; '.join(stalled)}"
        return True, "uplink up, all devices answering"

    def stuck(self) -> list[str]:
        """Why the gateway is not making progress (empty while it is): the watchdog's test."""
        reasons = self.ops.overdue()
        if self.degraded is not None:
            reasons.append(self.degraded)
        if self.control is not None and self.control.revert_failed is not None:
            reasons.append(self.control.revert_failed)
        if self.agent is not None:
            reasons += self.agent.stalled()
        return reasons

    # ------------------------------------------------------------------ agent lifecycle

    async def _start_agent(self, cfg: SiteConfig) -> None:
        store = await open_store(cfg)   # first: the agent and its uplink share it
        self.cfg = cfg
        self.agent = Agent(cfg, store, self.clock, make_transport=self.make_transport)
        if self.control is not None:
            # Bundles offered and refused survive agent switches: the plane keeps the counts.
            self.agent.health_sections["control"] = self.control.health
            prefix = cfg.mqtt.topic_prefix
            self.agent.uplink.subscribe(topics.desired_topic(prefix, cfg.gateway_id, "config"),
                                        self._on_desired)
        self.extras.attach(self.agent, cfg)
        self._agent_stop = asyncio.Event()
        self._agent_task = asyncio.create_task(self.agent.run(self._agent_stop), name="agent")

    async def _stop_agent(self) -> None:
        """Stop the running agent within its stop budget; Overrun if it left tasks running."""
        task, agent = self._agent_task, self.agent
        if task is None or agent is None:
            self._agent_task = self.agent = None
            return
        self._agent_stop.set()
        budget = stop_budget_s(agent.store.durable) + STOP_MARGIN_S
        with self.ops.step("stopping the agent", budget + STOP_MARGIN_S):
            done, _ = await asyncio.wait({task}, timeout=budget)
            if not done:
                log.error("the agent did not stop within %.0f s; cancelling it. Tasks:\n%s",
                          budget, describe_tasks(asyncio.all_tasks()))
                # One cancel, not a stream: its own stop steps run in a finally.
                await stop_tasks([task], STOP_MARGIN_S, "the agent",
                                 recancel_after_s=STOP_MARGIN_S)
        # Kept until here: a switch cut short by its deadline stops this same agent again.
        self._agent_task = self.agent = None
        left = [*agent.abandoned, *([] if task.done() else [task.get_name()])]
        if left:
            self.degraded = f"a stopped agent left tasks running: {', '.join(left)}"
            raise Overrun(self.degraded)
        if not task.cancelled():
            task.result()  # the agent's own crash, if it had one

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
                    await agent.uplink.publish_json(topics.reported_suffix(report.get("kind")),
                                                    report, retain=True)
                    return
            await self.clock.sleep(1.0)
        log.warning("control report not published (no uplink): %s", report)

    async def _apply_offers(self) -> None:
        assert self.control is not None
        while True:
            blob = await self._offers.get()
            try:
                report = await self.control.offer(blob, self.cfg)
            except Exception as exc:  # the control plane reports; this is the consumer's last
                # resort: one bundle must never end the loop that takes the next one.
                log.exception("config bundle could not be handled")
                report = {"kind": "config", "result": "failed",
                          "reason": f"{type(exc).__name__}: {exc}"}
            await self._publish_report(report)

    async def _ping_watchdog(self, watchdog: Watchdog, interval_s: float) -> None:
        # Pinged from the event loop itself, and only while the gateway makes progress: a hung
        # loop, or a loop alive around a stuck stop, switch or poller, stops the pings and
        # systemd restarts the service (WatchdogSec in the unit that install-service writes).
        withheld = False
        while True:
            reasons = self.stuck()
            if not reasons:
                if withheld:
                    log.warning("watchdog: the gateway makes progress again; pinging again")
                    watchdog.status("polling")
                withheld = False
                watchdog.ping()
            elif not withheld:
                withheld = True
                log.error("watchdog: not pinging systemd, which restarts the service after "
                          "WatchdogSec: %s. Tasks:\n%s", "; ".join(reasons),
                          describe_tasks(asyncio.all_tasks()))
                watchdog.status(f"stuck: {reasons[0]}")
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
        await self._start_agent(self.cfg)
        watchdog = Watchdog()
        watchdog.notify_ready()
        helpers: list[asyncio.Task[None]] = []
        if watchdog.interval_s is not None:
            helpers.append(asyncio.create_task(
                self._ping_watchdog(watchdog, watchdog.interval_s), name="watchdog"))
        if self.control is not None:
            helpers.append(asyncio.create_task(self._apply_offers(), name="control"))
        helpers += self.extras.tasks(lambda: self.agent, self.healthy, self._publish_report)
        if boot_report is not None:
            helpers.append(asyncio.create_task(self._publish_report(boot_report),
                                               name="boot-report"))
        crashed: BaseException | None = None
        try:
            crashed = await self._until_stop_or_crash(stop, helpers)
        finally:
            watchdog.notify_stopping()
            await stop_tasks(helpers, HELPERS_STOP_S, "the gateway's helpers")
            with contextlib.suppress(Overrun):  # logged; the exit goes on
                await self._stop_agent()
            if self.own_process:
                await self._sweep()
        if crashed is not None:
            raise crashed

    async def _until_stop_or_crash(self, stop: asyncio.Event,
                                   helpers: list[asyncio.Task[None]]) -> BaseException | None:
        """Wait for ``stop``; a helper that crashes first ends the wait with its exception."""
        waiter = asyncio.ensure_future(stop.wait())
        running: set[asyncio.Future[Any]] = {waiter, *helpers}
        try:
            while not waiter.done():
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not waiter and not task.cancelled() and task.exception():
                        log.error("gateway task %s crashed", task.get_name()
                                  if isinstance(task, asyncio.Task) else task)
                        return task.exception()
            return None
        finally:
            waiter.cancel()

    async def _sweep(self) -> None:
        """At exit, end every task still running; exit the process if some will not end.

        ``asyncio.run`` cancels leftover tasks once and then waits for them without a limit:
        one that swallows its cancel would keep a stopping gateway alive until SIGKILL.
        """
        me = asyncio.current_task()
        left = await stop_tasks([t for t in asyncio.all_tasks() if t is not me], SWEEP_S,
                                "tasks left at exit")
        if left:
            log.critical("exiting although %d tasks will not end (the store is closed; "
                         "nothing is lost)", len(left))
            logging.shutdown()
            os._exit(EXIT_STUCK)

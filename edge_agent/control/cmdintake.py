"""The command intake: ``{prefix}/{gateway}/cmd/{id}`` in, ``cmd-result/{id}`` out.

A total intake (docs/commands.md): the MQTT handler only queues the message (bounded; a full
queue is a counted rejection), and one task takes commands in order:

1. verify (``protocol.command.verify_command``: size, strict JSON, schema, root chain, the
   operator role's signatures, targets, expiry): a refusal is counted, audited and answered
   ``refused``, and claims no id;
2. idempotency: an id already in the audit log (``cmdaudit``) is answered from it, never run
   again;
3. plan (``control.commands``: profile limits, lamp names and groups, the interlocks that need
   no fresh read): a refusal is answered and audited, nothing is written;
4. ``accepted`` is audited and answered, then the writes are queued on their buses' schedulers,
   run between polls, each cabinet write after its guard's fresh read, each read back;
5. the outcome (``done`` with the read-back values, ``refused`` by an interlock with the value
   seen, ``failed`` with the error or Modbus exception) is audited and answered; a lamp
   command with a duration then holds the lamps in the lighting override store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiomqtt

from edge_agent.control.cmdaudit import FINAL, AuditLog
from edge_agent.control.commands import CommandPlan, Refusal, plan_command
from edge_agent.protocol import topics
from edge_agent.protocol.clock import Clock
from edge_agent.protocol.command import (
    FAULT,
    MAX_COMMAND,
    Command,
    check_command_id,
    verify_command,
)
from edge_agent.protocol.errors import EdgeError, UplinkError
from edge_agent.protocol.rejections import Rejections
from edge_agent.protocol.trust import TrustedState
from edge_agent.runtime.writes import WriteResult

if TYPE_CHECKING:
    from edge_agent.config.model import SiteConfig
    from edge_agent.control.plane import ControlPlane
    from edge_agent.runtime.agent import Agent

log = logging.getLogger(__name__)

QUEUE_MAX = 64          # commands waiting to run; beyond, refused (counted) until it drains
WRITE_BUDGET_S = 30.0   # a command's writes end within this (a stuck bus fails it)
PUBLISH_TRIES = 30      # seconds an answer waits for the uplink before it is only audited


class Overrides(Protocol):
    """What the intake needs of the lighting override store (control.lighting_overrides)."""

    def set(self, target: str, level_pct: float, until_s: float, command_id: str) -> Any: ...

    def clear(self, target: str) -> bool: ...


def lamp_groups(cfg: SiteConfig) -> Mapping[str, Sequence[str]]:
    """The lamp groups of the site's lighting config (none without one)."""
    return cfg.lighting.groups if cfg.lighting is not None else {}


class CommandIntake:
    """Verifies, journals, runs and answers commands for one gateway."""

    def __init__(self, state_dir: Path, trust_of: Callable[[], TrustedState], clock: Clock, *,
                 overrides: Overrides | None = None, fsync: bool = True,
                 rejection_summary_s: float = 60.0) -> None:
        self.trust_of = trust_of
        self.clock = clock
        self.overrides = overrides
        self.audit = AuditLog(state_dir, fsync=fsync)
        self.rejections = Rejections("commands", log, summary_s=rejection_summary_s,
                                     clock=clock)
        self.received = 0
        self.replayed = 0
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(QUEUE_MAX)

    # ------------------------------------------------------------------ wiring

    def attach(self, agent: Agent) -> None:
        """Subscribe the agent's uplink to this gateway's cmd/+ and add the health section."""
        cfg = agent.cfg
        agent.uplink.subscribe(topics.subscription(cfg.mqtt.topic_prefix, topics.CMD,
                                                   cfg.gateway_id), self.on_message)
        agent.health_sections["commands"] = self.health

    async def on_message(self, message: aiomqtt.Message) -> None:
        """Queue one command message (the uplink's handler: never blocks, never raises)."""
        self.received += 1
        topic = str(message.topic)
        cid = topic.rsplit("/", 1)[-1]
        payload = message.payload
        if not isinstance(payload, bytes | bytearray) or len(payload) > MAX_COMMAND:
            size = len(payload) if isinstance(payload, bytes | bytearray) else "?"
            self.rejections.reject("size", f"{topic}: payload of {size} bytes (cap "
                                   f"{MAX_COMMAND})")
            return
        try:
            self._queue.put_nowait((cid, bytes(payload)))
        except asyncio.QueueFull:
            self.rejections.reject("queue_full", f"{topic}: {QUEUE_MAX} commands waiting")

    async def run(self, agent_of: Callable[[], Agent | None]) -> None:
        """Take queued commands in order until cancelled."""
        while True:
            cid, payload = await self._queue.get()
            agent = agent_of()
            if agent is None:
                self.rejections.reject("no_agent", f"command {cid}: no agent running")
                continue

            async def answer(doc: dict[str, Any], cid: str = cid) -> None:
                await self._publish(agent_of, cid, doc)

            try:
                await self.handle(cid, payload, agent, answer)
            except Exception:  # one command must never end the loop that takes the next
                log.exception("command %s could not be handled", cid)

    # ------------------------------------------------------------------ the stages

    def _answer(self, cid: str, status: str, reason: str, cmd: Command | None = None,
                **extra: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": cid, "gateway": self.trust_of().gateway_id,
                               "status": status, "reason": reason,
                               "ts": int(self.clock.now() * 1000), **extra}
        if cmd is not None:
            doc["action"] = cmd.action
            doc["args"] = cmd.args
        return doc

    async def handle(self, cid: str, payload: bytes, agent: Agent,
                     answer: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """Run one command message through every stage, answering as each is reached."""
        try:
            check_command_id(cid)
        except ValueError as exc:
            self.rejections.reject("topic", str(exc))
            return
        for doc in await self._stages(cid, payload, agent, answer):
            await answer(doc)

    async def _stages(self, cid: str, payload: bytes, agent: Agent,
                      answer: Callable[[dict[str, Any]], Awaitable[None]]
                      ) -> list[dict[str, Any]]:
        verdict = verify_command(payload, self.trust_of(), self.clock.now())
        cmd = verdict.command
        if cmd is None:
            kind = "fault" if verdict.reason.startswith(FAULT) else "unverified"
            self.rejections.reject(kind, f"command {cid}: {verdict.reason}")
            doc = self._answer(cid, "refused", verdict.reason, verified=False)
            self.audit.append(doc | {"status": "rejected"})
            return [doc]
        if cmd.id != cid:
            reason = f"command id {cmd.id!r} published on the topic of id {cid!r}"
            self.rejections.reject("id_mismatch", reason)
            self.audit.append(self._answer(cid, "rejected", reason))
            return [self._answer(cid, "refused", reason, verified=False)]
        earlier = self.audit.seen(cid)
        if earlier is not None:
            return [self._again(cid, earlier, cmd)]
        planned = plan_command(cmd, agent.cfg, lamp_groups(agent.cfg),
                               last_plan_change_s=self.audit.last_plan_change.get,
                               now_s=self.clock.now())
        if isinstance(planned, CommandPlan) and self.overrides is None and (
                planned.override_s is not None or planned.clear_override):
            planned = Refusal("overrides", "this gateway has no lighting override store")
        if isinstance(planned, Refusal):
            doc = self._answer(cid, "refused", planned.reason, cmd, interlock=planned.interlock)
            self.audit.append(doc)
            return [doc]
        accepted = self._answer(cid, "accepted", f"{len(planned.writes)} writes queued", cmd)
        self.audit.append(accepted)
        await answer(accepted)  # before the writes: the operator sees it was taken
        return [await self._execute(cid, cmd, planned, agent)]

    def _again(self, cid: str, earlier: dict[str, Any], cmd: Command) -> dict[str, Any]:
        """The answer to an id seen before: its recorded outcome, never a second run."""
        self.replayed += 1
        if earlier.get("status") in FINAL:
            return {**earlier, "replayed": True}
        # Accepted but no outcome: a restart cut it short. Its writes may have happened.
        doc = self._answer(cid, "failed", "interrupted by a gateway restart before its "
                           "outcome was recorded; not run again", cmd)
        self.audit.append(doc)
        return {**doc, "replayed": True}

    async def _execute(self, cid: str, cmd: Command, planned: CommandPlan,
                       agent: Agent) -> dict[str, Any]:
        cfg = agent.cfg
        bus_of = {d.name: d.bus for d in cfg.devices}

        async def one(device: str, point: str, value: Any, guard: Any) -> WriteResult:
            sched = agent.schedulers.get(bus_of[device])
            if sched is None:
                return WriteResult(False, f"bus {bus_of[device]} is not running")
            return await sched.write(device, point, value, guard=guard, verify=True)

        try:
            async with asyncio.timeout(WRITE_BUDGET_S):
                results = await asyncio.gather(*(one(w.device, w.point, w.value, w.guard)
                                                 for w in planned.writes))
        except TimeoutError:
            results = [WriteResult(False, f"no outcome within {WRITE_BUDGET_S:g} s")
                       for _ in planned.writes]
        writes = [{"device": w.device, "point": w.point, "value": w.value, "ok": r.ok,
                   "readback": r.readback, "error": r.error or r.refused or None,
                   "exception_code": r.exception_code}
                  for w, r in zip(planned.writes, results, strict=True)]
        extra: dict[str, Any] = {"writes": writes}
        if cmd.action == "plan":
            extra["device"] = planned.writes[0].device
        refused = [r.refused for r in results if r.refused]
        failed = [f"{w['device']}.{w['point']}: {w['error']}" for w in writes if not w["ok"]]
        if refused:
            doc = self._answer(cid, "refused", "; ".join(refused), cmd, **extra)
        elif failed:
            codes = [r.exception_code for r in results if r.exception_code is not None]
            doc = self._answer(cid, "failed", "; ".join(failed), cmd, **extra,
                               exception_code=codes[0] if codes else None)
        else:
            doc = self._answer(cid, "done", self._hold(cid, planned), cmd, **extra)
        self.audit.append(doc)
        return doc

    def _hold(self, cid: str, planned: CommandPlan) -> str:
        """Set or clear the lighting overrides a done lamp command asks for; what was done."""
        n = len(planned.writes)
        if self.overrides is None:
            return f"{n} writes done and read back"
        if planned.clear_override:
            for target in planned.targets:
                self.overrides.clear(target)
            return f"overrides of {', '.join(planned.targets)} cleared: the schedule resumes"
        if planned.override_level is None or planned.override_s is None:
            return f"{n} writes done and read back"
        until = self.clock.now() + planned.override_s
        try:
            for target in planned.targets:
                self.overrides.set(target, planned.override_level, until, cid)
        except EdgeError as exc:
            return f"{n} writes done and read back; the override was not set: {exc}"
        return (f"{n} writes done and read back; held at {planned.override_level:g} % for "
                f"{planned.override_s} s, then the schedule resumes")

    async def _publish(self, agent_of: Callable[[], Agent | None], cid: str,
                       doc: dict[str, Any]) -> None:
        """Publish an answer on cmd-result/{id}, waiting a while for an uplink."""
        for _ in range(PUBLISH_TRIES):
            agent = agent_of()
            if agent is not None and agent.uplink.connected.is_set():
                with contextlib.suppress(UplinkError):
                    await agent.uplink.publish_json(f"{topics.CMD_RESULT}/{cid}", doc)
                    return
            await self.clock.sleep(1.0)
        log.warning("command %s: answer not published (no uplink); it is in the audit log",
                    cid)

    def health(self) -> dict[str, Any]:
        """The gateway health's ``commands`` section."""
        self.rejections.maybe_summarise()
        return {"received": self.received, "replayed": self.replayed,
                "queued": self._queue.qsize(),
                "rejected_by_reason": dict(sorted(self.rejections.counts.items())),
                "audit": self.audit.health()}


def open_intake(state_dir: Path, control: ControlPlane[Any], clock: Clock,
                overrides: Overrides) -> CommandIntake:
    """The gateway's intake, verifying against the control plane's trusted state, with the
    lighting override store the lamps' schedule uses (``control.lighting_overrides``)."""
    return CommandIntake(state_dir, lambda: control.trust, clock, overrides=overrides)

"""What the gateway adds to every agent it starts, beside signed configs: signed commands, the
lamps' schedule with its overrides, and software updates under ``edge-agent supervise``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.config.model import SiteConfig
from edge_agent.control.lighting_overrides import OverrideStore, overrides_path
from edge_agent.control.lighting_task import LightingTask
from edge_agent.control.software import SoftwareChannel
from edge_agent.protocol import topics
from edge_agent.protocol.clock import Clock
from edge_agent.runtime.agent import Agent
from edge_agent.update.healthfile import write_health

if TYPE_CHECKING:
    from edge_agent.control.cmdintake import CommandIntake
    from edge_agent.control.plane import ControlPlane


class LocalControl:
    """The command intake, the override store and the software channel of one gateway; they
    outlive agent switches (a restart keeps each override's end time, like its file)."""

    def __init__(self, state_dir: Path, control: ControlPlane[SiteConfig] | None,
                 clock: Clock) -> None:
        self.state_dir = state_dir
        self.clock = clock
        self.overrides = OverrideStore(overrides_path(state_dir), clock)
        self.commands: CommandIntake | None = None  # verified against the same root
        self.software: SoftwareChannel | None = None
        if control is not None:
            from edge_agent.control.cmdintake import open_intake

            self.commands = open_intake(state_dir, control, clock, self.overrides)
            self.software = SoftwareChannel.from_env(state_dir)  # only under the supervisor

    def attach(self, agent: Agent, cfg: SiteConfig) -> None:
        """Give a new agent the intakes and, with a ``[lighting]`` config, the schedule."""
        if self.software is not None:  # docs/updates.md
            agent.uplink.subscribe(topics.desired_topic(
                cfg.mqtt.topic_prefix, cfg.gateway_id, "software"), self.software.on_desired)
        if self.commands is not None:
            self.commands.attach(agent)
        if cfg.lighting is not None:  # the lamps follow their schedule, broker or not
            lamps = LightingTask(cfg.lighting, agent.schedulers, self.overrides, self.clock)
            agent.side_tasks["lighting"] = lamps.run
            agent.health_sections["lighting"] = lamps.health

    def tasks(self, agent_of: Callable[[], Agent | None],
              healthy: Callable[[], Awaitable[tuple[bool, str]]],
              publish_report: Callable[[dict[str, Any]], Awaitable[None]],
              ) -> list[asyncio.Task[None]]:
        """The gateway's helper tasks for these: the health file for the supervisor, the
        software channel, the command runner."""
        out = [asyncio.create_task(write_health(self.state_dir, healthy), name="health-file")]
        if self.software is not None:
            out.append(asyncio.create_task(self.software.run(publish_report), name="software"))
        if self.commands is not None:
            out.append(asyncio.create_task(self.commands.run(agent_of), name="cmd"))
        return out

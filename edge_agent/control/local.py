"""What the gateway adds to every agent it starts: signed commands and the lamps' schedule."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_agent.config.model import SiteConfig
from edge_agent.control.lighting_overrides import OverrideStore
from edge_agent.control.lighting_task import LightingTask
from edge_agent.protocol.clock import Clock
from edge_agent.runtime.agent import Agent

if TYPE_CHECKING:
    from edge_agent.control.cmdintake import CommandIntake


def attach_local_control(agent: Agent, cfg: SiteConfig, commands: CommandIntake | None,
                         overrides: OverrideStore, clock: Clock) -> None:
    """Give a new agent the command intake and, with a ``[lighting]`` config, the schedule."""
    if commands is not None:
        commands.attach(agent)
    if cfg.lighting is not None:  # the lamps follow their schedule, broker or not
        lamps = LightingTask(cfg.lighting, agent.schedulers, overrides, clock)
        agent.side_tasks["lighting"] = lamps.run
        agent.health_sections["lighting"] = lamps.health

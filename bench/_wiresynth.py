"""Sites the wire benchmark cannot run live, batched offline the way the agent batches them.

A residential site polled every 15 minutes would take hours live, and 500 devices x 30 points
on this shared 2-core machine measure the machine rather than the format; both are produced
here instead from the same parts the agent uses: each device's simulator (``DeviceSim``: the
value models and the register image the simulator serves), decoded point by point as a poll
decodes it (``extract_point``), stamped on the poll grid, passed through the agent's report
filter and batcher (``ReportFilter``, ``Batcher``: deadbands, max silence, ``max_readings``), and
sealed every ``window_s`` of simulated time or when full, as the agent's batch loop does.
"""

from __future__ import annotations

import math
from pathlib import Path

from _pollsite import SiteOptions, tcp_site_text, write_profile

from edge_agent.config.loader import load_config
from edge_agent.config.model import SiteConfig
from edge_agent.drivers.sim.device import DeviceSim, extract_point
from edge_agent.protocol.readings import Reading
from edge_agent.runtime.batcher import Batcher, ReportFilter
from edge_agent.runtime.scheduler import interval_groups


def residential_site(tmp: Path, meters: int = 20, water: int = 10) -> SiteConfig:
    """30 household meters (energy and water) on one RS-485 line, polled every 15 minutes,
    batch settings at their defaults."""
    lines = ["[gateway]", 'id = "res-gw-01"', 'site = "residential block"',
             f'state_dir = "{tmp / "state"}"',
             "[mqtt]", 'url = "mqtt://127.0.0.1:1883"', 'topic_prefix = "edge"',
             "[buses.rs485]", 'type = "serial"', f'port = "{tmp / "rs485"}"']
    for i in range(meters + water):
        profile = "energy_meter" if i < meters else "water_meter"
        lines += [f"[devices.home-{i + 1:02d}]", 'bus = "rs485"', f"unit_id = {i + 1}",
                  f'profile = "{profile}"', "poll_interval_s = 900"]
    path = tmp / "residential.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path)


def long_series_site(tmp: Path) -> SiteConfig:
    """One device of each profile but the signal cabinet, polled every second, every reading
    sent, batches of 300 s: long series, where the codec body is meant to win."""
    lines = ["[gateway]", 'id = "long-gw-01"', 'site = "long series"',
             f'state_dir = "{tmp / "state"}"',
             "[mqtt]", 'url = "mqtt://127.0.0.1:1883"', 'topic_prefix = "edge"',
             "[batch]", "window_s = 300", "max_readings = 100000", "max_silence_s = 0.5",
             "[buses.rs485]", 'type = "serial"', f'port = "{tmp / "rs485"}"']
    for i, profile in enumerate(["energy_meter", "water_meter", "pipe_sensor", "env_monitor",
                                 "streetlight"]):
        lines += [f"[devices.dev-{i + 1}]", 'bus = "rs485"', f"unit_id = {i + 1}",
                  f'profile = "{profile}"', "poll_interval_s = 1"]
    path = tmp / "long.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path)


def bench500_site(tmp: Path) -> SiteConfig:
    """The poll benchmark's 500 TCP devices x 30 points at 1 s (bench/_pollsite.py), with its
    settings: window 5 s, max_readings 5000, report-by-exception defeated (every reading sent)."""
    profile = write_profile(tmp, 30)
    devices = [(f"d{i:03d}", 20000 + i) for i in range(500)]
    opts = SiteOptions(state_dir=tmp / "state", window_s=5.0, max_readings=5000)
    path = tmp / "bench500.toml"
    path.write_text(tcp_site_text(devices, profile, opts))
    return load_config(path)


def batches(cfg: SiteConfig, start_ms: int, duration_s: float,
            seed: int = 0) -> list[list[Reading]]:
    """The batches the agent would seal over ``duration_s`` from ``start_ms`` (a grid mark)."""
    sims = {d.name: DeviceSim(d, seed) for d in cfg.devices}
    groups = {d.name: interval_groups(d) for d in cfg.devices}
    tick = 0
    for g in groups.values():
        for ms in g:
            tick = math.gcd(tick, ms)
    batcher = Batcher(cfg.batch, ReportFilter(cfg.devices, cfg.batch.max_silence_s))
    window_ms = round(cfg.batch.window_s * 1000)
    out: list[list[Reading]] = []
    next_seal = start_ms + window_ms
    t = start_ms
    while t < start_ms + duration_s * 1000:
        if t >= next_seal:
            if len(batcher):
                out.append(batcher.take())
            next_seal += window_ms
        for d in cfg.devices:
            due = [p for ms, pts in groups[d.name].items() if t % ms == 0 for p in pts]
            if not due:
                continue
            image = sims[d.name].image(t / 1000)
            polled = [Reading(d.name, p.name, t, extract_point(p, image[p.table])) for p in due]
            if batcher.add(polled):
                out.append(batcher.take())
        t += tick
    if len(batcher):
        out.append(batcher.take())
    return out

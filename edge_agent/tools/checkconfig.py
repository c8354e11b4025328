"""`edge-agent check-config`: validate a site config and summarise what it will do."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from edge_agent.config.loader import load_config
from edge_agent.config.model import SiteConfig
from edge_agent.control.lighting import describe as describe_lighting
from edge_agent.drivers.budget import line_budgets
from edge_agent.drivers.bus import Bus, DeviceConfig, FieldProtocol, TcpBus
from edge_agent.drivers.dlt645.planner import plan_meter_reads
from edge_agent.drivers.dlt645.timing import first_byte_timeout_s
from edge_agent.drivers.modbus.planner import requests_per_cycle
from edge_agent.drivers.modbus.timing import inter_frame_gap_s
from edge_agent.drivers.modbus.transport import bus_timeout_s
from edge_agent.protocol.errors import ConfigError


def _secs(seconds: float) -> str:
    return f"{seconds:g} s"


def _bus_line(bus: Bus) -> str:
    if not isinstance(bus, TcpBus) and bus.protocol is FieldProtocol.DLT645:
        wait = first_byte_timeout_s(bus)
        return (f"serial {bus.port} {bus.baudrate} {bus.bytesize}{bus.parity.value}"
                f"{bus.stopbits}, DL/T 645, reply wait {_secs(round(wait, 3))}"
                f"{' (derived)' if bus.timeout_s is None else ''}, retries {bus.retries}")
    timeout = _secs(bus_timeout_s(bus)) + (" (derived)" if bus.timeout_s is None else "")
    if isinstance(bus, TcpBus):
        return (f"tcp {bus.host}:{bus.port} framing {bus.framing.value}, timeout {timeout}, "
                f"retries {bus.retries}")
    gap = f"{inter_frame_gap_s(bus) * 1000:.3g} ms"
    return (f"serial {bus.port} {bus.baudrate} {bus.bytesize}{bus.parity.value}{bus.stopbits}"
            f", frame gap {gap}{' (derived)' if bus.inter_frame_gap_s is None else ''}, "
            f"timeout {timeout}, retries {bus.retries}")


def _requests(d: DeviceConfig, max_gap: int) -> int:
    """Requests one read of every point of ``d`` takes (blocks served, for a meter)."""
    if d.meter_points:
        return len(plan_meter_reads(d.meter_points))
    return requests_per_cycle(d.points, max_gap=max_gap)


def summarize(cfg: SiteConfig, now_s: float | None = None) -> str:
    """A readable summary of a loaded site: gateway, broker, buses with their devices, totals
    (and, with a [lighting] section, the schedules and the night after ``now_s``)."""
    m = cfg.mqtt
    auth = []
    if m.username:
        auth.append(f"user {m.username}" + (" with password" if m.password else ""))
    if m.ca_file:
        auth.append(f"CA {m.ca_file.name}")
    if m.cert_file:
        auth.append(f"client cert {m.cert_file.name}")
    lines = [
        f"config {cfg.source}",
        f"gateway {cfg.gateway_id}" + (f" at {cfg.site}" if cfg.site else "")
        + f"; state in {cfg.state_dir}; health every {_secs(cfg.health_interval_s)}",
        f"broker {m.url}" + (" (TLS)" if m.tls else "") + (f"; {', '.join(auth)}" if auth else "")
        + f"; client id {m.client_id}; topics {m.topic_prefix}/{cfg.gateway_id}/...;"
        f" keepalive {m.keepalive_s} s",
        f"batches every {_secs(cfg.batch.window_s)} or {cfg.batch.max_readings} readings; "
        f"unchanged values resent after {_secs(cfg.batch.max_silence_s)}; "
        f"planner max_gap {cfg.max_gap} registers",
    ]
    sp = cfg.sparkplug
    if sp.enabled:
        lines.append(f"Sparkplug B edge node spBv1.0/{sp.group_id}/.../{sp.edge_node_id}, "
                     f"client id {sp.client_id}; births "
                     + (f"wait for primary host {sp.primary_host_id}" if sp.primary_host_id
                        else "at once") + "; live only, QoS 0 (docs/sparkplug.md)")
    total_points = total_requests = 0
    budgets = line_budgets(cfg)
    for name, bus in cfg.buses.items():
        devices = cfg.devices_on(name)
        lines += ["", f"bus {name}: {_bus_line(bus)}"]
        rows = [("device", "unit", "profile", "points", "poll", "requests/cycle")]
        for d in devices:
            requests = _requests(d, cfg.max_gap)
            points = len(d.points) + len(d.meter_points)
            total_points += points
            total_requests += requests
            rows.append((d.name, d.address or str(d.unit_id), d.profile.name, str(points),
                         _secs(d.poll_interval_s), str(requests)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                  for r in rows] if devices else ["  (no devices)"]
        if name in budgets and devices:
            lines.append("  " + budgets[name].describe())
    lines += ["", f"total: {len(cfg.buses)} buses, {len(cfg.devices)} devices, "
              f"{total_points} points, {total_requests} requests per full poll cycle"]
    if cfg.lighting is not None:
        lines += ["", *describe_lighting(cfg.lighting, time.time() if now_s is None else now_s)]
    return "\n".join(lines)


def check_config_main(path: str, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`edge-agent check-config FILE`: print every problem and return 2, or the summary and 0."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        cfg = load_config(Path(path))
    except ConfigError as exc:
        for i, problem in enumerate(exc.problems, 1):
            print(f"{i}. {problem}", file=err)
        n = len(exc.problems)
        print(f"{n} problem{'s' if n != 1 else ''} found in {path}; nothing was changed",
              file=err)
        return 2
    print(summarize(cfg), file=out)
    # The bus budget (drivers/budget.py): a line over 100 % cannot keep its poll slots.
    over = [b for b in line_budgets(cfg).values() if b.status == "over"]
    for b in over:
        print(f"bus {b.bus} is over capacity ({b.utilisation:.0%}): poll no faster than every "
              f"{b.fastest_interval_s:.2f} s (every {b.comfortable_interval_s:.2f} s keeps it "
              "under 80 %)", file=err)
    return 2 if over else 0

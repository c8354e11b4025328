"""Generated sites for the poll-overhead benchmark: profiles and site configs (pure text + files).

The 30-point profile is generated (bench-only, written to a temp dir): 30 points in one
contiguous run of 48 holding registers, so the planner reads a device with one request, like a
meter read in one block. Its mix (float32 in two word orders, uint32, uint16 with a scale,
int16) exercises every decode path the shipped profiles use most. The one-point profile isolates
the cost of a request from the cost of the readings it carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# (type, registers, extra TOML) cycled over the points of a generated profile.
_POINT_KINDS: tuple[tuple[str, int, str], ...] = (
    ("float32", 2, ""),
    ("float32", 2, 'order = "CDAB"'),
    ("uint16", 1, "scale = 0.1"),
    ("int16", 1, "scale = 0.01"),
    ("uint32", 2, ""),
)


def profile_toml(name: str, n_points: int) -> str:
    """A profile of ``n_points`` points packed back to back from holding register 0."""
    lines = ["[profile]", f'name = "{name}"',
             f'description = "benchmark device, {n_points} contiguous points"']
    address = 0
    for i in range(n_points):
        dtype, regs, extra = _POINT_KINDS[i % len(_POINT_KINDS)]
        lines += ["", f"[points.p{i:02d}]", 'table = "holding_register"',
                  f"address = {address}", f'type = "{dtype}"']
        if extra:
            lines.append(extra)
        address += regs
    return "\n".join(lines) + "\n"


def profile_registers(n_points: int) -> int:
    """Registers spanned by ``profile_toml(_, n_points)`` (one read if <= 125)."""
    return sum(_POINT_KINDS[i % len(_POINT_KINDS)][1] for i in range(n_points))


def write_profile(directory: Path, n_points: int) -> Path:
    """Write the generated profile file and return its path."""
    path = directory / f"bench_{n_points}pt.toml"
    path.write_text(profile_toml(f"bench_{n_points}pt", n_points))
    return path


@dataclass(frozen=True, slots=True)
class SiteOptions:
    """What every generated site shares: gateway, batching and polling settings."""

    state_dir: Path
    poll_s: float = 1.0
    window_s: float = 1.0
    # Every reading is one poll interval newer than the last one sent: a silence shorter than
    # the poll interval makes the report-by-exception filter send every reading (worst case).
    max_silence_s: float = 0.5
    health_s: float = 1.0
    max_readings: int = 5000


def _header(opts: SiteOptions) -> list[str]:
    return [
        "[gateway]", 'id = "gw-bench"', 'site = "poll-overhead benchmark"',
        f'state_dir = "{opts.state_dir}"', f"health_interval_s = {opts.health_s}",
        "[mqtt]", 'url = "mqtt://127.0.0.1:1"', 'topic_prefix = "edge"',
        "[batch]", f"window_s = {opts.window_s}", f"max_readings = {opts.max_readings}",
        f"max_silence_s = {opts.max_silence_s}",
    ]


def tcp_site_text(devices: list[tuple[str, int]], profile: Path, opts: SiteOptions) -> str:
    """A site with one Modbus TCP bus (own port on 127.0.0.1) per device: (name, port)."""
    lines = _header(opts)
    for name, port in devices:
        lines += [f"[buses.{name}]", 'type = "tcp"', 'host = "127.0.0.1"', f"port = {port}",
                  "timeout_ms = 2000", "retries = 0",
                  f"[devices.{name}]", f'bus = "{name}"', "unit_id = 1",
                  f'profile = "{profile}"', f"poll_interval_s = {opts.poll_s}"]
    return "\n".join(lines) + "\n"


def pty_site_text(port: Path, n_devices: int, profile: Path, opts: SiteOptions) -> str:
    """A site with one PTY serial bus, no inter-frame gap, and ``n_devices`` on it."""
    lines = _header(opts)
    # Linux PTYs ignore the baud rate (a socat pair moves bytes as fast as both ends read);
    # inter_frame_gap_ms = 0 removes the only pacing the transport adds, so the bus runs as
    # fast as the two ends answer.
    lines += ["[buses.pty]", 'type = "serial"', f'port = "{port}"', "baudrate = 115200",
              'parity = "N"', "inter_frame_gap_ms = 0", "timeout_ms = 1000", "retries = 0"]
    for i in range(1, n_devices + 1):
        lines += [f"[devices.d{i:03d}]", 'bus = "pty"', f"unit_id = {i}",
                  f'profile = "{profile}"', f"poll_interval_s = {opts.poll_s}"]
    return "\n".join(lines) + "\n"


def split(items: list[tuple[str, int]], parts: int) -> list[list[tuple[str, int]]]:
    """``items`` dealt round-robin into ``parts`` non-empty slices (fewer if too few items)."""
    parts = max(1, min(parts, len(items)))
    return [items[i::parts] for i in range(parts)]

"""The parsed site config: frozen, slotted values (``loader`` and ``fieldbus`` parse them)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from pathlib import Path
from zoneinfo import ZoneInfo

from edge_agent.config.interlocks import Interlocks
from edge_agent.drivers.bus import Bus, DeviceConfig
from edge_agent.protocol.broker import MqttConfig

# Bus and device names become MQTT topic levels and health keys. The gateway id has its own,
# stricter rule, shared with the fleet: edge_agent.protocol.ids.check_gateway_id.
SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
SAFE_ID_TEXT = "1-64 letters, digits, '-' or '_' (a safe MQTT topic segment)"


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """How readings are grouped before they are published."""

    window_s: float = 5.0            # publish at least this often while readings arrive
    max_readings: int = 5000         # publish early when a batch reaches this size
    max_silence_s: float = 300.0     # report-by-exception: send an unchanged value this often


class SpoolPolicy(StrEnum):
    """What the spool does when a new batch would take it past its cap."""

    DROP_OLDEST = "drop-oldest"  # keep the newest data; the oldest waiting batches go
    REJECT_NEW = "reject-new"    # keep the oldest data; the new batch is not stored


class ReceiptMode(StrEnum):
    """When the spool deletes a published batch (docs/spool.md, "Receipts")."""

    AUTO = "auto"  # on PUBACK until the ingest's first receipt; from then on, on receipts
    ON = "on"      # on the ingest's receipt, or when confirm_retention_s has passed
    OFF = "off"    # on PUBACK


class SpoolSync(StrEnum):
    """SQLite ``PRAGMA synchronous`` of the spool (docs/spool.md: the NORMAL loss window)."""

    FULL = "FULL"
    NORMAL = "NORMAL"


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    """The on-disk store-and-forward spool (docs/spool.md)."""

    max_bytes: int = 256 * 1024 * 1024   # cap on the spool's files on disk
    policy: SpoolPolicy = SpoolPolicy.DROP_OLDEST
    synchronous: SpoolSync = SpoolSync.FULL
    group_commit_ms: float = 2.0         # extra wait to gather appends into one commit
    replay_msgs_per_s: float = 50.0      # backlog replay pacing: batches per second
    replay_bytes_per_s: float = 262144.0  # and bytes per second (0 disables either limit)
    live_first: bool = False             # publish new batches before the backlog
    receipts: ReceiptMode = ReceiptMode.AUTO
    confirm_retention_s: float = 7 * 86400.0  # a sent batch no receipt confirmed is then dropped
    resend_grace_s: float = 5.0          # a batch is sent again at most this often


@dataclass(frozen=True, slots=True)
class SparkplugConfig:
    """The Sparkplug B 3.0 view of the gateway (docs/sparkplug.md): off unless ``enabled``."""

    enabled: bool = False
    group_id: str = ""
    edge_node_id: str = ""               # the gateway id unless given
    primary_host_id: str | None = None   # births wait for this host's STATE online
    client_id: str | None = None         # "{the uplink's client id}-spb" unless given


# Zenith angles of the sun's centre (degrees) by name: NOAA's official sunrise/sunset and the
# three twilights.
ZENITHS = {"official": 90.833, "civil": 96.0, "nautical": 102.0, "astronomical": 108.0}
GROUP_PREFIX = "group:"


@dataclass(frozen=True, slots=True)
class DimStep:
    """A level held until a local time of night (minutes after midnight), or until dawn."""

    until_min: int | None   # None: until dawn
    level_pct: int


@dataclass(frozen=True, slots=True)
class LightSchedule:
    """On at dusk, off at dawn, dimmed by steps, on the nights ``dates`` allow (all if empty)."""

    name: str
    lamps: tuple[str, ...]             # lamp device names (groups resolved)
    zenith_deg: float = ZENITHS["official"]
    dusk_offset_min: float = 0.0       # added to sunset: +15 switches on 15 min after it
    dawn_offset_min: float = 0.0       # added to sunrise: -15 switches off 15 min before it
    steps: tuple[DimStep, ...] = (DimStep(None, 100),)
    dates: tuple[tuple[date, date], ...] = ()   # inclusive ranges of the night's dusk date


@dataclass(frozen=True, slots=True)
class LightingConfig:
    """The site's position and time zone, its lamp groups and night schedules."""

    latitude: float
    longitude: float
    timezone: str
    lamps: tuple[str, ...]             # every device with the relay and dim points
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    schedules: tuple[LightSchedule, ...] = ()
    relay_point: str = "relay_on"
    dim_point: str = "dim_command"

    @property
    def zone(self) -> ZoneInfo:
        """The site's time zone."""
        return ZoneInfo(self.timezone)

    def members(self, target: str) -> tuple[str, ...]:
        """The lamps a target (a lamp's name or ``group:NAME``) covers; empty if unknown."""
        if target.startswith(GROUP_PREFIX):
            return self.groups.get(target[len(GROUP_PREFIX):], ())
        return (target,) if target in self.lamps else ()


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """A whole site: one gateway, its uplink, its buses and devices."""

    source: Path
    gateway_id: str
    site: str
    mqtt: MqttConfig
    buses: dict[str, Bus]
    devices: tuple[DeviceConfig, ...]
    batch: BatchConfig = field(default_factory=BatchConfig)
    state_dir: Path = Path("/var/lib/edge-agent")
    health_interval_s: float = 60.0
    max_gap: int = 16  # planner: registers of hole a coalesced read may span
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    sparkplug: SparkplugConfig = field(default_factory=SparkplugConfig)
    interlocks: dict[str, Interlocks] = field(default_factory=dict)  # signal cabinets' commands
    lighting: LightingConfig | None = None   # the lamps' night schedules (config.lighting)

    def devices_on(self, bus: str) -> tuple[DeviceConfig, ...]:
        """Devices attached to the named bus, in config order."""
        return tuple(d for d in self.devices if d.bus == bus)

"""The parsed site config: frozen, slotted values. Parsing and validation live in config.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from edge_agent.drivers.model import Point
from edge_agent.drivers.profile import DeviceProfile


class Parity(StrEnum):
    """Serial parity as pyserial spells it."""

    NONE = "N"
    EVEN = "E"
    ODD = "O"


class TcpFraming(StrEnum):
    """How Modbus travels over a TCP connection."""

    SOCKET = "socket"  # Modbus TCP with the MBAP header (Modbus Messaging on TCP/IP V1.0b)
    RTU = "rtu"        # RTU frames with CRC tunnelled through a serial-to-Ethernet converter


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """Where and how the uplink connects."""

    url: str
    scheme: str                 # "mqtt", "mqtts" or "unix"
    host: str                   # hostname, or the socket path for unix://
    port: int                   # 0 for unix://
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # kept out of logs and tracebacks
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_id: str | None = None
    topic_prefix: str = "edge"
    keepalive_s: int = 30

    @property
    def tls(self) -> bool:
        """True when the connection is TLS (mqtts://)."""
        return self.scheme == "mqtts"


@dataclass(frozen=True, slots=True)
class SerialBus:
    """An RS-485 line reached through a pyserial URL (a device path, socket://, rfc2217://)."""

    name: str
    port: str
    baudrate: int = 9600
    parity: Parity = Parity.EVEN
    stopbits: int = 1
    bytesize: int = 8
    inter_frame_gap_s: float | None = None  # None: 3.5 characters, 1.75 ms above 19200 baud
    timeout_s: float | None = None          # None: derived from baud and the largest frame
    retries: int = 1


@dataclass(frozen=True, slots=True)
class TcpBus:
    """A Modbus TCP device or a serial-to-Ethernet converter."""

    name: str
    host: str
    port: int = 502
    framing: TcpFraming = TcpFraming.SOCKET
    timeout_s: float | None = None  # None: 1 s
    retries: int = 1


Bus = SerialBus | TcpBus


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """One field device: where it is, what it is, how often to read it."""

    name: str
    bus: str
    unit_id: int
    profile: DeviceProfile
    poll_interval_s: float
    points: tuple[Point, ...]  # the profile's points with this device's overrides applied


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

    def devices_on(self, bus: str) -> tuple[DeviceConfig, ...]:
        """Devices attached to the named bus, in config order."""
        return tuple(d for d in self.devices if d.bus == bus)

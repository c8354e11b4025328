"""Field buses and the devices on them: serial lines, TCP links, and where each device answers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from edge_agent.drivers.dlt645.meter import MeterPoint
from edge_agent.drivers.model import Point
from edge_agent.drivers.profile import DeviceProfile


class Parity(StrEnum):
    """Serial parity as pyserial spells it."""

    NONE = "N"
    EVEN = "E"
    ODD = "O"


class FieldProtocol(StrEnum):
    """The protocol spoken on a serial line."""

    MODBUS = "modbus"   # Modbus RTU (Modbus over serial line V1.02)
    DLT645 = "dlt645"   # DL/T 645-2007 energy meters


class TcpFraming(StrEnum):
    """How Modbus travels over a TCP connection."""

    SOCKET = "socket"  # Modbus TCP with the MBAP header (Modbus Messaging on TCP/IP V1.0b)
    RTU = "rtu"        # RTU frames with CRC tunnelled through a serial-to-Ethernet converter


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
    protocol: FieldProtocol = FieldProtocol.MODBUS
    # Silence after a request that got no reply (Modbus only). None: the default of
    # ``modbus.timing.no_reply_guard_s``, which outlasts libmodbus's 0.5 s confirmation wait.
    no_reply_guard_s: float | None = None


@dataclass(frozen=True, slots=True)
class TcpBus:
    """A Modbus TCP device or a serial-to-Ethernet converter."""

    name: str
    host: str
    port: int = 502
    framing: TcpFraming = TcpFraming.SOCKET
    timeout_s: float | None = None  # None: 1 s
    retries: int = 1
    # Silence after a request that got no reply. None: none on Modbus TCP (every device has
    # its own connection), the serial default with RTU framing (a serial line behind a converter).
    no_reply_guard_s: float | None = None


Bus = SerialBus | TcpBus


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """One field device: where it is, what it is, how often to read it.

    A Modbus device has ``points``; a DL/T 645 meter has ``address`` (its twelve digits, as
    on its nameplate), ``unit_id`` the number they spell, and ``meter_points``.
    """

    name: str
    bus: str
    unit_id: int
    profile: DeviceProfile
    poll_interval_s: float
    points: tuple[Point, ...]  # the profile's points with this device's overrides applied
    address: str = ""
    meter_points: tuple[MeterPoint, ...] = ()


class FieldSite(Protocol):
    """What the drivers need of a site: its buses and the devices on each (a SiteConfig is one)."""

    @property
    def buses(self) -> Mapping[str, Bus]: ...

    @property
    def devices(self) -> tuple[DeviceConfig, ...]: ...

    @property
    def max_gap(self) -> int:
        """Registers of hole a coalesced read may span."""
        ...

    def devices_on(self, bus: str) -> tuple[DeviceConfig, ...]:
        """Devices attached to the named bus, in config order."""
        ...

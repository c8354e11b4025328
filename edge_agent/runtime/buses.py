"""One transport and one scheduler per bus, chosen by the protocol the bus speaks.

Modbus lines and TCP links get pymodbus's ``BusTransport`` and the Modbus ``BusScheduler``;
a serial line with ``protocol = "dlt645"`` gets the ``MeterTransport`` and the
``MeterScheduler``. Both schedulers are the same ``BusPoller`` underneath, so slots,
back-off, heartbeats and health work alike on both. ``TransportFactory`` is the seam the
agent and the gateway's dry run open buses through (tests pass scripted fake buses).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

from edge_agent.drivers.bus import Bus, DeviceConfig, FieldProtocol, SerialBus
from edge_agent.drivers.dlt645 import transport as meter_transport
from edge_agent.drivers.dlt645.transport import MeterTransport
from edge_agent.drivers.modbus import transport as modbus_transport
from edge_agent.drivers.modbus.transport import BusTransport, ModbusTransport
from edge_agent.protocol.clock import Clock
from edge_agent.protocol.readings import Reading
from edge_agent.runtime.holes import HOLES_FILE, HoleStore
from edge_agent.runtime.lifecycle import Heartbeat
from edge_agent.runtime.meter_scheduler import MeterScheduler
from edge_agent.runtime.scheduler import BusScheduler

AnyTransport: TypeAlias = ModbusTransport | MeterTransport
AnyScheduler: TypeAlias = BusScheduler | MeterScheduler
TransportFactory: TypeAlias = Callable[[Bus], AnyTransport]


def _meters(bus: Bus) -> bool:
    return isinstance(bus, SerialBus) and bus.protocol is FieldProtocol.DLT645


def open_transport(bus: Bus) -> AnyTransport:
    """The transport for ``bus`` (nothing is opened before the first request)."""
    if isinstance(bus, SerialBus) and _meters(bus):
        return MeterTransport(bus)
    return BusTransport(bus)


def request_budget_s(bus: Bus) -> float:
    """The longest one read may hold ``bus``: every attempt at its worst, in its protocol."""
    if isinstance(bus, SerialBus) and _meters(bus):
        return meter_transport.request_budget_s(bus)
    return modbus_transport.request_budget_s(bus)


def open_holes(state_dir: Path) -> HoleStore:
    """The learned register holes of the agent's devices, kept in ``state_dir``."""
    return HoleStore(state_dir / HOLES_FILE)


def make_scheduler(transport: AnyTransport, devices: Sequence[DeviceConfig],
                   sink: Callable[[list[Reading]], None], clock: Clock, *, max_gap: int,
                   seed: int, heartbeat: Heartbeat, request_budget_s: float,
                   on_missed: Callable[[str, int, float], None],
                   on_status: Callable[[str, str], None] | None = None,
                   holes: HoleStore | None = None) -> AnyScheduler:
    """The scheduler polling ``devices`` through ``transport``; ``request_budget_s`` is the
    heartbeat's promise before each request (the longest one may take, with a margin)."""
    if isinstance(transport, MeterTransport):
        return MeterScheduler(transport, devices, sink, clock, seed=seed, heartbeat=heartbeat,
                              request_budget_s=request_budget_s, on_missed=on_missed,
                              on_status=on_status)
    probe_cost_s = transport.silent_probe_s if isinstance(transport, BusTransport) else 0.0
    return BusScheduler(transport, devices, sink, clock, max_gap=max_gap, seed=seed,
                        heartbeat=heartbeat, request_budget_s=request_budget_s,
                        on_missed=on_missed, on_status=on_status, probe_cost_s=probe_cost_s,
                        holes=holes)

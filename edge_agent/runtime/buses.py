"""One transport and one scheduler per bus, chosen by the protocol the bus speaks.

Modbus lines and TCP links get pymodbus's ``BusTransport`` and the Modbus ``BusScheduler``;
a serial line with ``protocol = "dlt645"`` gets the ``MeterTransport`` and the
``MeterScheduler``. Both schedulers are the same ``BusPoller`` underneath, so slots,
back-off, heartbeats and health work alike on both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from edge_agent.drivers.bus import Bus, DeviceConfig, FieldProtocol, SerialBus
from edge_agent.drivers.dlt645.transport import MeterTransport
from edge_agent.drivers.modbus.transport import BusTransport
from edge_agent.protocol.clock import Clock
from edge_agent.protocol.readings import Reading
from edge_agent.runtime.lifecycle import Heartbeat
from edge_agent.runtime.meter_scheduler import MeterScheduler
from edge_agent.runtime.scheduler import BusScheduler

AnyTransport = BusTransport | MeterTransport
AnyScheduler = BusScheduler | MeterScheduler


def open_transport(bus: Bus) -> AnyTransport:
    """The transport for ``bus`` (nothing is opened before the first request)."""
    if isinstance(bus, SerialBus) and bus.protocol is FieldProtocol.DLT645:
        return MeterTransport(bus)
    return BusTransport(bus)


def make_scheduler(transport: AnyTransport, devices: Sequence[DeviceConfig],
                   sink: Callable[[list[Reading]], None], clock: Clock, *, max_gap: int,
                   seed: int, heartbeat: Heartbeat,
                   on_missed: Callable[[str, int, float], None]) -> AnyScheduler:
    """The scheduler polling ``devices`` through ``transport``."""
    t = transport
    # The longest one request may take, every attempt timing out: the heartbeat's promise.
    budget = (1 + t.bus.retries) * (t.timeout_s + t.gap_s) + 1.0
    if isinstance(t, MeterTransport):
        return MeterScheduler(t, devices, sink, clock, seed=seed, heartbeat=heartbeat,
                              request_budget_s=budget, on_missed=on_missed)
    return BusScheduler(t, devices, sink, clock, max_gap=max_gap, seed=seed,
                        heartbeat=heartbeat, request_budget_s=budget, on_missed=on_missed)

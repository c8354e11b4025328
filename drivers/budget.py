"""The line budget of every serial bus of a site, whatever protocol it speaks (pure).

Modbus RTU lines are budgeted by ``modbus.timing`` and DL/T 645 lines by ``dlt645.timing``;
both give a ``BusBudget``, so check-config and doctor judge every line alike.
"""

from __future__ import annotations

from edge_agent.drivers.bus import FieldProtocol, FieldSite, SerialBus
from edge_agent.drivers.dlt645.timing import meter_line_budget
from edge_agent.drivers.modbus.timing import BusBudget, bus_budget


def line_budgets(cfg: FieldSite) -> dict[str, BusBudget]:
    """Bus name -> budget for every serial bus with devices, in config order."""
    out = bus_budget(cfg)
    for name, bus in cfg.buses.items():
        if isinstance(bus, SerialBus) and bus.protocol is FieldProtocol.DLT645:
            out[name] = meter_line_budget(
                bus, [(d.name, d.poll_interval_s, d.meter_points) for d in cfg.devices_on(name)])
    return {name: out[name] for name in cfg.buses if name in out}

"""``edge-agent read DEVICE POINT`` for a DL/T 645 meter: one identifier read and decoded.

Through the same ``MeterTransport`` the agent polls with, so what it prints is what the agent
would report. Meters are never written (``READ_ONLY``).
"""

from __future__ import annotations

from typing import TextIO

from edge_agent.config.model import SiteConfig
from edge_agent.drivers.bus import DeviceConfig, SerialBus
from edge_agent.drivers.dlt645.frame import error_text
from edge_agent.drivers.dlt645.planner import MeterRead, decode_meter_read
from edge_agent.drivers.dlt645.transport import MeterTransport
from edge_agent.protocol.errors import ConfigError


async def read_meter_point(cfg: SiteConfig, dev: DeviceConfig, point: str, out: TextIO) -> int:
    """Read one point of a meter; 0 with the value printed, 1 when the meter failed."""
    pt = next((p for p in dev.meter_points if p.name == point), None)
    if pt is None:
        raise ConfigError(f"meter {dev.name!r} (profile {dev.profile.name}) has no point "
                          f"{point!r}; points: " + ", ".join(p.name for p in dev.meter_points))
    bus = cfg.buses[dev.bus]
    assert isinstance(bus, SerialBus)  # meters are only configured on DL/T 645 serial buses
    where = f"{dev.name}.{pt.name} (address {dev.address}, identifier {pt.di:08X}, bus {dev.bus})"
    transport = MeterTransport(bus)
    try:
        req = MeterRead(pt.di, (pt,))
        reply = await transport.read_request(dev.unit_id, req)
    finally:
        await transport.close()
    if reply.exception_code is not None:
        print(f"{where}: the meter refused: {error_text(reply.exception_code)} "
              f"(error byte {reply.exception_code:#04x})", file=out)
        return 1
    if reply.data is None:
        print(f"{where}: no reply ({reply.error}); check the address, wiring and line "
              "settings", file=out)
        return 1
    reading = decode_meter_read(req, bytes(reply.data), device=dev.name, ts_ms=0)[0]
    raw = bytes(reply.data).hex(" ").upper()
    if reading.value is None:
        print(f"{where}: cannot decode {raw} as {pt.fmt.pattern}", file=out)
        return 1
    unit = f" {pt.unit}" if pt.unit else ""
    print(f"{where} = {reading.value}{unit}  (data {raw}, {reply.latency_s * 1000:.0f} ms)",
          file=out)
    return 0

"""The DL/T 645 transport over a real socat PTY pair, against simulated meters in this process:
follow-up frames, faults as reply values, the read command for meters."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from edge_agent.config.loader import load_config
from edge_agent.config.model import SiteConfig
from edge_agent.control.gateway import Gateway
from edge_agent.drivers.bus import SerialBus
from edge_agent.drivers.dlt645.planner import MeterRead, decode_meter_read, plan_meter_reads
from edge_agent.drivers.dlt645.transport import MeterTransport
from edge_agent.drivers.sim.device import Fault
from edge_agent.drivers.sim.meter import MeterSim
from edge_agent.drivers.sim.runner import build_site, run_site
from edge_agent.drivers.sim.server import SiteSim
from edge_agent.protocol.clock import SystemClock
from edge_agent.protocol.errors import DeviceError
from edge_agent.tools.commission import read_main, write_main

pytestmark = pytest.mark.integration


def _cfg(tmp_path: Path) -> SiteConfig:
    (tmp_path / "site.toml").write_text(
        '[gateway]\nid = "gw"\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n'
        f'[buses.m]\ntype = "serial"\nprotocol = "dlt645"\nport = "{tmp_path / "m"}"\n'
        'baudrate = 2400\nparity = "N"\ntimeout_ms = 100\n'
        '[devices.one]\nbus = "m"\naddress = "000000000001"\nprofile = "dlt645_meter"\n'
        'poll_interval_s = 5\n'
        '[devices.two]\nbus = "m"\naddress = "000000000002"\nprofile = "dlt645_meter"\n'
        'poll_interval_s = 5\n')
    return load_config(tmp_path / "site.toml")


def _serve(tmp_path: Path, body: Callable[[SiteConfig, SiteSim, MeterTransport],
                                          Awaitable[None]]) -> None:
    cfg = _cfg(tmp_path)
    site = build_site(cfg, SystemClock(), seed=5)

    async def main() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        sim = asyncio.create_task(run_site(cfg, control_path=None, stop=stop, site=site,
                                           on_ready=lambda _s: ready.set()))
        await asyncio.wait_for(ready.wait(), 15)
        bus = cfg.buses["m"]
        assert isinstance(bus, SerialBus)
        transport = MeterTransport(bus)
        try:
            await body(cfg, site, transport)
        finally:
            await transport.close()
            stop.set()
            await sim

    asyncio.run(main())


def test_a_long_reply_is_completed_with_follow_up_frames(tmp_path: Path) -> None:
    async def body(cfg: SiteConfig, site: SiteSim, t: MeterTransport) -> None:
        meter: MeterSim = site.meters["one"]
        meter.max_data = 10  # 4 identifier bytes + 6 data bytes per frame
        site.freeze(True)
        dev = cfg.devices[0]
        energy = next(r for r in plan_meter_reads(dev.meter_points) if r.di == 0x0001FF00)
        requests_before = t.stats.requests
        reply = await t.read_request(dev.unit_id, energy)
        assert reply.data is not None and len(reply.data) == 5 * 4, reply
        # 20 data bytes: 6 in the first frame, 5 in each follow-up (one byte is its SEQ).
        assert t.stats.requests - requests_before == 1 + 3
        got = {r.point: r.value for r in decode_meter_read(energy, bytes(reply.data),
                                                           device="one", ts_ms=0)}
        served = meter.values(site.now())
        assert got == {p.name: served[p.name] for p in energy.points}

    _serve(tmp_path, body)


def test_faults_come_back_as_reply_values(tmp_path: Path) -> None:
    async def body(cfg: SiteConfig, site: SiteSim, t: MeterTransport) -> None:
        one, two = cfg.devices
        volts = MeterRead(0x02010100, tuple(p for p in one.meter_points if p.di == 0x02010100))
        site.meters["two"].set_fault(Fault.EXCEPTION, 0x04)
        refused = await t.read_request(two.unit_id, volts)
        assert refused.exception_code == 0x04 and refused.data is None
        site.meters["two"].set_fault(Fault.BAD_CRC)
        garbled = await t.read_request(two.unit_id, volts, attempts=1)
        assert garbled.error is not None and "checksum" in garbled.error
        site.meters["two"].set_fault(Fault.SILENT)
        silent = await t.read_request(two.unit_id, volts, attempts=2)
        assert silent.error == "no reply" and t.stats.timeouts >= 3
        # A meter that is not there: no reply; the healthy one still answers at once after.
        absent = await t.read_request(7, volts, attempts=1)
        assert absent.error == "no reply"
        ok = await t.read_request(one.unit_id, volts)
        assert ok.data is not None and len(ok.data) == 2
        assert site.meters["one"].answered >= 1

    _serve(tmp_path, body)


def test_a_port_that_cannot_open_is_an_error_value(tmp_path: Path) -> None:
    bus = SerialBus("m", str(tmp_path / "nothing-here"), baudrate=2400)
    transport = MeterTransport(bus)

    async def main() -> None:
        reply = await transport.read_request(1, MeterRead(0x00010000, ()), attempts=1)
        assert reply.error is not None and reply.error.startswith("cannot open")
        await transport.close()

    asyncio.run(main())


def test_read_and_write_commands_on_a_meter(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()

    async def body(cfg: SiteConfig, site: SiteSim, t: MeterTransport) -> None:
        status = await asyncio.to_thread(read_main, ["-c", str(tmp_path / "site.toml"), "one",
                                                     "voltage_b"], out)
        assert status == 0, out.getvalue()

    _serve(tmp_path, body)
    assert "one.voltage_b (address 000000000001, identifier 02010200, bus m) = " in out.getvalue()
    assert write_main(["-c", str(tmp_path / "site.toml"), "one", "voltage_b", "1", "--yes"]) == 1
    assert "read here, not written" in capsys.readouterr().err


def test_a_config_dry_run_probes_meters_through_their_protocol(tmp_path: Path) -> None:
    """Before a new config is applied every meter must answer one read on the live bus."""
    async def body(cfg: SiteConfig, site: SiteSim, t: MeterTransport) -> None:
        gateway = Gateway(tmp_path / "site.toml", own_process=False)
        await gateway.dry_run(cfg)  # both meters answer: no error
        site.meters["two"].set_fault(Fault.SILENT)
        with pytest.raises(DeviceError, match=r"two \(address 000000000002 on m\): no reply"):
            await gateway.dry_run(cfg)
        site.meters["two"].set_fault(Fault.EXCEPTION, 0x02)
        await gateway.dry_run(cfg)  # a refusal is an answer

    _serve(tmp_path, body)

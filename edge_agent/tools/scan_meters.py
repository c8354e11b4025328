"""``edge-agent scan PORT --protocol dlt645``: find DL/T 645 meters at unknown addresses.

For each candidate line setting (2400 8E1 first: what meters run) one broadcast read-address
asks every meter at once; silence means no meter at that setting. If meters answered, the
narrowing wildcard search (``drivers/dlt645/search.py``) finds each one's address, then
each found meter is read once for its forward active energy to confirm it serves the
shipped profile, and a draft site config with a ``protocol = "dlt645"`` bus is written.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from edge_agent.drivers.bus import FieldProtocol, SerialBus
from edge_agent.drivers.dlt645.frame import read_address_request
from edge_agent.drivers.dlt645.identifiers import IDENTIFIERS
from edge_agent.drivers.dlt645.meter import MeterPoint
from edge_agent.drivers.dlt645.planner import MeterRead, decode_meter_read
from edge_agent.drivers.dlt645.search import AddressSearch, classify
from edge_agent.drivers.dlt645.timing import (
    ADDRESS_REQUEST_CHARS,
    address_probe_s,
    char_time_s,
    first_byte_timeout_s,
)
from edge_agent.drivers.dlt645.transport import MeterTransport
from edge_agent.drivers.modbus.scan import ScanSetting, candidate_settings, parse_framing
from edge_agent.tools.commission import serial_setting_error

METER_BAUDS = (2400, 1200, 4800, 9600)
METER_FRAMINGS = "8E1,8N1"
# How long a probe waits for a meter to start answering. The standard allows up to 500 ms
# (4.3.3); most meters answer within 100 ms, and a sweep of 100 silent patterns per level
# pays this wait 100 times, so the scan waits 200 ms unless told otherwise.
DEFAULT_SCAN_TURNAROUND_S = 0.200
CONFIRM_DI = 0x00010000  # forward active energy total: every meter serves it (A.1)
PROFILE = "dlt645_meter"
ADDRESS_DATA = 6         # a read-address reply carries the six address bytes


@dataclass(slots=True)
class MeterSweep:
    """One setting's search: the addresses found, the probes it took, how long."""

    setting: ScanSetting
    found: list[str]
    probes: int
    collisions: int
    noisy: list[str]
    elapsed_s: float
    error: str = ""


def meter_settings(args: argparse.Namespace) -> list[ScanSetting]:
    """The settings to try, from --bauds and --framings (meter defaults when not given)."""
    bauds = [int(b) for b in (args.bauds or ",".join(map(str, METER_BAUDS))).split(",")
             if b.strip()]
    framings = [parse_framing(f) for f in (args.framings or METER_FRAMINGS).split(",")
                if f.strip()]
    return candidate_settings(bauds, framings)


def _bus(setting: ScanSetting, port: str, turnaround_s: float | None) -> SerialBus:
    return SerialBus(name="scan", port=port, baudrate=setting.baudrate, parity=setting.parity,
                     stopbits=setting.stopbits, timeout_s=turnaround_s, retries=0,
                     protocol=FieldProtocol.DLT645)


async def search_line(setting: ScanSetting, port: str, turnaround_s: float,
                      out: TextIO) -> MeterSweep:
    """Run the narrowing read-address search at one setting."""
    bus = _bus(setting, port, turnaround_s)
    listen_s = first_byte_timeout_s(bus, ADDRESS_REQUEST_CHARS)
    transport = MeterTransport(bus)
    search = AddressSearch()
    started = time.monotonic()
    try:
        while (pattern := search.next_pattern()) is not None:
            # Wait as long as a read-address exchange can take, no longer: a silent pattern
            # costs its request and the turnaround, an answered one the 6-byte reply too.
            heard, error = await transport.transact(read_address_request(pattern),
                                                    until_frame=False, listen_s=listen_s,
                                                    reply_data=ADDRESS_DATA)
            if error is not None:
                return MeterSweep(setting, [], 0, 0, [], time.monotonic() - started, error)
            outcome, address = classify(pattern, heard.frames, len(heard.rejected),
                                        heard.bytes_seen)
            before = len(search.found)
            search.record(pattern, outcome, address)
            search.salvage(heard.frames)
            for new in search.found[before:]:
                print(f"  meter {new} (pattern {pattern}, probe {search.probes})",
                      file=out, flush=True)
    finally:
        await transport.close()
    return MeterSweep(setting, search.found, search.probes, search.collisions, search.noisy,
                      time.monotonic() - started)


async def confirm(setting: ScanSetting, port: str, addresses: Sequence[str]) -> dict[str, str]:
    """Address -> what one read of forward active energy said (its value, or the problem)."""
    ident = IDENTIFIERS[CONFIRM_DI]
    point = MeterPoint("energy_forward_total", CONFIRM_DI, ident.fmt, ident.unit)
    transport = MeterTransport(_bus(setting, port, None))  # the standard's 500 ms wait
    seen: dict[str, str] = {}
    try:
        for address in addresses:
            reply = await transport.read_request(int(address), MeterRead(CONFIRM_DI, (point,)),
                                                 attempts=2)
            if reply.data is None:
                seen[address] = reply.error or f"refused (error byte {reply.exception_code})"
                continue
            r = decode_meter_read(MeterRead(CONFIRM_DI, (point,)), bytes(reply.data),
                                  device=address, ts_ms=0)[0]
            seen[address] = f"{r.value} kWh" if r.value is not None else "undecodable reply"
    finally:
        await transport.close()
    return seen


def draft_meter_site(port: str, setting: ScanSetting, found: dict[str, str], *,
                     gateway_id: str = "CHANGE-ME", poll_interval_s: float = 60.0) -> str:
    """A site config TOML for the meters a scan found."""
    parity = setting.parity.value
    out = [
        f"# Draft written by `edge-agent scan {port} --protocol dlt645`: {len(found)} meter(s) "
        f"at {setting.label()}.",
        "# Fill in the gateway id and broker, name the meters, then run",
        "#   edge-agent check-config THIS_FILE",
        "",
        "[gateway]",
        f'id = "{gateway_id}"',
        "",
        "[mqtt]",
        'url = "mqtts://broker.example:8883"',
        "",
        "[buses.meters]",
        'type = "serial"',
        'protocol = "dlt645"',
        f'port = "{port}"',
        f"baudrate = {setting.baudrate}",
        f'parity = "{parity}"',
        f"stopbits = {setting.stopbits}",
    ]
    for address, seen in found.items():
        out += ["", f"# read forward active energy: {seen}", f"[devices.meter-{address}]",
                'bus = "meters"', f'address = "{address}"', f'profile = "{PROFILE}"',
                f"poll_interval_s = {poll_interval_s:g}"]
    return "\n".join(out) + "\n"


def probe_estimate_s(setting: ScanSetting, answered: int, silent: int,
                     turnaround_s: float) -> float:
    """The timing model's time for a search: answered probes' exchanges, silent ones' waits."""
    bus = _bus(setting, "-", turnaround_s)
    silent_s = ADDRESS_REQUEST_CHARS * char_time_s(bus) + turnaround_s
    return answered * address_probe_s(bus) + silent * silent_s


async def scan_meters(args: argparse.Namespace, out: TextIO) -> int:
    """The whole meter scan; 0 when meters were found, 1 when none."""
    turnaround = (args.turnaround_ms / 1000 if args.turnaround_ms is not None
                  else DEFAULT_SCAN_TURNAROUND_S)
    for setting in meter_settings(args):
        problem = serial_setting_error(args.port, _bus(setting, args.port, turnaround))
        if problem:
            print(f"{setting.label()}: skipped: {problem}", file=out, flush=True)
            continue
        print(f"{setting.label()}: broadcast read-address ...", file=out, flush=True)
        sweep = await search_line(setting, args.port, turnaround, out)
        if sweep.error:
            print(f"{setting.label()}: skipped: {sweep.error}", file=out, flush=True)
            continue
        if not sweep.found and not sweep.noisy:
            print(f"{setting.label()}: no meter answered", file=out, flush=True)
            continue
        answered = sweep.collisions + len(sweep.found)
        model_s = probe_estimate_s(setting, answered, sweep.probes - answered, turnaround)
        print(f"{setting.label()}: {len(sweep.found)} meter(s) in {sweep.elapsed_s:.1f} s, "
              f"{sweep.probes} probes ({sweep.collisions} collisions; timing model "
              f"{model_s:.1f} s)", file=out, flush=True)
        for pattern in sweep.noisy:
            print(f"  {pattern}: garbled replies even with the full address: noise, or two "
                  "meters with one address", file=out)
        found = await confirm(sweep.setting, args.port, sweep.found)
        for address, seen in found.items():
            print(f"meter {address}: forward active energy {seen}", file=out)
        args.out.write_text(draft_meter_site(args.port, sweep.setting, found,
                                             gateway_id=args.gateway_id))
        print(f"draft site config written to {args.out}", file=out)
        return 0
    print("no meter answered at any setting tried; check wiring (A/B swapped?), power, "
          "or widen --bauds/--framings", file=out)
    return 1


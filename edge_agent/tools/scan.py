"""``edge-agent scan PORT``: find the devices on an RS-485 line of unknown speed and addresses.

With ``--protocol dlt645`` the line's DL/T 645 meters are searched for instead
(``scan_meters``).

For each candidate setting (most common first) every unit id gets one short probe with a
timeout from the timing model (``edge_agent.drivers.modbus.scan``); present devices are
recognised by the shipped profiles' registers, and a draft site config is written. The
sweep stops at the first setting that finds devices unless ``--all`` is given (one line has
one setting).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from edge_agent.drivers.modbus.scan import (
    COMMON_BAUDS,
    DECOY_ADDRESS,
    DECOY_UNIT,
    DEFAULT_SCAN_TURNAROUND_S,
    FEW_SECONDS_PER_100,
    PROBE_ADDRESS,
    PROBE_CHARS,
    PROBE_TABLE,
    Answer,
    Found,
    LinePhase,
    ScanSetting,
    ambiguous,
    candidate_settings,
    draft_site,
    parse_framing,
    parse_ids,
    per_hundred_s,
    probe_timeout_s,
    rank_profiles,
    recognised,
    recognition_reads,
    sweep_estimate_s,
)
from edge_agent.drivers.modbus.timing import char_time_s, no_reply_guard_s
from edge_agent.drivers.modbus.transport import BusTransport
from edge_agent.drivers.profile import DeviceProfile, load_profile, shipped_profiles
from edge_agent.protocol.errors import DeviceError
from edge_agent.protocol.shell import cli_command
from edge_agent.tools.commission import port_in_use, serial_setting_error
from edge_agent.tools.scan_meters import DEFAULT_SCAN_TURNAROUND_S as METER_TURNAROUND_S
from edge_agent.tools.scan_meters import METER_BAUDS, METER_FRAMINGS, meter_settings, scan_meters

MODBUS_FRAMINGS = "8E1,8N1,8N2,8O1"
USB_ADAPTER_LATENCY_S = 0.016  # FTDI-style adapters hand bytes over in ~16 ms batches
# A sweep this much slower than the timing model is a line problem, not a busy scanner.
SLOWER_THAN_MODEL = 1.25


@dataclass(slots=True)
class SweepResult:
    """One setting's sweep: who answered and how long it took."""

    setting: ScanSetting
    ids: int
    present: list[int]
    elapsed_s: float
    estimate_s: float
    error: str = ""
    decoys: int = 0       # decoy frames sent after unanswered probes
    guard_waits: int = 0  # times the sweep stalled and waited out the no-reply guard


async def sweep(setting: ScanSetting, port: str, ids: Sequence[int], timeout_s: float,
                progress: Callable[[int, int], None] | None = None) -> SweepResult:
    """Probe every id once at ``setting``; an exception reply counts as present.

    No no-reply guard (most ids are silent: a sweep that waited 0.6 s after each would take
    minutes); after each unanswered probe a decoy frame is what a libmodbus-style slave
    waiting for that unit's reply swallows (``LinePhase`` in ``modbus.scan``).
    """
    transport = BusTransport(setting.bus(port, timeout_s, no_reply_guard_s=0.0))
    guard_s = no_reply_guard_s(setting.bus(port))
    request_s = PROBE_CHARS * char_time_s(setting.bus(port))
    phase = LinePhase()
    present: list[int] = []
    started = time.monotonic()

    def failed(error: str) -> SweepResult:
        return SweepResult(setting, len(ids), present, time.monotonic() - started, 0, error,
                           phase.decoys, phase.guard_waits)

    try:
        for uid in ids:
            decoy, silence_s = phase.before_probe(time.monotonic(), guard_s)
            if silence_s:
                await asyncio.sleep(silence_s)
            if decoy:
                problem = await transport.send_unanswered(DECOY_UNIT, DECOY_ADDRESS)
                if problem is not None:
                    return failed(problem)
            # The request ends no earlier than its frame time from now (the t3.5 wait before
            # it makes the real end later): a decoy is sent only while surely still awaited.
            request_end = time.monotonic() + request_s
            try:
                reply = await transport.read(uid, PROBE_TABLE, PROBE_ADDRESS, 1, attempts=1)
            except Exception as exc:  # termios.error from a port refusing the setting
                return failed(f"cannot open {port} at {setting.label()}: {exc}")
            if reply.error is not None and reply.error.startswith("cannot open"):
                return failed(reply.error)
            answered = reply.ok or reply.exception_code is not None
            phase.probed(answered, request_end)
            if answered:
                present.append(uid)
            if progress is not None:
                progress(uid, len(present))
    finally:
        await transport.close()
    return SweepResult(setting, len(ids), present, time.monotonic() - started, 0, "",
                       phase.decoys, phase.guard_waits)


async def identify(setting: ScanSetting, port: str, unit_ids: Sequence[int],
                   profiles: Sequence[DeviceProfile]) -> list[Found]:
    """Read every shipped profile's registers from each present device and rank the fits."""
    transport = BusTransport(setting.bus(port))  # the normal, derived timeout
    reads = recognition_reads(profiles)
    found: list[Found] = []
    try:
        for uid in unit_ids:
            answers = {}
            for table, address, count in reads:
                r = await transport.read(uid, table, address, count, attempts=2)
                answers[(table, address, count)] = Answer(
                    tuple(int(v) for v in r.data) if r.data is not None else None,
                    r.exception_code)
            ranking = rank_profiles(profiles, answers)
            best = recognised(ranking)
            close = tuple(f"{m.profile} {m.matched}/{m.total}" for m in ranking[:3] if m.matched)
            tied = tuple(m.profile for m in ambiguous(ranking))
            found.append(Found(uid, best.profile if best else None, () if best else close,
                               tied))
    finally:
        await transport.close()
    return found


def _verdict(res: SweepResult) -> str:
    """One line on the sweep's speed against the promise and the timing model."""
    per100 = per_hundred_s(res.elapsed_s, res.ids)
    model100 = per_hundred_s(res.estimate_s, res.ids)
    text = (f"{res.setting.label()}: {res.ids} ids in {res.elapsed_s:.1f} s "
            f"({per100:.1f} s per 100 ids; timing model {model100:.1f} s); "
            f"{len(res.present)} answered" + (f": {res.present}" if res.present else ""))
    if res.guard_waits:
        text += (f"\n  kept the line silent for the no-reply guard after {res.guard_waits} "
                 "silent id(s) instead of a decoy (a reply wait near 0.5 s, or a busy machine)")
    if per100 > FEW_SECONDS_PER_100:
        if model100 > FEW_SECONDS_PER_100:
            text += (f"\n  cannot sweep in a few seconds per 100 ids at {res.setting.baudrate}"
                     " baud: the line itself is that slow")
        elif per100 > SLOWER_THAN_MODEL * model100:
            text += ("\n  slower than a healthy line allows: suspect noise, missing "
                     "termination, or a slow USB adapter (try --adapter-latency-ms 16)")
    return text


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="edge-agent scan",
        description="Find Modbus RTU devices on a serial line: tries baud rates and framings, "
                    "unit ids 1-247, recognises shipped profiles, writes a draft site config.")
    ap.add_argument("port", help="serial port, e.g. /dev/serial/by-id/usb-...")
    ap.add_argument("--protocol", choices=("modbus", "dlt645"), default="modbus",
                    help="what the line speaks: Modbus RTU devices (default) or DL/T 645 "
                         "energy meters (found by read-address and a wildcard search)")
    ap.add_argument("--bauds", default=None,
                    help="baud rates to try, in order (default: "
                         f"{','.join(map(str, COMMON_BAUDS))}; "
                         f"for dlt645 {','.join(map(str, METER_BAUDS))})")
    ap.add_argument("--framings", default=None,
                    help=f"framings to try per baud rate (default: {MODBUS_FRAMINGS}; for "
                         f"dlt645 {METER_FRAMINGS})")
    ap.add_argument("--ids", default="1-247", help="unit ids to probe (default: %(default)s)")
    ap.add_argument("--turnaround-ms", type=float, default=None,
                    help="longest device turnaround to wait for (default: "
                         f"{DEFAULT_SCAN_TURNAROUND_S * 1000:g}; for dlt645 "
                         f"{METER_TURNAROUND_S * 1000:g})")
    ap.add_argument("--adapter-latency-ms", type=float, default=None,
                    help="extra wait for USB adapters (default: 16 for USB ports, else 0)")
    ap.add_argument("--all", action="store_true",
                    help="sweep every setting, not just until devices are found")
    ap.add_argument("--no-recognise", action="store_true", help="skip profile recognition")
    ap.add_argument("--out", type=Path, default=Path("site-draft.toml"),
                    help="where to write the draft site config (default: %(default)s)")
    ap.add_argument("--gateway-id", default="CHANGE-ME", help="gateway id for the draft")
    return ap


def _settings(args: argparse.Namespace) -> list[ScanSetting]:
    if args.protocol == "dlt645":
        return meter_settings(args)
    bauds = [int(b) for b in (args.bauds or ",".join(map(str, COMMON_BAUDS))).split(",")
             if b.strip()]
    framings = [parse_framing(f) for f in (args.framings or MODBUS_FRAMINGS).split(",")
                if f.strip()]
    return candidate_settings(bauds, framings)


async def _scan(args: argparse.Namespace, out: TextIO, err_console: Console) -> int:
    if args.protocol == "dlt645":
        return await scan_meters(args, out)
    ids = parse_ids(args.ids)
    turnaround = (args.turnaround_ms if args.turnaround_ms is not None
                  else DEFAULT_SCAN_TURNAROUND_S * 1000) / 1000
    adapter = (args.adapter_latency_ms / 1000 if args.adapter_latency_ms is not None
               else USB_ADAPTER_LATENCY_S if "usb" in args.port.lower() else 0.0)
    results: list[SweepResult] = []
    for setting in _settings(args):
        problem = serial_setting_error(args.port, setting.bus(args.port))
        if problem:
            print(f"{setting.label()}: skipped: {problem}", file=out, flush=True)
            continue
        timeout = probe_timeout_s(setting, turnaround, adapter)
        estimate = sweep_estimate_s(setting, len(ids), turnaround, adapter)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("found {task.fields[found]}"), TimeRemainingColumn(),
                      console=err_console, transient=True) as progress:
            task: TaskID = progress.add_task(f"{setting.label()} (timeout {timeout * 1000:.0f} ms)",
                                             total=len(ids), found=0)

            def advance(_uid: int, n: int, t: TaskID = task) -> None:
                progress.update(t, advance=1, found=n)

            res = await sweep(setting, args.port, ids, timeout, advance)
        res.estimate_s = estimate
        if res.error:
            print(f"{setting.label()}: skipped: {res.error}", file=out, flush=True)
            continue
        print(_verdict(res), file=out, flush=True)
        results.append(res)
        if res.present and not args.all:
            break
    hits = [r for r in results if r.present]
    if not hits:
        print("no device answered at any setting tried; check wiring (A/B swapped?), "
              "termination and power, or widen --bauds/--framings/--ids", file=out)
        return 1
    best = max(hits, key=lambda r: len(r.present))
    for other in hits:
        if other is not best:
            print(f"note: {len(other.present)} device(s) also answered at "
                  f"{other.setting.label()}; one line runs one setting: reconfigure them",
                  file=out)
    if args.no_recognise:
        found = [Found(uid, None, ()) for uid in best.present]
    else:
        profiles = [load_profile(name) for name in shipped_profiles()]
        found = await identify(best.setting, args.port, best.present, profiles)
    for f in found:
        what = f.profile or (
            f"ambiguous: {' or '.join(f.ambiguous)} explain its answers about equally well"
            if f.ambiguous else "unrecognised" + (f" (closest: {', '.join(f.candidates)})"
                                                   if f.candidates else ""))
        print(f"unit {f.unit_id}: {what}", file=out)
    args.out.write_text(draft_site(args.port, best.setting, found, gateway_id=args.gateway_id))
    print(f"draft site config written to {args.out}", file=out)
    return 0


@cli_command("edge-agent scan")
def scan_main(argv: list[str], out: TextIO | None = None) -> int:
    """``edge-agent scan``: returns 0 when devices were found, 1 when none, 2 on errors."""
    args = _parser().parse_args(argv)
    out = out or sys.stdout
    _settings(args)  # bad bauds, framings or ids fail here, before the port is touched
    parse_ids(args.ids)
    holder = port_in_use(args.port)
    if holder:
        raise DeviceError(holder)
    return asyncio.run(_scan(args, out, Console(stderr=True)))

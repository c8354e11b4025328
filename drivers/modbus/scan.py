"""The pure parts of a bus scan: which settings to try, how long to wait, who a device is.

No I/O: ``edge_agent.tools.scan`` sends the requests. A sweep sends one short read to each
unit id (1-247; 0 is broadcast and 248-255 are reserved, Modbus over serial line V1.02,
2.2) and waits only as long as the timing model says a reply can take: a device that
answers anything, data or a Modbus exception, is present. A present device is then
recognised by reading every shipped profile's registers (``modbus.recognise``): the profile
that explains its answers best, by the weight of the evidence, not by the count of points.

Slaves of other stacks: a libmodbus RTU slave that hears a request for another unit takes
the next frame on the line, within its 0.5 s response timeout, for that unit's reply and
discards it. Every silent id of a sweep would make it swallow the next probe, so a sweep
sends that next frame itself: after each unanswered probe, a decoy read for reserved unit
248 (serial line V1.02, 2.2: 248-255 reserved, so nobody answers it) that the waiting slave
swallows instead. The line's libmodbus-style slaves then all wait, or all do not, in step
(a request and its reply flip each of them twice), which ``LinePhase`` tracks. The decoy
reads register 0x0300 so that a waiting libmodbus slave, which parses the frame as a read
reply (byte count = its third byte), takes exactly its 8 bytes and stays in frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.drivers.bus import Parity, SerialBus
from edge_agent.drivers.modbus.recognise import Answer as Answer
from edge_agent.drivers.modbus.recognise import Match as Match
from edge_agent.drivers.modbus.recognise import ReadKey as ReadKey
from edge_agent.drivers.modbus.recognise import ambiguous as ambiguous
from edge_agent.drivers.modbus.recognise import rank_profiles as rank_profiles
from edge_agent.drivers.modbus.recognise import recognised as recognised
from edge_agent.drivers.modbus.recognise import recognition_reads as recognition_reads
from edge_agent.drivers.modbus.timing import char_time_s, inter_frame_gap_s, no_reply_s
from edge_agent.drivers.model import Table

# Baud rates in the order installers meet them: the Modbus default 9600 and 19200 first
# (serial line V1.02, 2.5.1: 9600 and 19200 required, 19200 the default), then the rest.
COMMON_BAUDS = (9600, 19200, 38400, 115200, 57600, 4800, 2400, 1200)
# Framings per baud rate: 8E1 is the Modbus default (2.5.1); 8N2 is what the spec asks for
# without parity, 8N1 is what most devices actually use; 8O1 is rare.
COMMON_FRAMINGS = ((Parity.EVEN, 1), (Parity.NONE, 1), (Parity.NONE, 2), (Parity.ODD, 1))
UNIT_IDS = range(1, 248)
# The probe: read one holding register at 0 (function 3, 8-byte request, 7-byte reply).
PROBE_FC = 3
PROBE_TABLE = Table.HOLDING_REGISTER
PROBE_ADDRESS = 0
PROBE_CHARS = 8  # its RTU frame: unit, function, address, quantity, CRC
# Real devices start answering 5-50 ms after a request ends; a scan waits for the quick
# majority and the installer raises --turnaround-ms for slow ones.
DEFAULT_SCAN_TURNAROUND_S = 0.020
# "A few seconds per hundred ids": the promise a sweep is measured against.
FEW_SECONDS_PER_100 = 6.0
# The decoy after an unanswered probe (see the module docstring): a reserved unit id, and
# an address whose high byte (3) makes a reply parser read 5 + 3 = 8 bytes, its own length.
DECOY_UNIT = 248
DECOY_ADDRESS = 0x0300
DECOY_CHARS = 8
# How long after an unanswered probe's request a decoy may still be sent: well inside
# libmodbus's 0.5 s wait, so the waiting slave surely takes it. Later than this (a stalled
# scanner, or --turnaround-ms near 0.5 s), the sweep keeps the line silent for the whole
# no-reply guard instead.
DECOY_WITHIN_S = 0.25


@dataclass(frozen=True, slots=True)
class ScanSetting:
    """One line setting to sweep: baud rate and framing."""

    baudrate: int
    parity: Parity
    stopbits: int

    def label(self) -> str:
        """As installers write it: 9600 8E1."""
        return f"{self.baudrate} 8{self.parity.value}{self.stopbits}"

    def bus(self, port: str, timeout_s: float | None = None,
            no_reply_guard_s: float | None = None) -> SerialBus:
        """A SerialBus for this setting (no retries: a silent id costs one timeout)."""
        return SerialBus(name="scan", port=port, baudrate=self.baudrate, parity=self.parity,
                         stopbits=self.stopbits, timeout_s=timeout_s, retries=0,
                         no_reply_guard_s=no_reply_guard_s)


def parse_framing(text: str) -> tuple[Parity, int]:
    """'8E1' or 'E' -> (parity, stop bits); ValueError explains the accepted forms."""
    t = text.strip().upper()
    if len(t) == 1 and t in "NEO":
        return Parity(t), 1
    if len(t) == 3 and t[0] == "8" and t[1] in "NEO" and t[2] in "12":
        return Parity(t[1]), int(t[2])
    raise ValueError(f"framing {text!r}: expected N, E, O or 8N1, 8E1, 8O1, 8N2")


def parse_ids(text: str) -> list[int]:
    """'1-247' or '1,5,10-20' -> sorted unit ids; ValueError outside 1..247."""
    ids: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ValueError(f"unit ids {text!r}: expected numbers and ranges like 1-247,250"
                             ) from None
        if not 1 <= a <= b <= 247:
            raise ValueError(f"unit ids {part.strip()!r}: expected ids from 1 to 247 "
                             "(0 is broadcast, 248-255 reserved: serial line V1.02, 2.2)")
        ids.update(range(a, b + 1))
    return sorted(ids)


def candidate_settings(bauds: Sequence[int] | None = None,
                       framings: Sequence[tuple[Parity, int]] | None = None
                       ) -> list[ScanSetting]:
    """Settings to sweep, most common first."""
    return [ScanSetting(b, p, s) for b in (bauds or COMMON_BAUDS)
            for p, s in (framings or COMMON_FRAMINGS)]


def probe_timeout_s(setting: ScanSetting, turnaround_s: float = DEFAULT_SCAN_TURNAROUND_S,
                    adapter_latency_s: float = 0.0) -> float:
    """How long to wait for a probe's reply: its exchange on the wire plus turnaround.

    ``adapter_latency_s`` covers USB adapters that hand bytes over in ~16 ms batches.
    """
    bus = setting.bus("-")
    return no_reply_s(bus, PROBE_FC, 1, turnaround_s) + adapter_latency_s


def decoy_s(setting: ScanSetting) -> float:
    """Line time of one decoy: its frame and the t3.5 after it."""
    bus = setting.bus("-")
    return DECOY_CHARS * char_time_s(bus) + inter_frame_gap_s(bus)


def sweep_estimate_s(setting: ScanSetting, ids: int,
                     turnaround_s: float = DEFAULT_SCAN_TURNAROUND_S,
                     adapter_latency_s: float = 0.0) -> float:
    """Seconds a sweep of ``ids`` silent unit ids takes (each one timeout, t3.5, a decoy)."""
    bus = setting.bus("-")
    return ids * (probe_timeout_s(setting, turnaround_s, adapter_latency_s)
                  + inter_frame_gap_s(bus) + decoy_s(setting))


@dataclass(slots=True)
class LinePhase:
    """Whether the line's libmodbus-style slaves are waiting for another unit's reply.

    Pure: the sweep tells it what happened and when (monotonic seconds) and asks what to
    do before the next probe. All such slaves are in step: an unanswered frame flips each
    of them (waiting -> it swallows the frame; idle -> it waits for that unit's reply), an
    answered request flips them twice, and a slave answering its own request stays idle.
    """

    waiting_since: float | None = None  # when the unanswered probe's request ended
    decoys: int = 0
    guard_waits: int = 0

    def probed(self, answered: bool, request_end: float) -> None:
        """A probe whose request left the line at ``request_end`` was answered (data or
        exception) or not: the waits of the slaves it set waiting run from then."""
        if not answered:
            self.waiting_since = request_end

    def before_probe(self, now: float, guard_s: float) -> tuple[bool, float]:
        """(send a decoy first?, seconds to stay silent first) before the next probe."""
        since = self.waiting_since
        if since is None:
            return False, 0.0
        self.waiting_since = None
        if now - since <= DECOY_WITHIN_S:
            self.decoys += 1
            return True, 0.0
        # Too late for a decoy to be surely taken: let every wait run out instead.
        self.guard_waits += 1
        return False, max(0.0, since + guard_s - now)


def per_hundred_s(elapsed_s: float, ids: int) -> float:
    """Seconds per hundred ids of a sweep that took ``elapsed_s`` for ``ids`` ids."""
    return elapsed_s * 100 / ids if ids else 0.0


# ---- the draft config ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Found:
    """A device the scan found."""

    unit_id: int
    profile: str | None           # the recognised profile, or None
    candidates: tuple[str, ...]   # best partial matches, for the comment
    ambiguous: tuple[str, ...] = ()  # full matches that explain it about equally well


def draft_site(port: str, setting: ScanSetting, found: Sequence[Found], *,
               gateway_id: str = "CHANGE-ME", poll_interval_s: float = 10.0) -> str:
    """A site config TOML for what a scan found; unrecognised devices are commented out."""
    out = [
        f"# Draft written by `edge-agent scan {port}`: {len(found)} device(s) at "
        f"{setting.label()}.",
        "# Fill in the gateway id and broker, name the devices, then run",
        "#   edge-agent check-config THIS_FILE",
        "",
        "[gateway]",
        f'id = "{gateway_id}"',
        "",
        "[mqtt]",
        'url = "mqtts://broker.example:8883"',
        "",
        "[buses.rs485]",
        'type = "serial"',
        f'port = "{port}"',
        f"baudrate = {setting.baudrate}",
        f'parity = "{setting.parity.value}"',
        f"stopbits = {setting.stopbits}",
    ]
    for f in found:
        out.append("")
        if f.profile is not None:
            out += [f"[devices.{f.profile}_{f.unit_id}]", 'bus = "rs485"',
                    f"unit_id = {f.unit_id}", f'profile = "{f.profile}"',
                    f"poll_interval_s = {poll_interval_s:g}"]
            continue
        hint = (", ".join(f.candidates) if f.candidates else "no shipped profile fits")
        out += [f"# unit {f.unit_id} answers and fits {' and '.join(f.ambiguous)} about "
                "equally well (ambiguous); choose one:" if f.ambiguous else
                f"# unit {f.unit_id} answers, but no shipped profile was recognised "
                f"(closest: {hint}); choose or write a profile:",
                f"# [devices.unit_{f.unit_id}]", '# bus = "rs485"', f"# unit_id = {f.unit_id}",
                '# profile = "PROFILE"', f"# poll_interval_s = {poll_interval_s:g}"]
    return "\n".join(out) + "\n"

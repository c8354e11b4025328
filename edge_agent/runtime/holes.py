"""Learned register holes kept across restarts: ``learned-holes.json`` in the state dir.

A device that answers exception 2 (illegal data address, Modbus application protocol
V1.1b3, 7) for some registers teaches the planner a hole (``BadRanges``). The scheduler
re-asks holes on a back-off (30 s, doubling to 15 min); this file keeps what it last
learned, so a restarted agent neither forgets them (and pays the failing cascades of
learning them again) nor hides them: ``edge-agent doctor`` lists them. A restarted agent
starts from the stored holes and re-asks them 30 s after start, so a device that was
mended meanwhile is read again within that bound.

The file is our own, but it is read back as untrusted bytes (a disk fills, a person edits
it): parsed under limits, and anything wrong makes the agent start with no stored holes and
log why, never stop it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from edge_agent.drivers.model import Table
from edge_agent.protocol.fileio import atomic_write
from edge_agent.protocol.jsonsafe import UnsafeJsonError, loads_strict

log = logging.getLogger(__name__)

HOLES_FILE = "learned-holes.json"
MAX_FILE_BYTES = 4 * 2**20
MAX_DEVICES = 10_000
MAX_RANGES = 1_000  # per device
FORMAT_VERSION = 1
_TABLES = {t.value for t in Table}

Range = tuple[str, int, int]  # table, first address, address after the last


@dataclass(frozen=True, slots=True)
class DeviceHoles:
    """What one device refused when last asked, and when that was learned (epoch s)."""

    bus: str
    unit_id: int
    ranges: frozenset[Range]
    learned_at: int


def _ranges(value: object, where: str) -> frozenset[Range]:
    if not isinstance(value, list) or len(value) > MAX_RANGES:
        raise ValueError(f"{where}: expected a list of at most {MAX_RANGES} ranges")
    out: set[Range] = set()
    for i, r in enumerate(value):
        if (not isinstance(r, list) or len(r) != 3 or r[0] not in _TABLES
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in r[1:])
                or not 0 <= r[1] < r[2] <= 65536):
            raise ValueError(f"{where}[{i}]: expected [table, start, end] with "
                             "0 <= start < end <= 65536")
        out.add((r[0], r[1], r[2]))
    return frozenset(out)


def parse_holes(raw: bytes) -> dict[str, DeviceHoles]:
    """The devices' holes from the file's bytes; ValueError names what is wrong and where."""
    try:
        doc = loads_strict(raw, max_bytes=MAX_FILE_BYTES, max_depth=5,
                           max_items=max(MAX_DEVICES, MAX_RANGES), max_str=256)
    except UnsafeJsonError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise ValueError(f"expected an object with version {FORMAT_VERSION}")
    devices = doc.get("devices")
    if not isinstance(devices, dict):
        raise ValueError("devices: expected an object")
    out: dict[str, DeviceHoles] = {}
    for name, d in devices.items():
        where = f"devices.{name}"
        if not (isinstance(d, dict) and isinstance(d.get("bus"), str)
                and isinstance(d.get("unit_id"), int) and isinstance(d.get("learned_at"), int)):
            raise ValueError(f"{where}: expected bus, unit_id, learned_at and ranges")
        out[name] = DeviceHoles(d["bus"], d["unit_id"], _ranges(d.get("ranges"), where),
                                d["learned_at"])
    return out


def render_holes(holes: dict[str, DeviceHoles]) -> bytes:
    """The file's bytes for ``holes``, sorted: the same holes always give the same bytes."""
    return json.dumps({"version": FORMAT_VERSION, "devices": {
        name: {"bus": h.bus, "unit_id": h.unit_id, "learned_at": h.learned_at,
               "ranges": [list(r) for r in sorted(h.ranges)]}
        for name, h in sorted(holes.items())}}, indent=1).encode() + b"\n"


def describe_ranges(ranges: frozenset[Range]) -> str:
    """As the log says them: holding_register 10-13, input_register 0-1."""
    return ", ".join(f"{t} {a}-{b - 1}" for t, a, b in sorted(ranges))


def read_holes(path: Path) -> tuple[dict[str, DeviceHoles], str]:
    """(holes, "") from ``path``; ({}, why) if unreadable or malformed; ({}, "") if absent."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, ""
    except OSError as exc:
        return {}, f"cannot read {path}: {exc.strerror or exc}"
    try:
        return parse_holes(raw), ""
    except ValueError as exc:
        return {}, f"{path}: {exc}"


class HoleStore:
    """The holes file of one agent: loaded once, rewritten atomically when a device's change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.holes, problem = read_holes(path)
        self.write_errors = 0
        if problem:
            log.warning("learned register holes not loaded (%s): every device starts with "
                        "none and learns them again", problem)

    def get(self, device: str, bus: str, unit_id: int) -> DeviceHoles | None:
        """The stored holes of ``device`` if it is still that unit on that bus."""
        h = self.holes.get(device)
        return h if h is not None and (h.bus, h.unit_id) == (bus, unit_id) else None

    def record(self, device: str, bus: str, unit_id: int, ranges: frozenset[Range],
               now_s: float) -> None:
        """Keep ``device``'s holes as now learned (none: forget it) and rewrite the file."""
        old = self.holes.get(device)
        if ranges:
            if old is not None and (old.bus, old.unit_id, old.ranges) == (bus, unit_id, ranges):
                return
            self.holes[device] = DeviceHoles(bus, unit_id, ranges, int(now_s))
        elif old is None:
            return
        else:
            del self.holes[device]
        try:
            atomic_write(self.path, render_holes(self.holes), 0o644)
        except OSError as exc:
            self.write_errors += 1
            if self.write_errors == 1:  # once: a full disk would say it every poll
                log.warning("cannot keep learned register holes in %s (%s): they are "
                            "learned again after a restart", self.path, exc.strerror or exc)

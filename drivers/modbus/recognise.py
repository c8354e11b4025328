"""Which shipped profile explains a device best (pure: answers in, ranking out).

Counting the points that answer is not enough: a device that maps every address answers
every profile's points, and the profile with the most points would win (an energy meter
named a signal cabinet). Each answer is weighed by how much it says instead:

- how unlikely a wrong register is to pass the point's check: a float32 that decodes to a
  finite value in its unit's physical range (a voltage of 0-1000 V, a frequency of 40-70 Hz)
  says much; a bare uint16, which every word passes, says little;
- identifying points (a serial number, a model string) that read as one (printable text, a
  number neither 0 nor all ones) weigh most; a value of 0, which unused registers of many
  devices read, fits any numeric point and weighs almost nothing;
- exception 2 (illegal data address, Modbus application protocol V1.1b3, 7) where the
  profile has a hole: one register read just past each table's last point. A device whose
  map matches the profile refuses it; one that maps everything answers it (a little against).

A profile whose every point is answered plausibly is a full match; the full match with the
highest weight is the device's profile, unless another full match comes within
``AMBIGUOUS_SHARE`` of it: then the match is ambiguous and the scan says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from edge_agent.drivers.modbus.decode import DecodeFailure, decode_point
from edge_agent.drivers.modbus.planner import plan_reads
from edge_agent.drivers.model import DataType, Point, Table
from edge_agent.drivers.profile import DeviceProfile

ReadKey = tuple[Table, int, int]  # table, address, count
ILLEGAL_DATA_ADDRESS = 2
AMBIGUOUS_SHARE = 0.85
TINY = 1e-9  # below this a non-zero float is integer words read as a float, not a reading

# Physical ranges by unit, generous: a value outside is a wrong register, not a device.
UNIT_RANGES: dict[str, tuple[float, float]] = {
    "V": (0, 1000), "A": (-1e4, 1e4), "W": (-1e7, 1e7), "kW": (-1e4, 1e4), "Hz": (40, 70),
    "kWh": (0, 1e10), "Wh": (0, 1e13), "%": (0, 100), "%RH": (0, 100), "°C": (-60, 200),
    "hPa": (300, 1200), "bar": (-1, 1000), "dB(A)": (0, 200), "h": (0, 1e6), "s": (0, 1e9),
    "m³": (0, 1e10), "l/h": (-1e7, 1e7), "l/s": (-1e6, 1e6), "m": (-1e4, 1e5),
    "µg/m³": (0, 1e4),
}
IDENTIFYING = ("serial", "model", "firmware", "version", "vendor", "product")
# Evidence weights (see the module docstring).
W_FLOAT, W_STRING, W_WIDE_INT, W_INT, W_BIT = 2.0, 2.0, 0.75, 0.5, 0.25
W_RANGE, W_IDENTITY, W_HOLE_REFUSED, W_HOLE_ANSWERED, W_ZERO = 1.5, 3.0, 1.5, -0.5, 0.1


@dataclass(frozen=True, slots=True)
class Answer:
    """What a device answered to one read: data, an exception code, or nothing."""

    data: tuple[int, ...] | None = None
    exception_code: int | None = None


@dataclass(frozen=True, slots=True)
class Match:
    """How well a profile explains a device: points answered plausibly out of all, and the
    weight of the evidence (``score``)."""

    profile: str
    matched: int
    total: int
    failed: tuple[str, ...]
    score: float = 0.0

    @property
    def full(self) -> bool:
        """Every point of the profile was answered with a plausible value."""
        return self.matched == self.total


def hole_probes(prof: DeviceProfile) -> list[ReadKey]:
    """One register just past the last point of each table the profile uses (a hole)."""
    out: list[ReadKey] = []
    for table in Table:
        ends = [p.end for p in prof.points if p.table is table]
        if ends and max(ends) < 0x10000 and not any(
                p.table is table and p.address <= max(ends) < p.end for p in prof.points):
            out.append((table, max(ends), 1))
    return out


def recognition_reads(profiles: Iterable[DeviceProfile], max_gap: int = 0) -> list[ReadKey]:
    """Every distinct read needed to test all ``profiles``: their planned reads and holes."""
    seen: dict[ReadKey, None] = {}
    for prof in profiles:
        for r in plan_reads(prof.points, max_gap=max_gap):
            seen.setdefault((r.table, r.address, r.count), None)
        for key in hole_probes(prof):
            seen.setdefault(key, None)
    return list(seen)


def _identifying(p: Point) -> bool:
    return any(word in p.name.lower() for word in IDENTIFYING)


def _base_weight(p: Point) -> float:
    if p.table.is_bit or p.type is DataType.BOOL or p.bit is not None:
        return W_BIT
    if p.type in (DataType.FLOAT32, DataType.FLOAT64):
        return W_FLOAT
    if p.type is DataType.STRING:
        return W_STRING
    return W_WIDE_INT if p.count > 1 else W_INT


def evidence(p: Point, data: Sequence[int]) -> float | None:
    """The weight of ``data`` as this point's value; None if it cannot be this point."""
    try:
        value = decode_point(p, list(data))
    except DecodeFailure:
        return None
    weight = _base_weight(p)
    if isinstance(value, str):
        text = value.strip("\x00 ")
        if not value.isprintable() and not text.isprintable():
            return None
        return weight + (W_IDENTITY if text and _identifying(p) else 0.0)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN or infinity is what a float read of the wrong registers gives
    if (p.type in (DataType.FLOAT32, DataType.FLOAT64) and isinstance(value, float)
            and 0 < abs(value) < TINY):
        return None  # small integers read as a float: a subnormal, no physical quantity
    if isinstance(value, bool):
        return weight
    if value == 0:
        return W_ZERO  # unused registers of many devices read 0: it fits, and says little
    physical = UNIT_RANGES.get(p.unit)
    if physical is not None:
        if not physical[0] <= value <= physical[1]:
            return None
        weight += W_RANGE
    elif p.min_value is not None and p.max_value is not None and (
            p.min_value <= value <= p.max_value):
        # A write's limits: a value inside says something; one outside (0 for "no
        # command yet") does not rule the point out.
        weight += W_RANGE
    if _identifying(p) and not p.table.is_bit:
        all_ones = (1 << (16 * p.count)) - 1
        raw = int(value) if isinstance(value, int) else None
        if raw is not None and raw not in (0, all_ones):
            weight += W_IDENTITY
    return weight


def match_profile(prof: DeviceProfile, answers: Mapping[ReadKey, Answer],
                  max_gap: int = 0) -> Match:
    """Score ``prof`` against the answers a device gave to ``recognition_reads``."""
    failed: list[str] = []
    matched = 0
    score = 0.0
    for r in plan_reads(prof.points, max_gap=max_gap):
        ans = answers.get((r.table, r.address, r.count))
        for p in r.points:
            start = p.address - r.address
            w = (None if ans is None or ans.data is None
                 else evidence(p, ans.data[start:start + p.count]))
            if w is None:
                failed.append(p.name)
            else:
                matched += 1
                score += w
    for key in hole_probes(prof):
        ans = answers.get(key)
        if ans is not None and ans.exception_code == ILLEGAL_DATA_ADDRESS:
            score += W_HOLE_REFUSED
        elif ans is not None and ans.data is not None:
            score += W_HOLE_ANSWERED
    return Match(prof.name, matched, len(prof.points), tuple(failed), round(score, 3))


def rank_profiles(profiles: Iterable[DeviceProfile], answers: Mapping[ReadKey, Answer],
                  max_gap: int = 0) -> list[Match]:
    """Profiles best first: full matches by evidence, then partial ones by share matched."""
    matches = [match_profile(p, answers, max_gap) for p in profiles]
    return sorted(matches, key=lambda m: (not m.full, -m.score if m.full else 0,
                                          -(m.matched / m.total if m.total else 0), m.profile))


def ambiguous(ranking: Sequence[Match]) -> tuple[Match, ...]:
    """The full matches that explain the device about as well as the best (two or more),
    or () when one stands out or none fits."""
    full = [m for m in ranking if m.full]
    if len(full) < 2 or full[1].score < AMBIGUOUS_SHARE * full[0].score:
        return ()
    return tuple(m for m in full if m.score >= AMBIGUOUS_SHARE * full[0].score)


def recognised(ranking: Sequence[Match]) -> Match | None:
    """The single best full match, or None when nothing fits or the match is ambiguous."""
    full = [m for m in ranking if m.full]
    if not full or ambiguous(ranking):
        return None
    return full[0]

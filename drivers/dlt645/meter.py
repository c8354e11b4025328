"""Meter points and profiles: which data identifiers a meter class is read for (pure).

A profile file has a ``[profile]`` table (name, description) and one ``[points.NAME]``
table per point naming its data identifier (``di = "00010000"``). Format, unit and sign
come from the identifier table (``identifiers``); a point may give them itself for an
identifier the table does not know. Profiles are read through the same bounded TOML
intake as site configs.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from edge_agent.drivers.dlt645.bcd import FORMATS, BcdFormat
from edge_agent.drivers.dlt645.identifiers import BLOCK_BYTE, IDENTIFIERS, parse_di
from edge_agent.protocol.tomlcheck import Checker, load_toml

POINT_KEYS = ("di", "format", "unit", "signed", "scale", "interval_s", "deadband",
              "description")


@dataclass(frozen=True, slots=True)
class MeterPoint:
    """One value of a meter: its data identifier and how to read its bytes."""

    name: str
    di: int
    fmt: BcdFormat
    unit: str = ""
    signed: bool = False
    scale: float = 1.0
    interval_s: float | None = None
    deadband: float | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class MeterProfile:
    """A meter class: its name and its points in declaration order."""

    name: str
    description: str
    points: tuple[MeterPoint, ...]


def shipped_meter_profiles() -> dict[str, Path]:
    """Name -> path of every DL/T 645 profile shipped in ``drivers/dlt645/profiles``."""
    root = resources.files("edge_agent.drivers.dlt645") / "profiles"
    return dict(sorted((e.name[:-5], Path(str(e))) for e in root.iterdir()
                       if e.name.endswith(".toml")))


def parse_meter_point(chk: Checker, name: str, raw: Any, path: str) -> MeterPoint | None:
    """A MeterPoint from its TOML table, every problem recorded in ``chk``."""
    if not isinstance(raw, dict):
        chk.problem(path, raw, "a table with di = 'DI3DI2DI1DI0'")
        return None
    before = len(chk.problems)
    chk.keys(raw, path, POINT_KEYS)
    text = chk.get(raw, path, "di", str, expected="a data identifier of eight hex digits")
    di = None
    if text is not None:
        try:
            di = parse_di(text)
        except ValueError as exc:
            chk.problem(f"{path}.di", text, str(exc).split(": ", 1)[1])
    if di is not None and (di >> 8) & 0xFF == BLOCK_BYTE:
        chk.problem(f"{path}.di", text, "one item, not a block (the driver reads blocks itself)")
        di = None
    known = IDENTIFIERS.get(di) if di is not None else None
    fmt_text = chk.get(raw, path, "format", str, None, check=lambda v: v in FORMATS,
                       expected="one of " + ", ".join(FORMATS))
    if di is not None and known is None and fmt_text is None:
        chk.note(path, f"identifier {text} is not in the table: give its format and unit")
    unit = chk.get(raw, path, "unit", str, known.unit if known else "")
    signed = chk.get(raw, path, "signed", bool, known.signed if known else False)
    scale = chk.get(raw, path, "scale", float, 1.0, check=lambda v: v != 0,
                    expected="a non-zero number")
    interval_s = chk.get(raw, path, "interval_s", float, None, check=lambda v: v > 0,
                         expected="a positive number of seconds")
    deadband = chk.get(raw, path, "deadband", float, None, check=lambda v: v >= 0,
                       expected="a number >= 0")
    description = chk.get(raw, path, "description", str, "")
    fmt = FORMATS[fmt_text] if fmt_text is not None else (known.fmt if known else None)
    if len(chk.problems) > before or di is None or fmt is None:
        return None
    return MeterPoint(name=name, di=di, fmt=fmt, unit=unit, signed=signed, scale=scale,
                      interval_s=interval_s, deadband=deadband, description=description)


def parse_meter_profile(raw: dict[str, Any], source: str, chk: Checker) -> MeterProfile:
    """A MeterProfile from parsed TOML; its problems go to ``chk``."""
    chk.keys(raw, "", ("profile", "points"))
    head = chk.get(raw, "", "profile", dict, {})
    chk.keys(head, "profile", ("name", "description"))
    name = chk.get(head, "profile", "name", str, "")
    description = chk.get(head, "profile", "description", str, "")
    points_raw = chk.get(raw, "", "points", dict, {})
    if not points_raw:
        chk.note("points", "a profile needs at least one point")
    points = [p for pname, praw in points_raw.items()
              if (p := parse_meter_point(chk, pname, praw, f"points.{pname}")) is not None]
    return MeterProfile(name=name or Path(source).stem, description=description,
                        points=tuple(points))


def load_meter_profile(path: Path) -> MeterProfile:
    """Load a DL/T 645 profile file; ConfigError lists every problem."""
    chk = Checker(str(path))
    profile = parse_meter_profile(load_toml(path), str(path), chk)
    chk.raise_if_any()
    return profile

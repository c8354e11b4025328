"""Device profiles: the register map of a device class, shipped as TOML data.

A profile file has a ``[profile]`` table (name, description) and one ``[points.NAME]``
table per point. Addresses are 0-based protocol addresses: "40001" in a data sheet is
holding register 0 (Modbus application protocol V1.1b3, 4.4).

Profile files are read through the same bounded intake as site configs
(``protocol.tomlcheck.load_toml``: UTF-8, at most 1 MiB, 16 levels of nesting, any parser
failure a ConfigError naming the file), since a config from the fleet may name one.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from edge_agent.drivers.model import (
    POLL_TEXT,
    TYPE_LAYOUT,
    Access,
    DataType,
    Point,
    Table,
    WordOrder,
    poll_interval_ok,
)
from edge_agent.protocol.errors import ConfigError
from edge_agent.protocol.tomlcheck import Checker, load_toml

POINT_KEYS = (
    "table", "address", "type", "count", "length", "order", "scale", "offset", "unit",
    "access", "interval_s", "deadband", "bit", "bits", "description", "min", "max",
)


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """A device class: its name and its points in declaration order."""

    name: str
    description: str
    points: tuple[Point, ...]

    def point(self, name: str) -> Point:
        """The point called ``name``; KeyError if the profile has none."""
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(name)


def shipped_profiles() -> dict[str, Path]:
    """Name -> path of every profile shipped in ``drivers/profiles``."""
    root = resources.files("edge_agent.drivers") / "profiles"
    found: dict[str, Path] = {}
    for entry in root.iterdir():
        if entry.name.endswith(".toml"):
            found[entry.name[:-5]] = Path(str(entry))
    return dict(sorted(found.items()))


def parse_point(chk: Checker, name: str, raw: Any, path: str) -> Point | None:
    """Build a Point from its TOML table, recording every problem in ``chk``."""
    if not isinstance(raw, dict):
        chk.problem(path, raw, "a table of point settings")
        return None
    before = len(chk.problems)
    chk.keys(raw, path, POINT_KEYS)
    table = chk.choice(raw, path, "table", Table, [t.value for t in Table])
    address = chk.get(raw, path, "address", int, check=lambda v: 0 <= v <= 65535,
                      expected="an integer address from 0 to 65535")
    default_type = "bool" if table is not None and table.is_bit else None
    dtype = chk.choice(raw, path, "type", DataType, [t.value for t in DataType],
                       **({"default": DataType(default_type)} if default_type else {}))
    order = chk.choice(raw, path, "order", WordOrder, [o.value for o in WordOrder],
                       default=WordOrder.ABCD)
    access = chk.choice(raw, path, "access", Access, [a.value for a in Access],
                        default=Access.READ)
    scale = chk.get(raw, path, "scale", float, 1.0, check=lambda v: v != 0,
                    expected="a non-zero number")
    offset = chk.get(raw, path, "offset", float, 0.0)
    unit = chk.get(raw, path, "unit", str, "")
    description = chk.get(raw, path, "description", str, "")
    interval_s = chk.get(raw, path, "interval_s", float, None, check=poll_interval_ok,
                         expected=POLL_TEXT)
    deadband = chk.get(raw, path, "deadband", float, None, check=lambda v: v >= 0,
                       expected="a number >= 0")
    bit = chk.get(raw, path, "bit", int, None, check=lambda v: 0 <= v <= 15,
                  expected="a bit offset from 0 to 15")
    bits = chk.get(raw, path, "bits", int, 1, check=lambda v: 1 <= v <= 16,
                   expected="a bit-field width from 1 to 16")
    length = chk.get(raw, path, "length", int, None, check=lambda v: 1 <= v <= 125,
                     expected="a string length of 1 to 125 registers")
    low = chk.get(raw, path, "min", float, None)
    high = chk.get(raw, path, "max", float, None)
    if len(chk.problems) > before or table is None or dtype is None or address is None:
        return None

    count = _register_count(chk, path, table, dtype, length, bit, bits)
    declared = chk.get(raw, path, "count", int, None)
    if count is None:
        return None
    if declared is not None and declared != count:
        chk.problem(f"{path}.count", declared,
                    f"{count} ({'bit' if table.is_bit else 'register'}s of type {dtype.value})")
        return None
    if address + count > 65536:
        chk.problem(f"{path}.address", address,
                    f"an address whose {count} item(s) end at or before 65535")
        return None
    if (low is not None or high is not None) and dtype in (DataType.BOOL, DataType.STRING):
        chk.note(f"{path}.min", f"limits apply to numbers, not to {dtype.value} points")
        return None
    if low is not None and high is not None and low > high:
        chk.problem(f"{path}.min", low, f"a minimum no greater than max = {high:g}")
        return None
    if access is Access.READ_WRITE and not table.writable:
        chk.problem(f"{path}.access", access.value,
                    f"'read' ({table.value} is a read-only table)")
        return None
    return Point(
        name=name, table=table, address=address, type=dtype, count=count, order=order,
        scale=scale, offset=offset, unit=unit, access=access, interval_s=interval_s,
        deadband=deadband, bit=bit, bits=bits, description=description, min_value=low,
        max_value=high,
    )


def _register_count(chk: Checker, path: str, table: Table, dtype: DataType,
                    length: int | None, bit: int | None, bits: int) -> int | None:
    """Items the point occupies, or None after recording why the combination is impossible."""
    if table.is_bit:
        if dtype is not DataType.BOOL:
            chk.problem(f"{path}.type", dtype.value, f"'bool' ({table.value} holds single bits)")
            return None
        return 1
    if dtype is DataType.STRING:
        if length is None:
            chk.problem(f"{path}.length", None, "the string's length in registers")
            return None
        return length
    if length is not None:
        chk.note(f"{path}.length", f"only strings take a length, not {dtype.value}")
        return None
    if bit is not None:
        if dtype not in (DataType.BOOL, DataType.UINT16):
            chk.problem(f"{path}.type", dtype.value, "'bool' or 'uint16' for a bit field")
            return None
        if bit + bits > 16:
            chk.note(f"{path}.bits", f"bit {bit} + width {bits} runs past bit 15 of the register")
            return None
        if dtype is DataType.BOOL and bits != 1:
            chk.problem(f"{path}.bits", bits, "1 for a bool bit field (use uint16 for wider)")
            return None
    return TYPE_LAYOUT[dtype][0]


def parse_profile(raw: dict[str, Any], source: str) -> DeviceProfile:
    """Build a DeviceProfile from parsed TOML; ConfigError lists every problem."""
    chk = Checker(source)
    chk.keys(raw, "", ("profile", "points"))
    head = chk.get(raw, "", "profile", dict, {})
    chk.keys(head, "profile", ("name", "description"))
    name = chk.get(head, "profile", "name", str, "")
    description = chk.get(head, "profile", "description", str, "")
    points_raw = chk.get(raw, "", "points", dict, {})
    if not points_raw and "points" in raw:
        chk.note("points", "a profile needs at least one point")
    points = []
    for pname, praw in points_raw.items():
        p = parse_point(chk, pname, praw, f"points.{pname}")
        if p is not None:
            points.append(p)
    chk.raise_if_any()
    return DeviceProfile(name=name or Path(source).stem, description=description,
                         points=tuple(points))


def load_profile(ref: str, base_dir: Path | None = None) -> DeviceProfile:
    """Load a profile by shipped name (``energy_meter``) or by path relative to ``base_dir``."""
    shipped = shipped_profiles()
    if ref in shipped:
        path = shipped[ref]
    else:
        path = Path(ref)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            found = path.exists()
        except OSError:  # a name too long for the file system, say: no such file either
            found = False
        if not found:
            raise ConfigError(
                f"profile {ref!r}: neither a shipped profile ({', '.join(shipped)}) "
                f"nor a file at {path}")
    return parse_profile(load_toml(path), str(path))

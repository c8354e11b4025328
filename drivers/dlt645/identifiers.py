"""The common DL/T 645-2007 data identifiers as a table: format, unit, sign (pure data).

A data identifier is four bytes DI3 DI2 DI1 DI0, written highest first (``00010000``) and
sent lowest first (4.3.2). Appendix A groups them: DI3 = 00 energy (A.1 电能量), 02 variables
(A.3 变量), 04 parameters (A.5 参变量). Within a group DI2 picks the quantity and DI1 the
tariff (00 total, 01-3F tariffs 1-63) or the phase (01 A, 02 B, 03 C; 00 the total where
there is one).

A block identifier (数据块) puts ``FF`` in DI1 and asks for every item of the family at
once; the reply is the items' data one after another in DI1 order, starting from the first
item of the family (tariff 00 = total, phase 01 = A for voltages and currents, 00 = total
for powers and power factors). Meters are not obliged to support blocks; the driver learns
a refusal and reads the items one by one instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.drivers.dlt645.bcd import FORMATS, BcdFormat

BLOCK_BYTE = 0xFF


@dataclass(frozen=True, slots=True)
class Identifier:
    """One data identifier: what it holds and how it is encoded."""

    di: int
    name: str
    fmt: BcdFormat
    unit: str = ""
    signed: bool = False

    @property
    def text(self) -> str:
        """The identifier as the standard writes it: ``00010000``."""
        return f"{self.di:08X}"


def _energy(family: int, stem: str, signed: bool = False) -> list[Identifier]:
    # A.1: DI2 = family, DI1 = 00 total, 01..04 tariffs 1-4 (尖 峰 平 谷 on most meters).
    out = [Identifier((family << 16) | 0x0000, f"{stem}_total", FORMATS["XXXXXX.XX"], "kWh",
                      signed)]
    out += [Identifier((family << 16) | (t << 8), f"{stem}_tariff{t}", FORMATS["XXXXXX.XX"],
                       "kWh", signed) for t in range(1, 5)]
    return out


def _phases(di2: int, stem: str, fmt: str, unit: str, signed: bool,
            total: bool) -> list[Identifier]:
    # A.3: 02 DI2 DI1 00, DI1 = 01..03 phases A-C, 00 the total where defined.
    out = [Identifier(0x02000000 | (di2 << 16), f"{stem}_total", FORMATS[fmt], unit, signed)] \
        if total else []
    out += [Identifier(0x02000000 | (di2 << 16) | (ph << 8), f"{stem}_{name}", FORMATS[fmt],
                       unit, signed) for ph, name in ((1, "a"), (2, "b"), (3, "c"))]
    return out


IDENTIFIERS: dict[int, Identifier] = {i.di: i for i in (
    # Combined active energy can run backwards, so it carries a sign (A.1).
    *_energy(0x00, "energy_combined_active", signed=True),
    *_energy(0x01, "energy_forward_active"),
    *_energy(0x02, "energy_reverse_active"),
    *_phases(0x01, "voltage", "XXX.X", "V", signed=False, total=False),
    *_phases(0x02, "current", "XXX.XXX", "A", signed=True, total=False),
    *_phases(0x03, "active_power", "XX.XXXX", "kW", signed=True, total=True),
    *_phases(0x06, "power_factor", "X.XXX", "", signed=True, total=True),
    Identifier(0x02800002, "frequency", FORMATS["XX.XX"], "Hz"),
    Identifier(0x04000101, "date", FORMATS["YYMMDDWW"]),
    Identifier(0x04000102, "time", FORMATS["hhmmss"]),
    Identifier(0x04000401, "address", FORMATS["NNNNNNNNNNNN"]),
)}

# Block identifiers the table knows -> DI1 of the block's first item.
BLOCK_FIRST: dict[int, int] = {
    0x0000FF00: 0x00, 0x0001FF00: 0x00, 0x0002FF00: 0x00,   # energy: total, tariffs (A.1)
    0x0201FF00: 0x01, 0x0202FF00: 0x01,                     # voltage, current: A, B, C (A.3)
    0x0203FF00: 0x00, 0x0206FF00: 0x00,                     # power, power factor: total, A-C
}


def parse_di(text: str) -> int:
    """An identifier written as eight hex digits (``0201FF00``); ValueError otherwise."""
    if len(text) != 8 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise ValueError(f"{text!r}: expected eight hex digits DI3 DI2 DI1 DI0")
    return int(text, 16)


def block_of(di: int) -> int | None:
    """The block identifier whose reply holds ``di``, if the table knows one."""
    block = (di & 0xFFFF00FF) | (BLOCK_BYTE << 8)
    if block == di or block not in BLOCK_FIRST:
        return None
    return block if ((di >> 8) & 0xFF) >= BLOCK_FIRST[block] else None


def block_slot(block: int, di: int) -> int:
    """Index of ``di``'s data among the items of ``block``'s reply."""
    return ((di >> 8) & 0xFF) - BLOCK_FIRST[block]

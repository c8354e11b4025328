"""BCD data formats of DL/T 645-2007 (Appendix A, 数据格式), as a table (pure).

A format is written as the standard writes it: ``XXXXXX.XX`` is four bytes holding eight
BCD digits of which two are decimals; ``YYMMDDWW`` a date with the day of the week;
``hhmmss`` a time; ``NNNNNNNNNNNN`` twelve digits kept as text (the meter address).
Bytes go lowest first on the wire (4.3.2), so the last byte holds the highest digits.

Signed values (currents, powers, power factors, combined energy) use the top bit of the
highest byte as the sign (1 = negative), leaving 7 bits for that byte's digits (Appendix A:
"最高位表示方向" / "最高位为符号位").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import StrEnum

from edge_agent.drivers.dlt645.frame import FrameError

SIGN_BIT = 0x80


class Kind(StrEnum):
    """How a format's digits read."""

    NUMBER = "number"   # a decimal with a fixed number of decimals
    DATE = "date"       # YYMMDDWW -> "20YY-MM-DD"
    TIME = "time"       # hhmmss -> "hh:mm:ss"
    DIGITS = "digits"   # kept as the digit string


@dataclass(frozen=True, slots=True)
class BcdFormat:
    """A BCD layout: bytes, decimals, and how to read the digits."""

    pattern: str
    size: int
    decimals: int = 0
    kind: Kind = Kind.NUMBER


def _number(pattern: str) -> BcdFormat:
    digits = pattern.replace(".", "")
    decimals = len(pattern) - pattern.index(".") - 1 if "." in pattern else 0
    return BcdFormat(pattern, len(digits) // 2, decimals)


FORMATS: dict[str, BcdFormat] = {
    f.pattern: f for f in (
        _number("XXXXXX.XX"),   # energy, kWh (A.1)
        _number("XXX.X"),       # voltage, V (A.3)
        _number("XXX.XXX"),     # current, A (A.3)
        _number("XX.XXXX"),     # power, kW / kvar / kVA (A.3)
        _number("X.XXX"),       # power factor (A.3)
        _number("XX.XX"),       # frequency, Hz (A.3)
        _number("XXXX"),
        _number("XXXXXXXX"),
        BcdFormat("YYMMDDWW", 4, kind=Kind.DATE),    # date and week (A.5, 04000101)
        BcdFormat("hhmmss", 3, kind=Kind.TIME),      # time (A.5, 04000102)
        BcdFormat("NNNNNNNNNNNN", 6, kind=Kind.DIGITS),  # communication address (04000401)
    )
}


def digits_of(raw: bytes) -> str:
    """The BCD digits of ``raw`` (lowest byte first), highest digit first; FrameError if not BCD."""
    text = raw[::-1].hex()
    if not text.isdigit():
        raise FrameError(f"{raw.hex(' ').upper()}: not BCD (a nibble above 9)")
    return text


def decode_bcd(fmt: BcdFormat, raw: bytes, *, signed: bool = False) -> int | float | str:
    """The value ``raw`` holds in ``fmt``; FrameError when it is not valid BCD of that size."""
    if len(raw) != fmt.size:
        raise FrameError(f"{len(raw)} bytes for {fmt.pattern}: expected {fmt.size}")
    negative = False
    if signed and fmt.kind is Kind.NUMBER:
        negative = bool(raw[-1] & SIGN_BIT)
        raw = raw[:-1] + bytes([raw[-1] & ~SIGN_BIT & 0xFF])
    digits = digits_of(raw)
    if fmt.kind is Kind.DIGITS:
        return digits
    if fmt.kind is Kind.DATE:
        yy, mm, dd, ww = digits[0:2], digits[2:4], digits[4:6], digits[6:8]
        if not (1 <= int(mm) <= 12 and 1 <= int(dd) <= 31 and int(ww) <= 6):
            raise FrameError(f"date {yy}-{mm}-{dd} week {ww}: not a calendar date")
        return f"20{yy}-{mm}-{dd}"
    if fmt.kind is Kind.TIME:
        hh, mi, ss = digits[0:2], digits[2:4], digits[4:6]
        if not (int(hh) <= 23 and int(mi) <= 59 and int(ss) <= 59):
            raise FrameError(f"time {hh}:{mi}:{ss}: not a time of day")
        return f"{hh}:{mi}:{ss}"
    magnitude = int(digits)
    value: int | float = magnitude / 10 ** fmt.decimals if fmt.decimals else magnitude
    return -value if negative else value


def encode_bcd(fmt: BcdFormat, value: int | float | str, *, signed: bool = False) -> bytes:
    """``value`` in ``fmt`` as sent (lowest byte first); FrameError if it does not fit."""
    if fmt.kind is Kind.NUMBER:
        if isinstance(value, str):
            raise FrameError(f"{value!r}: {fmt.pattern} holds a number")
        negative = value < 0
        if negative and not signed:
            raise FrameError(f"{value}: {fmt.pattern} is unsigned here")
        magnitude = round(abs(value) * 10 ** fmt.decimals)
        digits = f"{magnitude:0{2 * fmt.size}d}"
        top_limit = 7 if signed else 9  # the sign bit leaves 0-7 for the highest digit
        if len(digits) > 2 * fmt.size or int(digits[0]) > top_limit:
            raise FrameError(f"{value} does not fit {fmt.pattern}")
        raw = bytearray(bytes.fromhex(digits)[::-1])
        if negative and magnitude:
            raw[-1] |= SIGN_BIT
        return bytes(raw)
    text = str(value)
    if fmt.kind is Kind.DATE:
        try:
            day = date.fromisoformat(text)
        except ValueError as exc:
            raise FrameError(f"{value!r}: expected a date YYYY-MM-DD") from exc
        # WW: 0 is Sunday (A.5).
        digits = f"{day.year % 100:02d}{day.month:02d}{day.day:02d}{day.isoweekday() % 7:02d}"
    elif fmt.kind is Kind.TIME:
        digits = text.replace(":", "")
    else:
        digits = text
    if len(digits) != 2 * fmt.size or not digits.isdigit():
        raise FrameError(f"{value!r} does not fit {fmt.pattern}")
    return bytes.fromhex(digits)[::-1]

"""Numbers shown at the precision their register type and scale carry (pure; ``tail`` prints).

- A float32 register holds about 7 significant digits: its value is shown with the fewest
  digits that give the same float32 back (``50``, ``230.1``, ``123456792``), never rounded to a
  fixed 7 and never in exponent form where positional digits fit.
- A float64 register: the fewest digits that give the same float64 back (``2309737.967``,
  ``123456789.123``).
- An integer register with a scale (and offset): as many decimals as the scale has
  (``uint32`` litres at scale 0.001: ``2309737.967`` m³; at scale 1: ``2309737``), so a
  float's binary noise (``65602.53600000001``) never shows. DL/T 645 digits travel as float64
  with their step as scale and are shown the same way.
- Without a schema (version 2 batches) the type is guessed: a value a float32 holds exactly
  is shown as a float32, any other with up to 15 significant digits (which trims a scale's
  binary noise).

No ``.0`` is added to a whole number: the digits shown are the digits the device sent.
"""

from __future__ import annotations

import math
import struct

from edge_agent.codecs.schema import SeriesDef
from edge_agent.drivers.model import Point

FLOAT_TYPES = frozenset({"float32", "float64"})
MAX_DECIMALS = 12
UNTYPED_DIGITS = 15
_POSITIONAL_EXP = range(-5, 16)  # 1e-5 .. 1e15 are written out positionally


def _f32(v: float) -> float:
    """``v`` rounded to the nearest float32 (inf when out of its range)."""
    try:
        return float(struct.unpack("<f", struct.pack("<f", v))[0])
    except OverflowError:
        return math.copysign(math.inf, v)


def _shortest_digits(v: float, single: bool) -> int:
    """Fewest significant digits that read back as ``v`` (as float32 if ``single``)."""
    target = _f32(v) if single else v
    for digits in range(1, 18):
        back = float(f"{v:.{digits - 1}e}")
        if (_f32(back) if single else back) == target:
            return digits
    return 17


def positional(v: float, digits: int) -> str:
    """``v`` with ``digits`` significant digits, written out unless very large or small."""
    if v == 0:
        return "-0" if math.copysign(1.0, v) < 0 else "0"
    exp = math.floor(math.log10(abs(v)))
    if exp not in _POSITIONAL_EXP:
        mant, _, e = f"{v:.{digits - 1}e}".partition("e")
        mant = mant.rstrip("0").rstrip(".") if "." in mant else mant
        return f"{mant}e{int(e):+03d}"
    text = f"{v:.{max(0, digits - 1 - exp)}f}"
    # Rounding may carry into a new digit (9.99 -> 10.0): trailing zeros after the point
    # are then not digits the value carries.
    return text.rstrip("0").rstrip(".") if "." in text else text


def scale_decimals(*steps: float) -> int:
    """Decimals needed to write every multiple of each step exactly (0.001 -> 3, 0.5 -> 1)."""
    need = 0
    for step in steps:
        d = 0
        while d < MAX_DECIMALS and not math.isclose(step * 10 ** d, round(step * 10 ** d),
                                                    rel_tol=0.0, abs_tol=1e-9):
            d += 1
        need = max(need, d)
    return need


def format_number(v: float | int, series: SeriesDef | None = None) -> str:
    """A numeric reading as its type and scale carry it (see the module docstring)."""
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if series is None:
        if _f32(v) == v:
            return positional(v, _shortest_digits(v, single=True))
        return positional(v, min(UNTYPED_DIGITS, _shortest_digits(v, single=False)))
    scaled = series.scale != 1.0 or series.offset != 0.0
    if series.type in FLOAT_TYPES and not (scaled and series.type == "float64"):
        if scaled:  # a float32 register times a scale: still about 7 digits
            return positional(v, 7)
        return positional(v, _shortest_digits(v, single=series.type == "float32"))
    # An integer register (or DL/T 645 digits) times its scale: the scale's decimals.
    decimals = scale_decimals(series.scale, series.offset)
    text = f"{v:.{decimals}f}"
    return "0" if text == "-0" else text


def point_series(point: Point) -> SeriesDef:
    """A point's type, scale and offset as a schema series describes them (for ``read``)."""
    return SeriesDef("", point.name, point.type.value, point.unit, point.scale, point.offset)

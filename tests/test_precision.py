"""``tail`` shows values at the precision their register type and scale carry, with units."""

from __future__ import annotations

import struct

import pytest

from edge_agent.codecs.batch import DataBatch
from edge_agent.codecs.schema import SeriesDef
from edge_agent.protocol.readings import Reading
from edge_agent.tools.precision import format_number, positional, scale_decimals
from edge_agent.tools.tail import format_batch


def f32(v: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", v))[0])


def series(type_: str, scale: float = 1.0, offset: float = 0.0, unit: str = "") -> SeriesDef:
    return SeriesDef("d", "p", type_, unit, scale, offset, 1000)


@pytest.mark.parametrize(("value", "sd", "shown"), [
    # float32: the fewest digits that give the same float32 back; no ".0", no exponent.
    (f32(230.1), series("float32"), "230.1"),
    (f32(50.0), series("float32"), "50"),
    (f32(2309737.967), series("float32"), "2309738"),          # what a float32 holds
    (f32(123456789.123), series("float32"), "123456792"),
    (f32(0.000123), series("float32"), "0.000123"),
    (f32(-0.0), series("float32"), "-0"),
    # float64: every digit it holds.
    (2309737.967, series("float64"), "2309737.967"),
    (123456789.123, series("float64"), "123456789.123"),
    (1e300, series("float64"), "1e+300"),
    (5e-324, series("float64"), "5e-324"),
    # scaled integers: the scale's decimals, never binary noise.
    (2309737967 * 0.001, series("uint32", 0.001), "2309737.967"),
    (65602536 * 0.001, series("uint32", 0.001), "65602.536"),
    (2309737000 * 0.001, series("uint32", 0.001), "2309737.000"),
    (12 * 0.1 - 40, series("int16", 0.1, -40.0), "-38.8"),
    (7 * 0.5, series("uint16", 0.5), "3.5"),
    (2309737, series("uint32"), "2309737"),
    (2**64 - 1, series("uint64"), "18446744073709551615"),
    (float("nan"), series("float32"), "nan"),
    (float("-inf"), series("float64"), "-inf"),
    # no schema: a float32-exact value as a float32, others to 15 digits.
    (f32(230.1), None, "230.1"),
    (2309737.967, None, "2309737.967"),
    (65602536 * 0.001, None, "65602.536"),
])
def test_numbers_show_the_precision_their_type_and_scale_carry(
        value: float, sd: SeriesDef | None, shown: str) -> None:
    assert format_number(value, sd) == shown


def test_helpers() -> None:
    assert scale_decimals(0.001) == 3 and scale_decimals(1.0) == 0 and scale_decimals(0.25) == 2
    assert scale_decimals(0.1, -40.0) == 1
    assert positional(9.996, 3) == "10"


def test_a_batch_shows_units_and_precision_from_the_schema() -> None:
    readings = [Reading("water", "volume", 1_764_331_200_000, 2309737967 * 0.001),
                Reading("meter", "energy", 1_764_331_200_000, 123456789.123),
                Reading("meter", "voltage", 1_764_331_200_000, f32(230.1))]
    lines = format_batch(DataBatch("gw1", 1, 0, readings, 3), series={
        ("water", "volume"): SeriesDef("water", "volume", "uint32", "m³", 0.001, 0.0, 1000),
        ("meter", "energy"): SeriesDef("meter", "energy", "float64", "kWh", 1.0, 0.0, 1000),
        ("meter", "voltage"): SeriesDef("meter", "voltage", "float32", "V", 1.0, 0.0, 1000)})
    assert lines[1].endswith(" 2309737.967 m³")
    assert lines[2].endswith(" 123456789.123 kWh")
    assert lines[3].endswith(" 230.1 V")

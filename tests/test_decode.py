"""Register decoding: hand-computed values for every type and order, round trips, replies."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from edge_agent.drivers.modbus.decode import (
    INT_RANGE,
    DecodeFailure,
    decode_point,
    decode_request,
    encode_point,
    failed_readings,
)
from edge_agent.drivers.model import TYPE_LAYOUT, DataType, Point, ReadRequest, Table, WordOrder
from edge_agent.protocol.readings import Quality, Reading

SEED = 20240611  # fixed hypothesis seed, printed by the property tests
HR, IR, COIL = Table.HOLDING_REGISTER, Table.INPUT_REGISTER, Table.COIL
A, B, C, D = WordOrder.ABCD, WordOrder.BADC, WordOrder.CDAB, WordOrder.DCBA
ORDERS = [A, B, C, D]


def pt(dtype: DataType, order: WordOrder = A, *, address: int = 0, table: Table = HR,
       count: int | None = None, scale: float = 1.0, offset: float = 0.0,
       bit: int | None = None, bits: int = 1, name: str = "p") -> Point:
    n = count if count is not None else (1 if table.is_bit else TYPE_LAYOUT[dtype][0])
    return Point(name=name, table=table, address=address, type=dtype, count=n, order=order,
                 scale=scale, offset=offset, bit=bit, bits=bits)


# Every type x every order, registers written by hand as a data sheet would show them.
# Bytes of each value, most significant first, are A B C D (E F G H for 64-bit types).
HAND = [
    # uint16 0xABCD: A=AB B=CD
    (DataType.UINT16, 0xABCD, {A: [0xABCD], C: [0xABCD], B: [0xCDAB], D: [0xCDAB]}),
    # int16 -300 = 0xFED4
    (DataType.INT16, -300, {A: [0xFED4], C: [0xFED4], B: [0xD4FE], D: [0xD4FE]}),
    # uint32 0x12345678
    (DataType.UINT32, 0x12345678, {A: [0x1234, 0x5678], C: [0x5678, 0x1234],
                                   B: [0x3412, 0x7856], D: [0x7856, 0x3412]}),
    # int32 -2 = 0xFFFFFFFE
    (DataType.INT32, -2, {A: [0xFFFF, 0xFFFE], C: [0xFFFE, 0xFFFF],
                          B: [0xFFFF, 0xFEFF], D: [0xFEFF, 0xFFFF]}),
    # uint64 0x0102030405060708
    (DataType.UINT64, 0x0102030405060708, {
        A: [0x0102, 0x0304, 0x0506, 0x0708], C: [0x0708, 0x0506, 0x0304, 0x0102],
        B: [0x0201, 0x0403, 0x0605, 0x0807], D: [0x0807, 0x0605, 0x0403, 0x0201]}),
    # int64 -0x0102030405060708 = 0xFEFDFCFBFAF9F8F8
    (DataType.INT64, -0x0102030405060708, {
        A: [0xFEFD, 0xFCFB, 0xFAF9, 0xF8F8], C: [0xF8F8, 0xFAF9, 0xFCFB, 0xFEFD],
        B: [0xFDFE, 0xFBFC, 0xF9FA, 0xF8F8], D: [0xF8F8, 0xF9FA, 0xFBFC, 0xFDFE]}),
    # float32 -1.5 = 0xBFC00000
    (DataType.FLOAT32, -1.5, {A: [0xBFC0, 0x0000], C: [0x0000, 0xBFC0],
                              B: [0xC0BF, 0x0000], D: [0x0000, 0xC0BF]}),
    # float32 230.1 (SDM630 phase voltage) rounds to 0x4366199A
    (DataType.FLOAT32, struct.unpack(">f", bytes.fromhex("4366199A"))[0], {
        A: [0x4366, 0x199A], C: [0x199A, 0x4366], B: [0x6643, 0x9A19], D: [0x9A19, 0x6643]}),
    # float64 -2.5 = 0xC004000000000000; 1/3 = 0x3FD5555555555555
    (DataType.FLOAT64, -2.5, {A: [0xC004, 0, 0, 0], C: [0, 0, 0, 0xC004],
                              B: [0x04C0, 0, 0, 0], D: [0, 0, 0, 0x04C0]}),
    (DataType.FLOAT64, 1 / 3, {A: [0x3FD5, 0x5555, 0x5555, 0x5555],
                               C: [0x5555, 0x5555, 0x5555, 0x3FD5],
                               B: [0xD53F, 0x5555, 0x5555, 0x5555],
                               D: [0x5555, 0x5555, 0x5555, 0xD53F]}),
    (DataType.BOOL, True, {A: [1], C: [1], B: [1], D: [1]}),
    (DataType.BOOL, False, {A: [0], C: [0], B: [0], D: [0]}),
]


@pytest.mark.parametrize("order", ORDERS, ids=str)
@pytest.mark.parametrize(("dtype", "value", "regs"), HAND,
                         ids=[f"{t.value}:{v!r}" for t, v, _ in HAND])
def test_every_type_and_order_against_hand_computed_registers(
        dtype: DataType, value: object, regs: dict[WordOrder, list[int]],
        order: WordOrder) -> None:
    p = pt(dtype, order)
    decoded = decode_point(p, regs[order])
    assert decoded == value and type(decoded) is type(value)
    assert encode_point(p, decoded) == regs[order]


def test_sdm630_data_sheet_voltage_decodes_to_230_1() -> None:
    # The data sheet prints 230.1 V as 0x4366 0x1999 (truncated); word-swapped meters send
    # the same words in the other order.
    voltage = pt(DataType.FLOAT32, A, table=IR)
    assert decode_point(voltage, [0x4366, 0x1999]) == pytest.approx(230.1, abs=1e-4)
    assert decode_point(pt(DataType.FLOAT32, C, table=IR), [0x1999, 0x4366]) == pytest.approx(
        230.1, abs=1e-4)
    assert encode_point(voltage, 230.1) == [0x4366, 0x199A]  # nearest float32


@pytest.mark.parametrize(("regs", "check"), [
    ([0x7FC0, 0x0000], math.isnan),
    ([0x7F80, 0x0000], lambda v: v == math.inf),
    ([0xFF80, 0x0000], lambda v: v == -math.inf),
])
def test_nan_and_inf_decode_as_they_are_with_good_quality(regs: list[int], check: object) -> None:
    p = pt(DataType.FLOAT32, name="t")
    assert callable(check) and check(decode_point(p, regs))
    req = ReadRequest(HR, 0, 2, (p,))
    [reading] = decode_request(req, regs, device="d", ts_ms=1)
    assert reading.quality is Quality.GOOD and check(reading.value)


# --- scale and offset -----------------------------------------------------------------

def test_integers_stay_int_without_scaling_and_become_float_with_it() -> None:
    assert type(decode_point(pt(DataType.UINT16), [7])) is int
    assert type(decode_point(pt(DataType.INT64), [0, 0, 0, 7])) is int
    assert decode_point(pt(DataType.UINT16, scale=0.1), [2301]) == pytest.approx(230.1)
    assert type(decode_point(pt(DataType.UINT16, scale=2.0), [3])) is float
    assert decode_point(pt(DataType.UINT16, scale=2.0), [3]) == 6.0
    assert type(decode_point(pt(DataType.UINT16, offset=1.0), [3])) is float


def test_scale_and_offset_apply_as_value_times_scale_plus_offset() -> None:
    temp = pt(DataType.INT16, scale=0.5, offset=10.0)
    assert decode_point(temp, [0xFFD8]) == -10.0  # raw -40 * 0.5 + 10
    assert encode_point(temp, -10.0) == [0xFFD8]
    assert encode_point(temp, -10.2) == [0xFFD8]  # raw -40.4 rounds to -40
    energy = pt(DataType.UINT32, C, scale=0.01, offset=-5.0)
    assert decode_point(energy, [0x5678, 0x1234]) == pytest.approx(0x12345678 * 0.01 - 5)
    flow = pt(DataType.FLOAT32, scale=3.6)
    assert decode_point(flow, [0x3F80, 0]) == pytest.approx(3.6)
    assert encode_point(flow, 3.6) == [0x3F80, 0]


@pytest.mark.parametrize(("dtype", "scale", "offset"), [
    (DataType.UINT16, 0.1, 0.0), (DataType.INT16, 0.01, -40.0), (DataType.UINT16, 1.0, 273.15),
    (DataType.INT16, 10.0, 0.0),
])
def test_scaled_integers_round_trip_from_every_register_value(
        dtype: DataType, scale: float, offset: float) -> None:
    p = pt(dtype, scale=scale, offset=offset)
    for reg in range(0, 0x10000, 7):
        assert encode_point(p, decode_point(p, [reg])) == [reg], reg


# --- bit fields and bools -------------------------------------------------------------

def test_bit_fields_count_from_the_least_significant_bit() -> None:
    reg = [0b1010_0000_1000_0101]
    assert [decode_point(pt(DataType.BOOL, bit=b), reg) for b in (0, 1, 2, 7, 15)] == [
        True, False, True, True, True]
    assert decode_point(pt(DataType.UINT16, bit=12, bits=4), reg) == 0b1010
    assert decode_point(pt(DataType.UINT16, bit=0, bits=3), reg) == 0b101
    assert decode_point(pt(DataType.UINT16, bit=0, bits=16), reg) == reg[0]
    assert decode_point(pt(DataType.UINT16, bit=12, bits=4, scale=10.0), reg) == 100.0
    # the register is taken as received: word/byte order does not move bits
    assert decode_point(pt(DataType.BOOL, B, bit=0), reg) is True


def test_bool_register_without_bit_is_nonzero_and_coils_are_bits() -> None:
    assert decode_point(pt(DataType.BOOL), [0x8000]) is True
    assert decode_point(pt(DataType.BOOL), [0]) is False
    coil = pt(DataType.BOOL, table=COIL)
    assert decode_point(coil, [True]) is True and decode_point(coil, [0]) is False
    assert encode_point(coil, True) == [True] and encode_point(coil, False) == [False]


def test_bit_fields_cannot_be_encoded_alone() -> None:
    with pytest.raises(ValueError, match=r"point 'p' .*bit field cannot be written alone"):
        encode_point(pt(DataType.BOOL, bit=3), True)


# --- strings --------------------------------------------------------------------------

def test_strings_two_chars_per_register_in_byte_order() -> None:
    model = pt(DataType.STRING, count=4)
    regs = [0x5344, 0x4D36, 0x3330, 0x0000]  # "SDM630" + NUL padding
    assert decode_point(model, regs) == "SDM630"
    assert encode_point(model, "SDM630") == regs
    swapped = pt(DataType.STRING, B, count=4)
    assert decode_point(swapped, [0x4453, 0x364D, 0x3033, 0x0000]) == "SDM630"
    assert decode_point(pt(DataType.STRING, D, count=4), [0x4453, 0x364D, 0x3033, 0]) == "SDM630"
    assert decode_point(pt(DataType.STRING, C, count=4), regs) == "SDM630"
    assert decode_point(model, [0x4142, 0x2020, 0x0020, 0]) == "AB"  # trailing spaces, NULs
    assert decode_point(model, [0x2041, 0x0042, 0, 0]) == " A\x00B"  # only trailing ones go


def test_non_ascii_strings_fail_to_decode_and_encode() -> None:
    model = pt(DataType.STRING, count=2, name="model")
    with pytest.raises(DecodeFailure, match=r"point 'model' .*not ASCII"):
        decode_point(model, [0xC3A9, 0x0000])
    with pytest.raises(ValueError, match="not ASCII"):
        encode_point(model, "é")
    with pytest.raises(ValueError, match="longer than 4 characters"):
        encode_point(model, "ABCDE")


# --- failures -------------------------------------------------------------------------

@pytest.mark.parametrize("p", [pt(DataType.FLOAT32), pt(DataType.STRING, count=3),
                               pt(DataType.UINT16, bit=2), pt(DataType.BOOL),
                               pt(DataType.BOOL, table=COIL)],
                         ids=["float32", "string", "bitfield", "bool", "coil"])
def test_wrong_length_is_a_decode_failure_naming_the_point(p: Point) -> None:
    with pytest.raises(DecodeFailure, match=r"point 'p' \(.* 0, .*\): expected \d"):
        decode_point(p, [1] * (p.count + 1))


def test_registers_outside_16_bits_are_a_decode_failure() -> None:
    with pytest.raises(DecodeFailure, match="not all 16-bit values"):
        decode_point(pt(DataType.UINT32), [0x10000, 0])
    with pytest.raises(DecodeFailure, match="not a 16-bit value"):
        decode_point(pt(DataType.UINT16, bit=0), [-1])
    assert issubclass(DecodeFailure, ValueError)


@pytest.mark.parametrize(("p", "value", "message"), [
    (pt(DataType.UINT16, name="lvl"), 70000, r"point 'lvl' .*raw 70000, out of range for uint16 "
                                             r"\(0\.\.65535\)"),
    (pt(DataType.UINT16), -1, r"out of range for uint16"),
    (pt(DataType.INT16, scale=0.1), 4000.0, r"raw 40000, out of range for int16"),
    (pt(DataType.UINT64), 2**64, r"out of range for uint64"),
    (pt(DataType.INT32), math.nan, r"no integer encoding"),
    (pt(DataType.FLOAT32), 1e39, r"out of range for float32"),
    (pt(DataType.UINT16), "12", r"expected a number"),
    (pt(DataType.BOOL, table=COIL), 2, r"expected a bool"),
    (pt(DataType.STRING, count=2), 12, r"expected a string"),
])
def test_encode_rejects_values_it_cannot_represent(p: Point, value: Any,
                                                   message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_point(p, value)


# --- whole replies --------------------------------------------------------------------

def _meter_request() -> ReadRequest:
    points = (
        pt(DataType.FLOAT32, name="voltage", address=100),
        pt(DataType.UINT16, name="status", address=104),  # hole 102..103
        pt(DataType.BOOL, name="alarm", address=104, bit=15),
        pt(DataType.STRING, name="model", address=105, count=2),
    )
    return ReadRequest(HR, 100, 7, points)


def test_decode_request_slices_each_point_out_of_the_reply() -> None:
    reply = [0x4366, 0x199A, 0xDEAD, 0xBEEF, 0x8001, 0x5344, 0x4D00]
    readings = decode_request(_meter_request(), reply, device="m1", ts_ms=1000)
    assert [(r.point, r.value, r.quality) for r in readings] == [
        ("voltage", pytest.approx(230.1, abs=1e-4), Quality.GOOD),
        ("status", 0x8001, Quality.GOOD),
        ("alarm", True, Quality.GOOD),
        ("model", "SDM", Quality.GOOD),
    ]
    assert all(r.device == "m1" and r.ts_ms == 1000 and r.exception_code is None
               for r in readings)


def test_one_undecodable_point_does_not_spoil_the_others() -> None:
    reply = [0x4366, 0x199A, 0, 0, 0x0001, 0xC3A9, 0x0000]
    readings = decode_request(_meter_request(), reply, device="m1", ts_ms=5)
    assert [r.quality for r in readings] == [Quality.GOOD, Quality.GOOD, Quality.GOOD,
                                             Quality.DECODE_ERROR]
    assert readings[3].value is None


def test_short_reply_marks_only_the_points_it_does_not_reach() -> None:
    readings = decode_request(_meter_request(), [0x4366, 0x199A, 0, 0, 7, 0x4142], device="m",
                              ts_ms=5)
    assert [(r.value, r.quality) for r in readings] == [
        (pytest.approx(230.1, abs=1e-4), Quality.GOOD), (7, Quality.GOOD),
        (False, Quality.GOOD), (None, Quality.DECODE_ERROR)]
    assert all(r.quality is Quality.DECODE_ERROR
               for r in decode_request(_meter_request(), [], device="m", ts_ms=5))


def test_padded_bit_replies_are_sliced_by_address() -> None:
    points = (pt(DataType.BOOL, table=COIL, address=10, name="a"),
              pt(DataType.BOOL, table=COIL, address=12, name="b"))
    req = ReadRequest(COIL, 10, 3, points)
    padded = [True, False, False, False, False, False, False, False]  # pymodbus pads to 8
    assert [r.value for r in decode_request(req, padded, device="d", ts_ms=0)] == [True, False]
    assert [r.value for r in decode_request(req, [False, True, True], device="d", ts_ms=0)] == [
        False, True]


def test_failed_readings_carry_quality_and_exception_code() -> None:
    points = _meter_request().points
    assert failed_readings(points[:2], Quality.DEVICE_EXCEPTION, device="m", ts_ms=9,
                           exception_code=2) == [
        Reading("m", "voltage", 9, None, Quality.DEVICE_EXCEPTION, 2),
        Reading("m", "status", 9, None, Quality.DEVICE_EXCEPTION, 2)]
    assert failed_readings(points[:1], Quality.COMM_ERROR, device="m", ts_ms=9) == [
        Reading("m", "voltage", 9, None, Quality.COMM_ERROR, None)]


# --- round trips (hypothesis) ---------------------------------------------------------

INT_TYPES = sorted(INT_RANGE, key=str)


@st.composite
def int_cases(draw: st.DrawFn) -> tuple[Point, int]:
    dtype = draw(st.sampled_from(INT_TYPES))
    lo, hi = INT_RANGE[dtype]
    return pt(dtype, draw(st.sampled_from(ORDERS))), draw(st.integers(lo, hi))


@seed(SEED)
@settings(max_examples=500, deadline=None, database=None)
@given(int_cases())
def test_integers_round_trip_over_their_full_range(case: tuple[Point, int]) -> None:
    print(f"hypothesis seed {SEED}")
    p, value = case
    regs = encode_point(p, value)
    assert len(regs) == p.count and all(0 <= r <= 0xFFFF for r in regs)
    decoded = decode_point(p, regs)
    assert decoded == value and type(decoded) is int


def _bits(dtype: DataType, value: float) -> bytes:
    return struct.pack(TYPE_LAYOUT[dtype][1], value)


@seed(SEED)
@settings(max_examples=500, deadline=None, database=None)
@given(st.sampled_from(ORDERS),
       st.one_of(st.tuples(st.just(DataType.FLOAT32), st.floats(width=32)),
                 st.tuples(st.just(DataType.FLOAT64), st.floats())))
def test_floats_round_trip_bit_exact(order: WordOrder, case: tuple[DataType, float]) -> None:
    print(f"hypothesis seed {SEED}")
    dtype, value = case
    p = pt(dtype, order)
    decoded = decode_point(p, encode_point(p, value))
    assert isinstance(decoded, float)
    assert _bits(dtype, decoded) == _bits(dtype, value)  # NaN and -0.0 included


@seed(SEED)
@settings(max_examples=300, deadline=None, database=None)
@given(st.sampled_from(ORDERS), st.integers(1, 12), st.data())
def test_strings_round_trip(order: WordOrder, count: int, data: st.DataObject) -> None:
    print(f"hypothesis seed {SEED}")
    text = data.draw(st.text(st.characters(min_codepoint=0, max_codepoint=127),
                             max_size=2 * count).map(lambda s: s.rstrip("\x00 ")))
    p = pt(DataType.STRING, order, count=count)
    assert decode_point(p, encode_point(p, text)) == text


@seed(SEED)
@settings(max_examples=300, deadline=None, database=None)
@given(st.sampled_from(INT_TYPES), st.sampled_from(ORDERS), st.data())
def test_any_registers_survive_decode_then_encode(dtype: DataType, order: WordOrder,
                                                  data: st.DataObject) -> None:
    print(f"hypothesis seed {SEED}")
    regs = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=TYPE_LAYOUT[dtype][0],
                              max_size=TYPE_LAYOUT[dtype][0]))
    p = pt(dtype, order)
    assert encode_point(p, decode_point(p, regs)) == regs


def test_encode_write_enforces_access_profile_limits_and_exactness() -> None:
    from edge_agent.drivers.modbus.decode import encode_write
    from edge_agent.drivers.model import Access

    dim = Point(name="dim", table=Table.HOLDING_REGISTER, address=0, type=DataType.UINT16,
                count=1, access=Access.READ_WRITE, min_value=0, max_value=100)
    assert encode_write(dim, 40) == [40]
    with pytest.raises(ValueError, match="above the profile's maximum 100"):
        encode_write(dim, 101)
    with pytest.raises(ValueError, match="below the profile's minimum 0"):
        encode_write(dim, -1)
    with pytest.raises(ValueError, match="cannot be represented exactly"):
        encode_write(dim, 40.5)
    with pytest.raises(ValueError, match="read-only"):
        encode_write(Point(name="p", table=Table.HOLDING_REGISTER, address=0,
                           type=DataType.UINT16, count=1), 1)

"""DL/T 645-2007 frame codec and BCD formats: golden frames, a reference package, properties."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.drivers.bus import DeviceConfig
from edge_agent.drivers.dlt645.bcd import FORMATS, decode_bcd, encode_bcd
from edge_agent.drivers.dlt645.frame import (
    Frame,
    FrameError,
    decode_frame,
    encode_frame,
    error_text,
    next_frame,
    read_address_request,
    read_follow_request,
    read_request,
)
from edge_agent.drivers.dlt645.identifiers import IDENTIFIERS, block_of, block_slot
from edge_agent.drivers.dlt645.meter import load_meter_profile, shipped_meter_profiles
from edge_agent.drivers.dlt645.planner import decode_meter_read, plan_meter_reads
from edge_agent.drivers.dlt645.transport import check_reply
from edge_agent.drivers.profile import DeviceProfile
from edge_agent.drivers.sim.meter import MeterSim
from edge_agent.protocol.errors import EdgeError
from edge_agent.protocol.readings import Quality

ADDRESS = "000102030425"  # on the wire 25 04 03 02 01 00 (4.2.2: lowest byte first)

# Worked by hand from 4.2: 68, address low byte first, 68, C, L, DATA + 33 each, CS, 16.
# Read forward active total energy 00 01 00 00: DATA = 00 00 01 00 (DI0 first) + 33 each
# = 33 33 34 33; CS = 68+25+04+03+02+01+00+68+11+04+33+33+34+33 = 0x4E1 -> E1.
GOLDEN_READ = bytes.fromhex("FEFEFEFE 68 250403020100 68 11 04 33333433 E1 16")
# The meter's normal reply (C = 91: D7 set, function 11): DI then XXXXXX.XX = 1206.42 kWh
# sent 42 06 12 00 (lowest first) + 33 each = 75 39 45 33; CS = 0x8B.
GOLDEN_REPLY = bytes.fromhex("68 250403020100 68 91 08 33333433 75394533 8B 16")
# Broadcast read-address (function 13, address AA x 6, no data): CS = 0xDF.
GOLDEN_READ_ADDRESS = bytes.fromhex("FEFEFEFE 68 AAAAAAAAAAAA 68 13 00 DF 16")
# Abnormal reply (C = D1: D7 and D6 set) with error byte 02 "no requested data" + 33 = 35.
GOLDEN_ERROR = bytes.fromhex("68 250403020100 68 D1 01 35 06 16")
# Voltage block 02 01 FF 00 from meter 000000000101: DI sent 00 FF 01 02 + 33 = 33 32 34 35,
# then XXX.X per phase, lowest byte first, + 33: 220.5 -> 05 22 -> 38 55; 221.0 -> 10 22 ->
# 43 55; 219.8 -> 98 21 -> CB 54. L = 0A; CS = 0x7F.
GOLDEN_BLOCK = bytes.fromhex("FEFEFEFE 68 010100000000 68 91 0A 33323435 3855 4355 CB54 7F 16")
# Its reply to read-address (C = 93): the address again in DATA, + 33 each; CS = 0x9F.
GOLDEN_ADDRESS_REPLY = bytes.fromhex("68 010100000000 68 93 06 343433333333 9F 16")


def test_golden_request_frames() -> None:
    assert read_request(ADDRESS, 0x00010000) == GOLDEN_READ
    assert read_address_request() == GOLDEN_READ_ADDRESS
    # Follow-up (function 12): DI + SEQ 01, + 33 each.
    follow = read_follow_request(ADDRESS, 0x00010000, 1)
    body = bytes.fromhex("68 250403020100 68 12 05 33333433 34")
    assert follow == b"\xfe" * 4 + body + bytes([sum(body) & 0xFF, 0x16])


def test_golden_replies_decode() -> None:
    reply = decode_frame(GOLDEN_REPLY)
    assert reply == Frame(ADDRESS, 0x91, bytes.fromhex("00000100 42061200"))
    assert reply.from_meter and not reply.abnormal and not reply.follows
    value = decode_bcd(FORMATS["XXXXXX.XX"], reply.data[4:])
    assert value == pytest.approx(1206.42)
    err = decode_frame(GOLDEN_ERROR)
    assert err.abnormal and err.function == 0x11 and err.data == b"\x02"
    assert error_text(err.data[0]) == "no requested data"
    block = decode_frame(GOLDEN_BLOCK)
    assert block.address == "000000000101" and block.data[:4] == (0x0201FF00).to_bytes(4, "little")
    volts = [decode_bcd(FORMATS["XXX.X"], block.data[i:i + 2]) for i in (4, 6, 8)]
    assert volts == [220.5, 221.0, 219.8]
    assert encode_frame(block) == GOLDEN_BLOCK
    addr = decode_frame(GOLDEN_ADDRESS_REPLY)
    assert addr.function == 0x13 and addr.from_meter and addr.data[::-1].hex() == "000000000101"


def test_the_simulated_meter_answers_with_the_golden_bytes() -> None:
    """The simulator's replies are built by the same codec: checked here against the vectors."""
    cfg = DeviceConfig("m", "b", 101, DeviceProfile("p", "", ()), 1.0, (),
                       address="000000000101")
    meter = MeterSim(cfg, seed=0)
    reply = meter.answer(decode_frame(read_address_request()), 0.0)
    assert reply == b"\xfe" * 4 + GOLDEN_ADDRESS_REPLY
    wildcard = decode_frame(read_address_request("AAAAAAAAAA02"))
    assert meter.answer(wildcard, 0.0) is None  # AA matches any byte; 02 is not its 01


def test_against_the_dlt645_package_frame_layer() -> None:
    """The PyPI ``dlt645`` package's frame layer (not its client) builds the same bytes."""
    proto = pytest.importorskip("dlt645.protocol.protocol").DLT645Protocol
    addr = bytes.fromhex(ADDRESS)[::-1]
    for di in (0x00010000, 0x0201FF00, 0x02030100, 0x04000401):
        theirs = bytes(proto.build_frame(addr, 0x11, di.to_bytes(4, "little"), 4))
        assert read_request(ADDRESS, di) == theirs
    rest, frame = proto.deserialize_with_remaining(b"\x00\x68\x16" + GOLDEN_REPLY + b"\xfe")
    assert frame is not None and bytes(frame.data) == decode_frame(GOLDEN_REPLY).data
    assert rest == b"\xfe"


def test_stream_skips_noise_and_rejects_bad_checksum() -> None:
    bad = bytearray(GOLDEN_REPLY)
    bad[-2] ^= 0xFF
    stream = b"\x00\x68\x11" + bytes(bad) + b"\xfe\xfe" + GOLDEN_ERROR
    steps = []
    buf = stream
    while True:
        step = next_frame(buf)
        steps.append(step)
        if step.frame is None and step.rejected is None:
            break
        buf = step.rest
    rejected = [s.rejected for s in steps if s.rejected]
    frames = [s.frame for s in steps if s.frame]
    assert any("checksum" in r for r in rejected)
    assert frames == [decode_frame(GOLDEN_ERROR)]


def test_incomplete_frame_waits_for_more() -> None:
    step = next_frame(b"\x01\x02" + GOLDEN_REPLY[:-3])
    assert step.frame is None and step.rejected is None
    assert step.rest == GOLDEN_REPLY[:-3]
    assert next_frame(step.rest + GOLDEN_REPLY[-3:]).frame == decode_frame(GOLDEN_REPLY)


@pytest.mark.parametrize(("pattern", "raw", "signed", "value"), [
    ("XXX.X", bytes.fromhex("0522"), False, 220.5),          # 220.5 V sent 05 22
    ("XXX.XXX", bytes.fromhex("005081"), True, -15.0),       # sign bit of the top byte
    ("XX.XXXX", bytes.fromhex("563412"), True, 12.3456),
    ("X.XXX", bytes.fromhex("9989"), True, -0.999),
    ("XX.XX", bytes.fromhex("0050"), False, 50.0),
    ("YYMMDDWW", bytes.fromhex("00061226"), False, "2026-12-06"),  # a Sunday: WW 00
    ("hhmmss", bytes.fromhex("594723"), False, "23:47:59"),
    ("NNNNNNNNNNNN", bytes.fromhex("250403020100"), False, "000102030425"),
])
def test_bcd_formats(pattern: str, raw: bytes, signed: bool, value: object) -> None:
    fmt = FORMATS[pattern]
    got = decode_bcd(fmt, raw, signed=signed)
    assert got == (pytest.approx(value) if isinstance(value, float) else value)
    assert encode_bcd(fmt, value, signed=signed) == raw  # type: ignore[arg-type]


def test_bcd_refuses_what_is_not_bcd() -> None:
    with pytest.raises(FrameError, match="not BCD"):
        decode_bcd(FORMATS["XXX.X"], bytes.fromhex("0A22"))
    with pytest.raises(FrameError, match="expected 2"):
        decode_bcd(FORMATS["XXX.X"], b"\x00")
    with pytest.raises(FrameError, match="does not fit"):
        encode_bcd(FORMATS["XX.XXXX"], 80.0, signed=True)  # the sign bit leaves 0-7 on top


def test_block_slots_follow_the_table() -> None:
    assert block_of(0x02010200) == 0x0201FF00 and block_slot(0x0201FF00, 0x02010200) == 1
    assert block_of(0x00010000) == 0x0001FF00 and block_slot(0x0001FF00, 0x00010300) == 3
    assert block_of(0x02800002) is None and block_of(0x0201FF00) is None
    assert IDENTIFIERS[0x02020100].signed and IDENTIFIERS[0x02020100].unit == "A"


addresses = st.text("0123456789", min_size=12, max_size=12)
frames = st.builds(Frame, addresses, st.integers(0, 255), st.binary(max_size=255))


@settings(max_examples=300, deadline=None)
@given(frames, st.integers(0, 4))
def test_encode_then_decode_is_identity(frame: Frame, wake: int) -> None:
    raw = encode_frame(frame, preamble=b"\xfe" * wake)
    assert decode_frame(raw) == frame
    step = next_frame(b"\x00\x16" + raw + b"\x55")
    assert step.frame == frame and step.rest == b"\x55"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(FORMATS)), st.binary(min_size=1, max_size=6), st.booleans())
def test_bcd_decode_raises_only_the_projects_error(pattern: str, raw: bytes,
                                                   signed: bool) -> None:
    fmt = FORMATS[pattern]
    try:
        value = decode_bcd(fmt, raw, signed=signed)
    except EdgeError:
        return
    # Whatever decodes encodes back to bytes that decode to the same value.
    assert decode_bcd(fmt, encode_bcd(fmt, value, signed=signed), signed=signed) == value


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_no_byte_string_makes_the_decoder_raise_anything_else(raw: bytes) -> None:
    with contextlib.suppress(EdgeError):
        decode_frame(raw)
    buf = raw
    for _ in range(len(raw) + 1):  # each step consumes at least one byte or stops
        step = next_frame(buf)
        if step.frame is None and step.rejected is None:
            break
        assert len(step.rest) < len(buf)
        buf = step.rest


@settings(max_examples=300, deadline=None)
@given(frames, st.binary(max_size=40), st.integers(0, 40))
def test_a_frame_is_found_after_noise(frame: Frame, noise: bytes, cut: int) -> None:
    """Whatever noise precedes it, the frame is found (perhaps after rejected candidates)."""
    raw = encode_frame(frame)
    buf = noise + raw
    found = []
    for _ in range(len(buf) + 1):
        step = next_frame(buf)
        if step.frame is not None:
            found.append(step.frame)
        if step.frame is None and step.rejected is None:
            break
        buf = step.rest
    # Noise can fake a frame that swallows the real one's start; it never stops the search
    # from ending, and with noise free of 68 the real frame is always the one found.
    if 0x68 not in noise:
        assert found == [frame]
    else:
        assert found  # ours, or (rarely) a valid frame the noise spelt that covers ours


def test_a_bogus_length_in_noise_does_not_hide_a_whole_frame() -> None:
    # 68 + six bytes + 68 + C + L = FF: a "frame" that would need 255 more data bytes.
    noise = bytes.fromhex("68 000000000000 68 11 FF")
    step = next_frame(noise + GOLDEN_REPLY)
    assert step.frame == decode_frame(GOLDEN_REPLY) and step.rest == b""


@settings(max_examples=500, deadline=None)
@given(frames, st.integers(0, 0xFFFFFFFF))
def test_any_frame_is_a_reply_value_or_no_reply_never_an_exception(frame: Frame,
                                                                    di: int) -> None:
    outcome = check_reply(frame, frame.address, frame.function, di)
    if outcome is not None:
        assert (outcome.data is not None) + (outcome.exception_code is not None) \
            + (outcome.error is not None) == 1


PROFILE_POINTS = load_meter_profile(shipped_meter_profiles()["dlt645_meter"]).points


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40), st.sets(st.sampled_from(range(len(PROFILE_POINTS))), min_size=1))
def test_any_reply_data_decodes_to_readings_never_an_exception(data: bytes,
                                                               which: set[int]) -> None:
    points = [PROFILE_POINTS[i] for i in sorted(which)]
    for req in plan_meter_reads(points):
        readings = decode_meter_read(req, data, device="m", ts_ms=1)
        assert [r.point for r in readings] == [p.name for p in req.points]
        assert all((r.value is None) == (r.quality is Quality.DECODE_ERROR) for r in readings)

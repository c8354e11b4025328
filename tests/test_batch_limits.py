"""The batch decoder is total and bounded (issue "nothing stops silently", item 3).

``decode_batch`` raises CodecError and nothing else for any input, checks its limits before
the work they bound (a 47 KB batch of 2,000,000 readings is refused before one is built), and
still decodes every genuine batch afterwards.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from edge_agent import codecs
from edge_agent.codecs import batch_v2
from edge_agent.codecs.batch import BatchLimits, DataBatch, decode_batch
from edge_agent.codecs.batch_model import DEFAULT_LIMITS, name_problem
from edge_agent.codecs.batch_v2 import encode_batch_v2
from edge_agent.protocol.errors import CodecError
from edge_agent.protocol.readings import Quality, Reading
from tests.support.hostile_json import RAW_PIECES, Raw, hostile_values, mutations, render
from tests.support.v1batch import encode_batch_v1

SEED = 20261202
print(f"test_batch_limits seed {SEED}")
T0 = 1_764_000_000_000
GENUINE_READINGS = [
    *(Reading("meter-1", "voltage_l1", T0 + i * 1000, 230.0 + i / 10) for i in range(20)),
    *(Reading("meter-1", "relay_on", T0 + i * 1000, i % 3 == 0) for i in range(20)),
    Reading("meter-1", "serial", T0, "SN-42"),
    Reading("lamp_2", "dim", T0, None, Quality.DEVICE_EXCEPTION, 2),
    Reading("lamp_2", "energy", T0, 2**64 - 1),
]
GENUINE = encode_batch_v2("gw-0001", 7, 3, GENUINE_READINGS)
GENUINE_V1 = encode_batch_v1("gw-0001", 7, 3, GENUINE_READINGS)


def v2(header: bytes | dict[str, Any], body: bytes = codecs.encode_batch({})) -> bytes:
    """A version 2 batch from a header (raw bytes or a document) and a codec body."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return b"\x02" + batch_v2._varint(len(raw)) + raw + body


def header(**kw: Any) -> dict[str, Any]:
    return {"g": "gw-0001", "e": 1, "s": 2, "x": [], **kw}


def refused(blob: bytes, words: str = "", limits: BatchLimits = DEFAULT_LIMITS) -> CodecError:
    """CodecError from a check (not the backstop that names a decoder's bug)."""
    with pytest.raises(CodecError) as info:
        decode_batch(blob, limits)
    assert "decoder failed" not in str(info.value), info.value
    assert words in str(info.value), info.value
    return info.value


def decoded_or_refused(blob: bytes, limits: BatchLimits = DEFAULT_LIMITS) -> DataBatch | None:
    """The batch, or None after a CodecError from a check; anything else fails the test."""
    try:
        batch = decode_batch(blob, limits)
    except CodecError as exc:
        assert "decoder failed" not in str(exc), exc
        return None
    # Whatever decodes keeps every rule: names, times, the limits.
    assert len(batch.readings) <= limits.budget(len(blob))
    assert name_problem(batch.gateway, point=False) is None
    for r in batch.readings:
        assert name_problem(r.device, point=False) is None, r
        assert name_problem(r.point, point=True) is None, r
        assert 0 <= r.ts_ms < 2**63, r
        assert not isinstance(r.value, str) or len(r.value) <= limits.max_text
    return batch


def test_genuine_batches_decode() -> None:
    for blob in (GENUINE, GENUINE_V1):
        assert len(decode_batch(blob).readings) == len(GENUINE_READINGS)


# ---------------------------------------------------------------- the cases seen in the field


def test_a_47_kb_batch_of_2_million_readings_is_refused_before_any_is_built() -> None:
    n = 2_000_000
    blob = v2(header(), codecs.encode_batch({"a/b": (range(n), [0] * n)}))
    assert len(blob) < 48_000  # ~43 readings per byte: run-length values, width-0 timestamps
    tracemalloc.start()
    start = time.perf_counter()
    try:
        err = refused(blob, "2000000 or more readings exceed the limit of 100000")
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - start < 0.5
    assert peak < 5_000_000, peak  # it blew an ingest up to 689 MB before
    assert str(err).startswith("data batch v2")


def test_the_readings_limits_are_the_callers() -> None:
    # 5000 readings of one constant series on the poll grid: the agent's densest batch.
    blob = encode_batch_v2("gw", 1, 2, [Reading("m", "on", T0 + i * 1000, True)
                                        for i in range(5000)])
    assert len(blob) * 25 < 5000 < len(blob) * 32
    assert len(decode_batch(blob).readings) == 5000
    refused(blob, "5000 or more readings exceed the limit of 4999",
            BatchLimits(max_readings=4999))
    refused(blob, "per byte", BatchLimits(max_readings_per_byte=20))
    refused(GENUINE, "exceeds the limit of 100", BatchLimits(max_bytes=100))
    refused(GENUINE, "2 codec series exceed the limit of 1", BatchLimits(max_series=1))
    with pytest.raises(ValueError, match="max_readings"):
        BatchLimits(max_readings=0)


@pytest.mark.parametrize(("blob", "words"), [
    (v2(b'{"g":"\\ud800","e":1,"s":2,"x":[]}'), "$.g: string '\\ud800' holds a lone surrogate"),
    (v2(b'{"g":"gw","e":1,"s":2,"x":[["d/\\udc00",1,1,null,null]]}'), "$.x[0][0]"),
    (v2(b'{"g":"gw","e":1,"s":2,"x":[["d/p",1,1,null,"a\\ud800"]]}'), "$.x[0][4]"),
    (v2(b'{"g":"\xff","e":1,"s":2,"x":[]}'), "not UTF-8"),
    (v2(b'{"g":"\xed\xa0\x80","e":1,"s":2,"x":[]}'), "not UTF-8"),  # an encoded surrogate
    (v2(header(x=[["d/" + "p" * 65, 1, 1, None, None]])), "expected 1-64 characters"),
    (v2(header(x=[["d" * 65 + "/p", 1, 1, None, None]])), "device 'ddd"),
    (v2(header(x=[["d/p\n", 1, 1, None, None]])), "none a control character"),
    (v2(header(x=[["d/p", 1, 1, None, "x" * 257]])), "$.x[0][4]: string of 257 characters"),
    (v2(header(g="gw 1")), "gateway"),
    (v2(header(e=2**63)), "header e 9223372036854775808 is not an int in 0..2^63-1"),
    (v2(header(s=-1)), "header s -1"),
    (v2(header(s=True)), "header s True"),
    (v2(b'{"g":"gw","e":' + b"9" * 30 + b',"s":2,"x":[]}'), "integer literal of 30"),
    (v2(b'{"g":"gw","e":1,"s":2.5,"x":[]}'), "header s 2.5"),
    (v2(b'{"g":"gw","e":1,"s":2,"x":' + b"[" * 10_000 + b"]" * 10_000 + b"}"), "nesting"),
    (v2(b'{"g":"gw","e":1,"s":2,"x":[],"x":[]}'), "repeats a key"),
    (v2(b'{"g":"gw","e":NaN,"s":2,"x":[]}'), "NaN is not JSON"),
    (v2(header(x=[["d/p", 2**63, 1, None, None]])), "timestamp 9223372036854775808"),
    (v2(header(x=[["d/p", 1, True, None, None]])), "quality code True"),
    (v2(header(x=[["d/p", 1, 1, 256, None]])), "exception code 256"),
    (v2(header(x=[["d/p", 1, 0, None, 2**64]])), "outside"),
    (v2(header(), codecs.encode_batch({"d/\x1b[2J": ([1], [1])})), "control character"),
    (v2(header(), codecs.encode_batch({"d/" + "x" * 65: ([1], [1])})), "1-64 characters"),
    (v2(header(), codecs.encode_batch({"d/p": ([-5], [1])})), "timestamp -5 is negative"),
    (v2(header(), codecs.encode_batch({"nodevice": ([1], [1])})), "is not 'device/point'"),
    (b"\x02\x80\x80\x80\x80\x01", "header length is not a varint"),
])
def test_each_hostile_header_or_name_is_a_codec_error(blob: bytes, words: str) -> None:
    refused(blob, words)


def test_a_huge_header_is_refused_before_it_is_parsed() -> None:
    big = v2(header(x=[["d/p", i, 1, None, None] for i in range(200_000)]))
    start = time.perf_counter()
    refused(big, "limit")
    refused(big, "header of", BatchLimits(max_header_bytes=1 << 20))
    assert time.perf_counter() - start < 1.0
    # Arrays are counted before parsing: a header cannot bring more extras than readings.
    refused(v2(header(x=[["d/p", 1, 1, None, None]] * 11)), "13 arrays and objects",
            BatchLimits(max_readings=10))


def test_v1_bodies_are_held_to_the_same_limits_and_names() -> None:
    def v1(doc: Any) -> bytes:
        return b"\x01" + bytes(msgpack.packb(doc))

    body = {"g": "gw", "e": 1, "s": 2, "r": [["m", [["p", [1] * 500, [0] * 500]]]]}
    assert len(decode_batch(v1(body)).readings) == 500
    refused(v1(body), "500 or more readings exceed the limit of 499",
            BatchLimits(max_readings=499))
    refused(v1({**body, "g": "gw/1"}), "g (gateway): name 'gw/1'")
    refused(v1({**body, "r": [["m", [["p\x00", [1], [0]]]]]}), "control character")
    refused(v1({**body, "r": [["m", [["p", [1], ["x" * 2000]]]]]}), "exceeds max_str_len")
    refused(v1({**body, "r": [["m", [["p", [1], ["x" * 257]]]]]}), "text of 257 characters")
    refused(v1({**body, "r": [["m", [["p", [1], [b"raw"]]]]]}), "exceeds max_bin_len")
    refused(b"\x01" + b"\x91" * 100_000 + b"\x00", "not valid msgpack")


# ------------------------------------------------------------------------- property tests


@seed(SEED)
@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([b"", b"\x01", b"\x02", b"\x02\x10"]))
def test_random_bytes_only_raise_codec_error(data: bytes, prefix: bytes) -> None:
    decoded_or_refused(prefix + data)


def _mutate(data: st.DataObject, blob: bytes, start: int = 0) -> bytes:
    b = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(start, len(b) - 1)) if len(b) > start else start
        op = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        if op == "flip" and i < len(b):
            b[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and i < len(b):
            b[i] = data.draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0xED, 0x22, 0x5B]))
        elif op == "insert":
            b[i:i] = data.draw(st.sampled_from([b"\x80", b"\xff\xff\xff\x0f", b"\\ud800", b"["]))
        elif op == "delete" and i < len(b):
            del b[i]
        elif op == "cut":
            del b[i:]
    return bytes(b)


@seed(SEED)
@settings(max_examples=800, deadline=None)
@given(st.data(), st.sampled_from([GENUINE, GENUINE_V1]))
def test_mutated_genuine_batches_only_raise_codec_error(data: st.DataObject, blob: bytes) -> None:
    decoded_or_refused(_mutate(data, blob))


_SIZE, _USED = batch_v2._read_varint(GENUINE[1:])
GENUINE_HEADER = json.loads(GENUINE[1 + _USED:1 + _USED + _SIZE])
GENUINE_BODY = GENUINE[1 + _USED + _SIZE:]


def test_the_genuine_pieces_are_what_the_tests_think() -> None:
    assert GENUINE_HEADER["g"] == "gw-0001" and len(GENUINE_HEADER["x"]) == 3
    assert decode_batch(v2(GENUINE_HEADER, GENUINE_BODY)).readings == decode_batch(
        GENUINE).readings


@seed(SEED)
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations(GENUINE_HEADER))
def test_hostile_json_at_any_header_field_only_raises_codec_error(doc: Any) -> None:
    decoded_or_refused(v2(render(doc), GENUINE_BODY))


@seed(SEED)
@settings(max_examples=200, deadline=None)
@given(st.lists(hostile_values(), max_size=3))
def test_a_whole_hostile_header_only_raises_codec_error(values: list[Any]) -> None:
    decoded_or_refused(v2(render(values[0] if values else {})))
    decoded_or_refused(v2(render({"g": "gw", "e": 1, "s": 2, "x": values})))


@pytest.mark.parametrize("piece", RAW_PIECES, ids=lambda p: p[:12].decode("latin-1"))
def test_raw_hostile_json_in_each_header_field_is_a_codec_error(piece: bytes) -> None:
    for field in ("g", "e", "s", "x"):
        refused(v2(render({**GENUINE_HEADER, field: Raw(piece)}), GENUINE_BODY))


@seed(SEED)
@settings(max_examples=800, deadline=None)
@given(st.data())
def test_the_pre_scan_agrees_with_the_codec_on_mutated_bodies(data: st.DataObject) -> None:
    # The scan that counts readings before decoding must never refuse, as malformed, a body
    # the codec decodes, nor count otherwise than it decodes.
    body = _mutate(data, GENUINE_BODY, start=3)
    try:
        declared = batch_v2._scan_codec(body, 0, 1 << 30, BatchLimits(
            max_readings=10**9, max_readings_per_byte=64, max_series=10**6))
    except CodecError as exc:
        scan_error: CodecError | None = exc
    else:
        scan_error = None
    try:
        series = codecs.decode_batch(body)
    except CodecError:
        return  # the codec refuses it too (for its own reason, or the scan's)
    if scan_error is not None:
        assert str(scan_error).startswith("data batch v2"), (scan_error, body.hex())  # names
        return
    assert declared == sum(len(ts) for ts, _ in series.values()), body.hex()


def test_a_genuine_batch_decodes_after_all_the_hostile_ones() -> None:
    test_genuine_batches_decode()

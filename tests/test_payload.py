"""Data batch framing: exact round trips, size, version dispatch, and CodecError on bad input."""

from __future__ import annotations

import contextlib
import math
import random
import subprocess
import sys

import msgpack
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from edge_agent.codecs import batch as payload
from edge_agent.codecs.batch import DataBatch, decode_batch
from edge_agent.codecs.batch_model import grouped
from edge_agent.protocol.errors import CodecError
from edge_agent.protocol.readings import Quality, Reading
from tests.support.v1batch import encode_batch_v1

SEED = 20261128
print(f"test_payload seed {SEED}")

# Point names: any text but control characters; gateway names: the config's id rule
# (edge_agent.codecs.batch_model, the decoders' name rules).
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1,
                max_size=8)
gateways = st.text("abcXYZ019-_", min_size=1, max_size=64)
values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False), st.text(max_size=12))


@st.composite
def readings(draw: st.DrawFn) -> Reading:
    quality = draw(st.sampled_from(list(Quality)))
    exc = draw(st.one_of(st.none(), st.integers(0, 255)))
    return Reading(draw(st.sampled_from(["m1", "m2", "lamp-7"])), draw(names),
                   draw(st.integers(0, 2**63 - 1)), draw(values), quality, exc)


@seed(SEED)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(readings(), max_size=40), gateways, st.integers(0, 2**63 - 1),
       st.integers(0, 2**63 - 1))
def test_round_trip_is_exact(rs: list[Reading], gw: str, epoch: int, seq: int) -> None:
    batch = decode_batch(encode_batch_v1(gw, epoch, seq, rs))
    assert (batch.gateway, batch.epoch, batch.seq, batch.version) == (gw, epoch, seq, 1)
    assert batch.readings == grouped(rs)
    # == treats 1 == 1.0 == True: check the types survive too
    assert [type(r.value) for r in batch.readings] == [type(r.value) for r in grouped(rs)]


def test_grouped_input_comes_back_identical_and_nan_survives() -> None:
    rs = [Reading("m1", "v", 1000, 230.1), Reading("m1", "v", 2000, math.nan),
          Reading("m1", "f", 1000, True), Reading("m2", "s", 500, "ok")]
    out = decode_batch(encode_batch_v1("gw", 1, 2, rs)).readings
    assert isinstance(out[1].value, float) and math.isnan(out[1].value)
    assert [out[i] for i in (0, 2, 3)] == [rs[i] for i in (0, 2, 3)]


def test_bad_readings_keep_quality_and_exception_code() -> None:
    rs = [Reading("m1", "v", 1000, None, Quality.DEVICE_EXCEPTION, 2),
          Reading("m1", "v", 2000, None, Quality.COMM_ERROR),
          Reading("m1", "v", 3000, 1.5)]
    out = decode_batch(encode_batch_v1("gw", 1, 0, rs)).readings
    assert out == rs


def test_batch_is_compact() -> None:
    """A realistic batch: 10 meters x 20 float points x 5 s at 1 s: under 14.5 bytes a reading."""
    rng = random.Random(SEED)
    t0 = 1_764_000_000_000
    rs = [Reading(f"meter{m}", f"point_{p:02d}", t0 + k * 1000, round(rng.uniform(0, 500), 1))
          for m in range(10) for p in range(20) for k in range(5)]
    blob = encode_batch_v1("gw-0001", t0, 7, rs)
    per_reading = len(blob) / len(rs)
    print(f"{len(rs)} readings -> {len(blob)} bytes ({per_reading:.2f} B/reading)")
    # float64 is 9 bytes, a 1000 ms delta 3; names are paid once per series
    assert per_reading < 14.5
    assert decode_batch(blob).readings == rs


def test_encode_rejects_what_cannot_round_trip() -> None:
    with pytest.raises(CodecError, match="ts_ms"):
        encode_batch_v1("gw", 0, 0, [Reading("m", "p", -1, 1)])
    with pytest.raises(CodecError, match="value"):
        encode_batch_v1("gw", 0, 0, [Reading("m", "p", 1, 2**64)])
    with pytest.raises(CodecError, match="type bytes"):
        encode_batch_v1("gw", 0, 0, [Reading("m", "p", 1, b"x")])  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="seq"):
        encode_batch_v1("gw", 0, -1, [])
    with pytest.raises(CodecError, match="exception_code"):
        encode_batch_v1("gw", 0, 0, [Reading("m", "p", 1, None, Quality.DEVICE_EXCEPTION, 300)])


@pytest.mark.parametrize(("blob", "message"), [
    (b"", "empty"),
    (b"\x09abc", "unknown version byte 9"),
    (b"\x01\xc1", "not valid msgpack"),
    (b"\x01" + msgpack.packb([1, 2]), "expected a map"),
    (b"\x01" + msgpack.packb({"g": "gw", "e": 1, "s": 1}), "expected keys"),
    (b"\x01" + msgpack.packb({"g": "gw", "e": True, "s": 1, "r": []}), "e \\(epoch\\)"),
    (b"\x01" + msgpack.packb({"g": "gw", "e": 1, "s": 1,
                              "r": [["m", [["p", [1, 2], [1.0]]]]]}), "1 values for 2"),
    (b"\x01" + msgpack.packb({"g": "gw", "e": 1, "s": 1,
                              "r": [["m", [["p", [1], [1.0], [0, 9, None]]]]]}), "quality"),
    (b"\x01" + msgpack.packb({"g": "gw", "e": 1, "s": 1,
                              "r": [["m", [["p", [1], [1.0], [1, 1, None]]]]]}), "index"),
    (b"\x01" + msgpack.packb({"g": "gw", "e": 1, "s": 1,
                              "r": [["m", [["p", [1], [[1]]]]]]}), "value of type list"),
])
def test_decode_errors_say_what_and_where(blob: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_batch(blob)


@seed(SEED)
@settings(max_examples=2000)
@given(st.binary(max_size=200))
def test_random_bytes_only_ever_raise_codec_error(blob: bytes) -> None:
    with contextlib.suppress(CodecError):
        assert isinstance(decode_batch(blob), DataBatch)


@seed(SEED)
@settings(max_examples=1000)
@given(st.lists(readings(), min_size=1, max_size=6), st.data())
def test_mutated_batches_only_ever_raise_codec_error(
        rs: list[Reading], data: st.DataObject) -> None:
    blob = bytearray(encode_batch_v1("gw", 1, 2, rs))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(1, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(blob)))
    with contextlib.suppress(CodecError):
        decode_batch(bytes(blob[:cut]))


def test_a_decoders_bugs_become_codec_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []

    def v7(body: bytes, limits: payload.BatchLimits) -> DataBatch:
        seen.append(body)
        if body == b"boom":
            raise KeyError("x")
        return DataBatch("gw", 1, 2, [], 7)

    monkeypatch.setitem(payload.DECODERS, 7, v7)
    assert decode_batch(b"\x07abc").version == 7
    assert seen == [b"abc"]
    with pytest.raises(CodecError, match="v7: decoder failed: KeyError"):
        decode_batch(b"\x07boom")


def test_every_published_version_is_decoded() -> None:
    assert sorted(payload.DECODERS) == [1, 2]


def test_decode_needs_only_msgpack() -> None:
    code = ("import sys; from edge_agent.codecs.batch import decode_batch; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('aiomqtt', 'paho', 'pymodbus')];"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr

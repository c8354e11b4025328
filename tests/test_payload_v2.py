"""Data batch version 2: the codec inside a JSON envelope, exact round trips, hostile input."""

from __future__ import annotations

import contextlib
import math
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.codecs.batch import decode_batch
from edge_agent.codecs.batch_v2 import encode_batch_v2
from edge_agent.protocol.errors import CodecError
from edge_agent.protocol.readings import Quality, Reading

SEED = 20261128


values = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=True),
    st.text(max_size=8), st.none())


@st.composite
def readings(draw: st.DrawFn) -> list[Reading]:
    out = []
    for _ in range(draw(st.integers(0, 30))):
        device = draw(st.sampled_from(["meter-1", "lamp_2"]))
        point = draw(st.sampled_from(["v", "on", "kwh", "name"]))
        ts = draw(st.integers(0, 2**41))
        q = draw(st.sampled_from(list(Quality)))
        if q is Quality.GOOD:
            out.append(Reading(device, point, ts, draw(values)))
        else:
            code = draw(st.none() | st.integers(0, 255))
            out.append(Reading(device, point, ts, None, q, code))
    return out


@settings(max_examples=300, deadline=None)
@given(readings(), st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1))
def test_round_trip_keeps_every_reading(rs: list[Reading], epoch: int, seq: int) -> None:
    rs = [r for r in rs if r.value is not None or r.quality is not Quality.GOOD]
    batch = decode_batch(encode_batch_v2("gw-1", epoch, seq, rs))
    assert (batch.gateway, batch.epoch, batch.seq, batch.version) == ("gw-1", epoch, seq, 2)
    want = sorted(map(_key_loose, rs), key=repr)
    got = sorted(map(_key_loose, batch.readings), key=repr)
    assert got == want


def _key_loose(r: Reading) -> tuple[object, ...]:
    """Ints sent in a float series come back as equal floats; compare values by equality."""
    v = r.value
    if isinstance(v, float) and math.isnan(v):
        v = "nan"
    elif isinstance(v, float) and v.is_integer() and abs(v) <= 2**53:
        v = int(v)
    return (r.device, r.point, r.ts_ms, repr(v) if isinstance(v, str) else v, r.quality,
            r.exception_code)


def test_regular_float32_meter_batch_is_small() -> None:
    import struct
    rs = []
    for i in range(100):
        v = struct.unpack(">f", struct.pack(">f", 230.0 + (i % 7) * 0.1))[0]
        rs.append(Reading("meter-1", "voltage_l1", 1_700_000_000_000 + i * 5000, v))
    blob = encode_batch_v2("gw-1", 1, 2, rs)
    assert len(blob) < 100 * 2, len(blob)  # under 2 bytes per reading, envelope included
    assert [r.value for r in decode_batch(blob).readings] == [r.value for r in rs]


def test_every_truncated_prefix_and_random_bytes_raise_only_codec_error() -> None:
    rng = random.Random(SEED)
    print("seed", SEED)
    rs = [Reading("m", "v", 1000 * i, i * 0.5) for i in range(20)]
    rs.append(Reading("m", "x", 5, None, Quality.DEVICE_EXCEPTION, 2))
    blob = encode_batch_v2("gw", 1, 2, rs)
    for n in range(len(blob)):
        with pytest.raises(CodecError):
            decode_batch(blob[:n])
    for _ in range(3000):
        b = bytearray(blob)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        with contextlib.suppress(CodecError):
            decode_batch(bytes(b))


def test_a_cloud_consumer_decodes_without_msgpack_or_mqtt() -> None:
    code = (
        "import sys\n"
        "for name in ('msgpack', 'aiomqtt', 'paho', 'pymodbus', 'serial'):\n"
        "    sys.modules[name] = None\n"
        "from edge_agent.protocol.readings import Reading\n"
        "from edge_agent.codecs.batch_v2 import encode_batch_v2\n"
        "from edge_agent.codecs.batch import decode_batch\n"
        "b = decode_batch(encode_batch_v2('gw', 1, 2, [Reading('d', 'p', 5, 1.5)]))\n"
        "assert b.readings[0].value == 1.5, b\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr

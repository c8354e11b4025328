"""Property tests of the reading codec: exact round trips, identical bytes from both paths.

Every property runs against the pure-Python reference and, when built, the Cython fast
path, and compares the two directly. Under CI=true the examples are derandomized.
"""

from __future__ import annotations

import math
import os
import random
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent import codecs
from edge_agent.codecs import reference
from edge_agent.protocol.errors import CodecError

I64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
CI = os.environ.get("CI") == "true"
PROPS = settings(max_examples=300, deadline=None, derandomize=CI, print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

IMPLS: list[Any] = [reference]
if codecs.fast is not None:
    IMPLS.append(codecs.fast)
IMPL_IDS = [m.__name__.rsplit(".", 1)[-1] for m in IMPLS]


def bits(v: float) -> int:
    """The binary64 pattern of ``v``."""
    return int(struct.unpack("<Q", struct.pack("<d", v))[0])


def from_bits(b: int) -> float:
    """The float whose binary64 pattern is ``b``."""
    return float(struct.unpack("<d", struct.pack("<Q", b))[0])


def canon(batch: Any) -> dict[str, tuple[list[int], list[tuple[str, int]]]]:
    """A comparable form of a batch: each value tagged with its type, floats by bit pattern."""
    out = {}
    for name, (ts, vals) in batch.items():
        out[name] = (list(ts), [(type(v).__name__, bits(v) if isinstance(v, float) else int(v))
                               for v in vals])
    return out


# --- strategies ------------------------------------------------------------

def grid_timestamps(n: int) -> st.SearchStrategy[list[int]]:
    """A poll grid with occasional jitter, gaps and a backwards step."""
    return st.tuples(st.integers(0, 1 << 42), st.sampled_from([100, 1000, 60_000]),
                     st.lists(st.sampled_from([0, 0, 0, 0, 1, -1, 7, 5000, -3000]),
                              min_size=n, max_size=n)).map(
        lambda a: [a[0] + i * a[1] + j for i, j in enumerate(a[2])])


ANY_FLOAT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
    st.integers(0, (1 << 64) - 1).map(from_bits),             # any pattern: NaN payloads too
    st.integers(-10**7, 10**7).map(lambda k: k / 100),        # two-decimal readings
    st.floats(width=32, allow_nan=False),                     # float32 registers
    st.integers(-10**6, 10**6).map(lambda k: k * 0.1),        # raw register * scale
    st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, 2.2250738585072014e-308]),
)
SMOOTH_FLOATS = st.tuples(st.integers(-10**6, 10**6), st.integers(0, 3),
                          st.lists(st.integers(-20, 20), max_size=300)).map(
    lambda a: [(a[0] + sum(a[2][:i + 1])) / 10 ** a[1] for i in range(len(a[2]))])
INT_VALUES = st.one_of(st.lists(I64, max_size=200),
                       st.lists(st.integers(-50, 50), max_size=300),
                       st.lists(st.sampled_from([0, 1, 1, 1, -(1 << 63), (1 << 63) - 1]),
                                max_size=300))


@st.composite
def series(draw: st.DrawFn) -> tuple[list[int], list[Any]]:
    """One series of any type, length 0 to a few hundred, regular or arbitrary timestamps."""
    kind = draw(st.sampled_from(["bool", "int", "float", "smooth"]))
    if kind == "bool":
        vals: list[Any] = draw(st.one_of(st.lists(st.booleans(), max_size=300),
                                         st.lists(st.sampled_from([True, True, True, False]),
                                                  max_size=300)))
    elif kind == "int":
        vals = draw(INT_VALUES)
    elif kind == "float":
        vals = draw(st.lists(ANY_FLOAT, max_size=200))
    else:
        vals = draw(SMOOTH_FLOATS)
    n = len(vals)
    ts = draw(st.one_of(grid_timestamps(n), st.lists(I64, min_size=n, max_size=n)))
    return ts, vals


BATCHES = st.dictionaries(st.text(max_size=12), series(), max_size=4)


@st.composite
def shared_timestamp_batches(draw: st.DrawFn) -> dict[str, tuple[list[int], list[Any]]]:
    """Series polled together: most share one timestamp list, some have their own."""
    n = draw(st.integers(0, 140))
    shared = draw(st.one_of(grid_timestamps(n), st.lists(I64, min_size=n, max_size=n)))
    out: dict[str, tuple[list[int], list[Any]]] = {}
    for k in range(draw(st.integers(1, 5))):
        ts = shared if draw(st.integers(0, 3)) else draw(grid_timestamps(n))
        vals = draw(st.one_of(st.lists(ANY_FLOAT, min_size=n, max_size=n),
                              st.lists(st.integers(-50, 50), min_size=n, max_size=n)))
        out[f"s{k}"] = (list(ts), vals)
    return out


# --- properties -------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
@PROPS
@given(batch=BATCHES)
def test_round_trip_is_exact(impl: Any, batch: dict[str, Any]) -> None:
    blob = impl.encode_batch(batch)
    assert blob[0] == reference.VERSION
    assert canon(impl.decode_batch(blob)) == canon(batch)


@pytest.mark.skipif(codecs.fast is None,
                    reason="fast path not built (test_codec_impl fails under CI)")
@PROPS
@given(batch=BATCHES)
def test_both_implementations_write_identical_bytes(batch: dict[str, Any]) -> None:
    assert codecs.fast is not None
    blob = reference.encode_batch(batch)
    assert codecs.fast.encode_batch(batch) == blob
    assert canon(codecs.fast.decode_batch(blob)) == canon(reference.decode_batch(blob))


@pytest.mark.skipif(codecs.fast is None,
                    reason="fast path not built (test_codec_impl fails under CI)")
@PROPS
@given(batch=shared_timestamp_batches())
def test_shared_timestamps_give_identical_bytes_and_round_trip(batch: dict[str, Any]) -> None:
    assert codecs.fast is not None
    blob = reference.encode_batch(batch)
    assert codecs.fast.encode_batch(batch) == blob
    assert canon(codecs.fast.decode_batch(blob)) == canon(batch)
    assert canon(reference.decode_batch(blob)) == canon(batch)


def outcome(impl: Any, blob: bytes) -> Any:
    """The decoded batch in canonical form, or the string 'CodecError'."""
    try:
        return canon(impl.decode_batch(blob))
    except CodecError:
        return "CodecError"


@PROPS
@given(batch=BATCHES, data=st.data())
def test_mutated_batches_decode_alike_or_raise_codec_error(batch: dict[str, Any],
                                                          data: st.DataObject) -> None:
    blob = bytearray(reference.encode_batch(batch))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        i = data.draw(st.integers(0, len(blob) - 1))
        if op == "flip":
            blob[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set":
            blob[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            blob.insert(i, data.draw(st.integers(0, 255)))
        elif len(blob) > 1:
            del blob[i]
    results = {outcome(impl, bytes(blob)).__repr__() for impl in IMPLS}
    assert len(results) == 1


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
@PROPS
@given(blob=st.binary(max_size=64))
def test_random_bytes_return_or_raise_codec_error(impl: Any, blob: bytes) -> None:
    outcome(impl, bytes([1]) + b"EC" + blob)
    outcome(impl, blob)


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_every_truncated_prefix_raises(impl: Any) -> None:
    seed = 20240601
    print(f"seed {seed}")
    rng = random.Random(seed)
    ts = [1_700_000_000_000 + 1000 * i for i in range(300)]
    batch = {
        "temp": (ts, [round(20 + rng.gauss(0, 2), 1) for _ in ts]),
        "raw": (ts, [rng.random() for _ in ts]),
        "door": (ts, [rng.random() < 0.1 for _ in ts]),
        "count": (ts, [rng.randrange(-(1 << 63), 1 << 63) for _ in ts]),
        "empty": ([], []),
        "special": ([5, 3, 3], [math.nan, -0.0, math.inf]),
    }
    blob = impl.encode_batch(batch)
    assert canon(impl.decode_batch(blob)) == canon(batch)
    for end in range(len(blob)):
        with pytest.raises(CodecError):
            impl.decode_batch(blob[:end])
    with pytest.raises(CodecError):
        impl.decode_batch(blob + b"\x00")


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_huge_declared_counts_are_refused_before_allocating(impl: Any) -> None:
    # One series "a" declaring 2**40 points in a 10-byte blob: refused by the
    # points-per-remaining-byte bound, never allocated.
    blob = bytes([1]) + b"EC" + b"\x01\x01a" + b"\x80\x80\x80\x80\x80\x20" + b"\x01\x00"
    with pytest.raises(CodecError, match="point count"):
        impl.decode_batch(blob)
    # A run-length stream whose runs claim more values than declared.
    ok = reference.encode_batch({"s": ([1, 2, 3, 4], [7, 7, 7, 7])})
    assert outcome(impl, ok) != "CodecError"
    assert impl.decode_batch(ok)["s"][1] == [7, 7, 7, 7]


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
@pytest.mark.parametrize(("batch", "message"), [
    ({"a": ([1, 2], [1.0])}, "2 timestamps but 1 values"),
    ({"a": ([1], ["x"])}, "value 0 is str"),
    ({"a": ([1, 2], [1, 2.5])}, "value 1 is float"),
    ({"a": ([1, 2], [True, 1])}, "value 1 is int"),
    ({"a": ([1], [1 << 63])}, "outside the signed 64-bit range"),
    ({"a": ([1.5], [1])}, "timestamp 0 is float"),
    ({"a": ([-(1 << 63) - 1], [1])}, "timestamp 0"),
    ({"a": (5, [1])}, "must be sequences"),
    ({"a": [1]}, "pair"),
    ({7: ([1], [1])}, "expected str"),
    ({"\ud800": ([1], [1])}, "UTF-8"),
])
def test_encode_errors_say_what_and_where(impl: Any, batch: Any, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        impl.encode_batch(batch)


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_decode_rejects_wrong_version_magic_and_type(impl: Any) -> None:
    for version in (0, 3, 0x45):
        with pytest.raises(CodecError, match="version"):
            impl.decode_batch(bytes([version]) + b"EC\x00")
    with pytest.raises(CodecError, match="magic"):
        impl.decode_batch(b"\x01XY\x00")
    with pytest.raises(CodecError, match="bytes"):
        impl.decode_batch("not bytes")
    assert impl.decode_batch(b"\x01EC\x00") == {}
    assert impl.decode_batch(b"\x02EC\x00") == {}
    assert impl.decode_batch(bytearray(b"\x01EC\x00")) == {}


def f32_noise(seed: int, n: int = 100) -> list[float]:
    """Float32 register readings of a noisy quantity: binary32 values with ~7 digits."""
    rng = random.Random(seed)
    print(f"seed {seed}")
    return [struct.unpack("<f", struct.pack("<f", rng.gauss(230, 0.5)))[0] for _ in range(n)]


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_float32_noise_uses_binary32_patterns_and_old_batches_still_decode(impl: Any) -> None:
    from edge_agent.codecs.ints import encode_ints
    ts = list(range(100))
    batch = {"v": (ts, f32_noise(11)), "d": (ts, [0.5 * i for i in ts])}
    blob = impl.encode_batch(batch)
    assert blob[0] == 2
    # Header, series count, name "v", 100 points, type float, timestamps, float encoding.
    head = b"\x02EC\x02\x01v\x64\x02" + encode_ints(ts, allow_rle=False)
    assert blob.startswith(head)
    assert blob[len(head)] == 2  # binary32 patterns
    assert canon(impl.decode_batch(blob)) == canon(batch)
    # The same bytes labelled version 1 are refused at the binary32 stream, which version
    # 1 does not have; a version-1 batch without one decodes as before.
    with pytest.raises(CodecError, match="float encoding 2 in a version 1 batch"):
        impl.decode_batch(b"\x01" + blob[1:])
    plain = impl.encode_batch({"d": batch["d"]})
    assert canon(impl.decode_batch(b"\x01" + plain[1:])) == canon({"d": batch["d"]})


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
@pytest.mark.parametrize(("ords", "message"), [
    ([0x7FC00000], "NaN"),            # a quiet NaN pattern: never written, so refused
    ([-0x7F800001 - 1], "NaN"),       # negative NaN pattern 0xFF800001
    ([1 << 31], "signed 32-bit"),     # one past the largest pattern
    ([-(1 << 31) - 1], "signed 32-bit"),
])
def test_binary32_stream_rejects_nan_and_out_of_range_patterns(impl: Any, ords: list[int],
                                                              message: str) -> None:
    from edge_agent.codecs.ints import encode_ints
    body = b"\x01s\x01\x02" + encode_ints([7], allow_rle=False) + b"\x02" + encode_ints(ords)
    with pytest.raises(CodecError, match=message):
        impl.decode_batch(b"\x02EC\x01" + body)
    good = b"\x01s\x01\x02" + encode_ints([7], allow_rle=False) + b"\x02" + encode_ints([-1])
    assert canon(impl.decode_batch(b"\x02EC\x01" + good)) == canon({"s": ([7], [-0.0])})


def test_regular_grid_costs_almost_nothing() -> None:
    ts = [1_700_000_000_000 + 1000 * i for i in range(1000)]
    one = len(reference.encode_batch({"x": (ts, [5] * 1000)}))
    assert one < 50, one  # 1000 points: timestamps and a constant value in a few dozen bytes


def test_decimal_and_float32_values_scale_to_integers() -> None:
    rng = random.Random(7)
    print("seed 7")
    ts = list(range(100))
    dec = [round(230 + rng.gauss(0, 0.5), 1) for _ in ts]
    f32 = [struct.unpack("<f", struct.pack("<f", v))[0] for v in dec]
    scaled = [round(v * 10) * 0.1 for v in dec]
    assert scaled != dec  # 2301 * 0.1 is 230.10000000000002, not 230.1
    for vals in (dec, f32, scaled):
        blob = reference.encode_batch({"v": (ts, vals)})
        # ALP stream (encoding byte 0) well under 2 bytes per value, not 8.
        assert len(blob) < 150, len(blob)
        assert canon(reference.decode_batch(blob)) == canon({"v": (ts, vals)})

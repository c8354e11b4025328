"""Float streams (FORMAT.md section 5): decimal scaling (ALP-style) with exceptions, or XOR.

Sensor floats are mostly short decimals (a scaled register) or float32 register values
widened to float64. Both become small integers when multiplied by a power of ten, so the
ALP stream stores those integers as an integer stream and keeps the few values that do
not scale exactly (NaN, infinities, -0.0, true binary fractions) as raw 64-bit patterns.
Series of true binary floats fall back to a byte-aligned XOR scheme of the Gorilla/Chimp
class, and series of noisy float32 readings (seven digits of noise, which no power of ten
shortens) to their binary32 patterns as integers (version 2). The encoder keeps the
shortest; alpsearch.py chooses the ALP exponent.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from itertools import compress
from math import isfinite, isnan
from operator import not_

from edge_agent.codecs.alpsearch import INV10, MAX_EXP, POW10, choose
from edge_agent.codecs.ints import decode_ints, encode_ints
from edge_agent.codecs.wire import Reader, varint

ENC_ALP = 0
ENC_XOR = 1
ENC_F32 = 2
SIGN32 = 0x80000000
EXP_MASK = 0x7FF0000000000000
NEG_ZERO = 0x8000000000000000
F32_FLAG = 0x80
MUL_FLAG = 0x40
EXP_BITS = 0x3F


def to_bits(vals: Sequence[float]) -> list[int]:
    """IEEE 754 binary64 bit patterns of ``vals`` as unsigned integers."""
    n = len(vals)
    return list(struct.unpack(f"<{n}Q", struct.pack(f"<{n}d", *vals)))


def from_bits(bits: Sequence[int]) -> list[float]:
    """Floats from their binary64 bit patterns."""
    n = len(bits)
    return list(struct.unpack(f"<{n}d", struct.pack(f"<{n}Q", *bits)))


def _is_special(b: int) -> bool:
    """NaN, an infinity or -0.0: never scaled, always an exception."""
    return (b & EXP_MASK) == EXP_MASK or b == NEG_ZERO


def _f32_exact(vals: list[float]) -> bool:
    """Every value survives a round trip through binary32 bit for bit."""
    n = len(vals)
    try:
        narrowed = struct.pack(f"<{n}f", *vals)
    except OverflowError:
        return False
    return struct.pack(f"<{n}d", *struct.unpack(f"<{n}f", narrowed)) == struct.pack(
        f"<{n}d", *vals)


def _encode_alp(vals: list[float], bits: list[int]) -> tuple[bytes, int]:
    """ALP stream and its exception count."""
    n = len(vals)
    # Without NaN, infinities or -0.0 (the usual case) every value is plain.
    clean = all(map(isfinite, vals)) and NEG_ZERO not in bits
    special = [False] * n if clean else [_is_special(b) for b in bits]
    plain = vals if clean else list(compress(vals, map(not_, special)))
    f32 = bool(plain) and _f32_exact(plain)
    best = choose(plain, n, f32)
    e, mul = best.e, best.mul
    ks, ok = best.ks, best.ok
    if len(plain) < n:  # put the special values back in their places, as exceptions
        kit, okit = iter(ks), iter(ok)
        ks = [0 if sp else next(kit) for sp in special]
        ok = [False if sp else next(okit) for sp in special]
    exc = list(compress(range(n), map(not_, ok)))
    # Exceptions repeat the previous integer (leading ones the first good one) so they
    # do not break the runs and deltas of the integer stream.
    filled = ks
    if exc:
        prev = next(compress(ks, ok), 0)
        filled = []
        for k, good in zip(ks, ok, strict=True):
            if good:
                prev = k
            filled.append(prev)
    out = bytearray([ENC_ALP, e | (F32_FLAG if f32 else 0) | (MUL_FLAG if mul else 0)])
    out += encode_ints(filled)
    out += varint(len(exc))
    last = -1
    for i in exc:
        out += varint(i - last - 1)
        out += bits[i].to_bytes(8, "little")
        last = i
    return bytes(out), len(exc)


def _encode_xor(bits: list[int]) -> bytes:
    """XOR stream: per value a control byte (leading zero bytes << 4 | length), the middle bytes."""
    out = bytearray([ENC_XOR])
    prev = 0
    for b in bits:
        x = b ^ prev
        prev = b
        if not x:
            out.append(0)
            continue
        lz = (64 - x.bit_length()) >> 3
        tz = ((x & -x).bit_length() - 1) >> 3
        ln = 8 - lz - tz
        out.append((lz << 4) | ln)
        out += (x >> (8 * tz)).to_bytes(ln, "little")
    return bytes(out)


def _f32_ordered(vals: list[float]) -> list[int] | None:
    """Binary32 patterns of ``vals`` as order-preserving int32 (FORMAT.md 5.3), or None.

    None when some value is NaN or does not survive a round trip through binary32 bit
    for bit. A pattern p with the sign bit clear is sent as p, one with it set as
    0x7FFFFFFF - p (so -0.0 is -1): neighbouring floats get neighbouring integers, and
    series crossing zero keep small deltas.
    """
    n = len(vals)
    if any(map(isnan, vals)):
        return None
    try:
        narrowed = struct.pack(f"<{n}f", *vals)
    except OverflowError:
        return None
    if struct.pack(f"<{n}d", *struct.unpack(f"<{n}f", narrowed)) != struct.pack(f"<{n}d", *vals):
        return None
    return [p if p < SIGN32 else 0x7FFFFFFF - p for p in struct.unpack(f"<{n}I", narrowed)]


def encode_floats(vals: Sequence[float]) -> bytes:
    """The shortest float stream, ties to the earlier (FORMAT.md section 6).

    Candidates: ALP; XOR when ALP needs exceptions; binary32 patterns when every value
    is a binary32 value other than NaN.
    """
    vals = list(map(float, vals))
    bits = to_bits(vals)
    best, exc = _encode_alp(vals, bits)
    if exc:
        xor = _encode_xor(bits)
        if len(xor) < len(best):
            best = xor
    ords = _f32_ordered(vals)
    if ords is not None:
        f32 = bytes([ENC_F32]) + encode_ints(ords)
        if len(f32) < len(best):
            best = f32
    return best


def _decode_alp(rd: Reader, n: int) -> list[float]:
    spec = rd.byte("ALP exponent")
    e, f32, mul = spec & EXP_BITS, bool(spec & F32_FLAG), bool(spec & MUL_FLAG)
    if e > MAX_EXP:
        raise rd.fail(f"ALP exponent {e} exceeds {MAX_EXP}")
    ks = decode_ints(rd, n)
    if mul:
        q = INV10[e]
        vals = [k * q for k in ks]
    else:
        p = POW10[e]
        vals = [k / p for k in ks]
    if f32:
        try:
            vals = list(struct.unpack(f"<{n}f", struct.pack(f"<{n}f", *vals)))
        except OverflowError:
            raise rd.fail("ALP value overflows binary32") from None
    nexc = rd.count(n, "ALP exception count")
    last = -1
    for _ in range(nexc):
        i = last + 1 + rd.varint("ALP exception gap")
        if i >= n:
            raise rd.fail(f"ALP exception position {i} beyond {n} values")
        vals[i] = struct.unpack("<d", rd.take(8, "ALP exception value"))[0]
        last = i
    return vals


def _decode_xor(rd: Reader, n: int) -> list[float]:
    bits: list[int] = []
    prev = 0
    data = rd.data
    for _ in range(n):
        ctrl = rd.byte("XOR control")
        lz, ln = ctrl >> 4, ctrl & 0x0F
        if ln == 0:
            if lz:
                raise rd.fail(f"XOR control {ctrl:#04x} has no length")
            bits.append(prev)
            continue
        if lz + ln > 8:
            raise rd.fail(f"XOR control {ctrl:#04x} spans more than 8 bytes")
        pos = rd.pos
        rd.take(ln, "XOR bytes")
        x = int.from_bytes(data[pos:pos + ln], "little") << (8 * (8 - lz - ln))
        prev ^= x
        bits.append(prev)
    return from_bits(bits)


def _decode_f32(rd: Reader, n: int) -> list[float]:
    ords = decode_ints(rd, n)
    if ords and (min(ords) < -SIGN32 or max(ords) >= SIGN32):
        raise rd.fail("binary32 pattern outside the signed 32-bit range")
    pats = [s if s >= 0 else 0x7FFFFFFF - s for s in ords]
    vals = list(struct.unpack(f"<{n}f", struct.pack(f"<{n}I", *pats)))
    if any(map(isnan, vals)):
        raise rd.fail("binary32 stream holds a NaN pattern")
    return vals


def decode_floats(rd: Reader, n: int, version: int = 2) -> list[float]:
    """Read a float stream of ``n`` values (binary32 patterns only from ``version`` 2 on)."""
    enc = rd.byte("float encoding")
    if enc == ENC_ALP:
        return _decode_alp(rd, n)
    if enc == ENC_XOR:
        return _decode_xor(rd, n)
    if enc == ENC_F32 and version >= 2:
        return _decode_f32(rd, n)
    raise rd.fail(f"unknown float encoding {enc} in a version {version} batch")

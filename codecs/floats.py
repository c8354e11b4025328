"""Float streams (FORMAT.md section 5): decimal scaling (ALP-style) with exceptions, or XOR.

Sensor floats are mostly short decimals (a scaled register) or float32 register values
widened to float64. Both become small integers when multiplied by a power of ten, so the
ALP stream stores those integers as an integer stream and keeps the few values that do
not scale exactly (NaN, infinities, -0.0, true binary fractions) as raw 64-bit patterns.
Series of true binary floats fall back to a byte-aligned XOR scheme of the Gorilla/Chimp
class. The encoder keeps whichever is shorter.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from edge_agent.codecs.ints import decode_ints, encode_ints
from edge_agent.codecs.wire import Reader, varint

ENC_ALP = 0
ENC_XOR = 1
MAX_EXP = 15
POW10 = [10.0 ** e for e in range(MAX_EXP + 1)]
# 1.0 / 10**e: the double nearest 10**-e, which is what a register's scale factor 0.1 or
# 0.01 parses to, so raw * scale values (11.100000000000001 = 111 * 0.1) scale exactly too.
INV10 = [1.0 / p for p in POW10]
TWO53 = float(1 << 53)
EXP_MASK = 0x7FF0000000000000
NEG_ZERO = 0x8000000000000000
F32_FLAG = 0x80
MUL_FLAG = 0x40
EXP_BITS = 0x3F
# Encoder's estimate of one exception's cost and of one decimal digit's cost, in bits
# (integers so that every implementation makes the same choice).
EXC_COST_BITS = 80
DIGIT_COST_NUM, DIGIT_COST_DEN = 10, 3


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


def _scaled(vals: list[float], e: int, f32: bool, mul: bool) -> list[int | None]:
    """Per value: the integer k that gives the value back exactly, else None.

    The value is k / 10**e, or k * (1 / 10**e) with ``mul``; binary32-rounded if ``f32``.
    """
    p = POW10[e]
    ks: list[int | None] = [round(v * p) if -TWO53 <= v * p <= TWO53 else None for v in vals]
    if mul:
        q = INV10[e]
        recon = [0.0 if k is None else k * q for k in ks]
    else:
        recon = [0.0 if k is None else k / p for k in ks]
    if f32:
        n = len(recon)
        recon = list(struct.unpack(f"<{n}f", struct.pack(f"<{n}f", *recon)))
    return [k if k is not None and r == v else None
            for k, r, v in zip(ks, recon, vals, strict=True)]


def _choose_exponent(plain: list[float], n: int, f32: bool, mul: bool) -> tuple[int, int]:
    """The exponent with the lowest estimated cost; ties go to the smaller exponent.

    Cost(e) = 80 bits per value not exact at e + n * e * 10/3 bits for the larger
    integers. The search stops once the digit term alone reaches the best cost.
    """
    best_e, best_cost = 0, -1
    for e in range(MAX_EXP + 1):
        digits = n * e * DIGIT_COST_NUM // DIGIT_COST_DEN
        if best_cost >= 0 and digits >= best_cost:
            break
        exact = sum(1 for k in _scaled(plain, e, f32, mul) if k is not None)
        cost = (n - exact) * EXC_COST_BITS + digits
        if best_cost < 0 or cost < best_cost:
            best_e, best_cost = e, cost
    return best_e, best_cost


def _encode_alp(vals: list[float], bits: list[int]) -> tuple[bytes, int]:
    """ALP stream and its exception count."""
    n = len(vals)
    plain = [v for v, b in zip(vals, bits, strict=True) if not _is_special(b)]
    f32 = bool(plain) and _f32_exact(plain)
    e, cost = _choose_exponent(plain, n, f32, False)
    mul = False
    if cost > n * e * DIGIT_COST_NUM // DIGIT_COST_DEN:
        # Some value is not k / 10**e: try the multiplied form (raw register * scale).
        e2, cost2 = _choose_exponent(plain, n, f32, True)
        if cost2 < cost:
            e, mul = e2, True
    special = [_is_special(b) for b in bits]
    ks = _scaled([0.0 if s else v for v, s in zip(vals, special, strict=True)], e, f32, mul)
    exc = [i for i, (k, s) in enumerate(zip(ks, special, strict=True)) if s or k is None]
    # Exceptions repeat the previous integer (leading ones the first good one) so they
    # do not break the runs and deltas of the integer stream.
    prev = next((k for k, s in zip(ks, special, strict=True) if k is not None and not s), 0)
    filled: list[int] = []
    for k, s in zip(ks, special, strict=True):
        if k is not None and not s:
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


def encode_floats(vals: Sequence[float]) -> bytes:
    """The float stream: ALP if it needs no exception, else the shorter of ALP and XOR."""
    vals = [float(v) for v in vals]
    bits = to_bits(vals)
    alp, exc = _encode_alp(vals, bits)
    if not exc:
        return alp
    xor = _encode_xor(bits)
    return xor if len(xor) < len(alp) else alp


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


def decode_floats(rd: Reader, n: int) -> list[float]:
    """Read a float stream of ``n`` values."""
    enc = rd.byte("float encoding")
    if enc == ENC_ALP:
        return _decode_alp(rd, n)
    if enc == ENC_XOR:
        return _decode_xor(rd, n)
    raise rd.fail(f"unknown float encoding {enc}")

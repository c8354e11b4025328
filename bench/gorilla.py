"""Reference Gorilla encoder (Pelkonen et al., VLDB 2015, section 4.1), for the benchmark only.

Timestamps: the first in 64 bits, then delta-of-delta in the paper's buckets ('0';
'10'+7 bits for [-63, 64]; '110'+9 bits for [-255, 256]; '1110'+12 bits for [-2047, 2048];
'1111'+32 bits otherwise; the first delta goes through the same buckets, since millisecond
deltas overflow the paper's 14-bit first delta). Values: the first in 64 bits, then the XOR
with the previous value: '0' if equal, '10' + the meaningful bits if they fit inside the
previous leading/trailing-zero window, else '11' + 5 bits of leading zeros + 6 bits of
meaningful length + the meaningful bits. Integers and booleans are sent as float64, as
Gorilla stores every value. The decoder exists to prove the encoder is faithful.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

BUCKETS = ((0b10, 2, 7), (0b110, 3, 9), (0b1110, 4, 12))


class BitWriter:
    """Appends bit fields most significant bit first."""

    def __init__(self) -> None:
        self.acc = 0
        self.nbits = 0

    def write(self, value: int, width: int) -> None:
        """Append the low ``width`` bits of ``value``."""
        self.acc = (self.acc << width) | (value & ((1 << width) - 1))
        self.nbits += width

    def to_bytes(self) -> bytes:
        """The bits, zero-padded to whole bytes."""
        pad = -self.nbits % 8
        return (self.acc << pad).to_bytes((self.nbits + pad) // 8, "big")


class BitReader:
    """Reads bit fields most significant bit first."""

    def __init__(self, data: bytes) -> None:
        self.value = int.from_bytes(data, "big")
        self.left = len(data) * 8

    def read(self, width: int) -> int:
        """The next ``width`` bits as an unsigned integer."""
        self.left -= width
        return (self.value >> self.left) & ((1 << width) - 1)


def _write_dod(w: BitWriter, dod: int) -> None:
    if dod == 0:
        w.write(0, 1)
        return
    for code, clen, bits in BUCKETS:
        lo, hi = -(1 << (bits - 1)) + 1, 1 << (bits - 1)
        if lo <= dod <= hi:
            w.write(code, clen)
            w.write(dod, bits)
            return
    w.write(0b1111, 4)
    w.write(dod, 32)


def _read_dod(r: BitReader) -> int:
    for code_len, bits in ((1, 0), (2, 7), (3, 9), (4, 12)):
        if r.read(1) == 0:
            if code_len == 1:
                return 0
            v = r.read(bits)
            return v - (1 << bits) if v > (1 << (bits - 1)) else v
    v = r.read(32)
    return v - (1 << 32) if v >= (1 << 31) else v


def encode(ts: Sequence[int], values: Sequence[float]) -> bytes:
    """Gorilla-encode one series (timestamps in ms, values as float64)."""
    w = BitWriter()
    if not ts:
        return b""
    bits = struct.unpack(f">{len(values)}Q", struct.pack(f">{len(values)}d", *map(float, values)))
    w.write(ts[0], 64)
    w.write(bits[0], 64)
    prev_t, prev_d = ts[0], 0
    prev_v, lead, trail = bits[0], -1, -1
    for t, b in zip(ts[1:], bits[1:], strict=True):
        d = t - prev_t
        _write_dod(w, d - prev_d)
        prev_t, prev_d = t, d
        x = b ^ prev_v
        prev_v = b
        if x == 0:
            w.write(0, 1)
            continue
        lz = min(64 - x.bit_length(), 31)
        tz = (x & -x).bit_length() - 1
        if lead >= 0 and lz >= lead and tz >= trail:
            w.write(0b10, 2)
            w.write(x >> trail, 64 - lead - trail)
        else:
            lead, trail = lz, tz
            w.write(0b11, 2)
            w.write(lz, 5)
            w.write(64 - lz - tz, 6)  # 64 is written as 0, as in the paper's implementation
            w.write(x >> tz, 64 - lz - tz)
    return w.to_bytes()


def decode(data: bytes, n: int) -> tuple[list[int], list[float]]:
    """Decode ``n`` points written by ``encode``."""
    if n == 0:
        return [], []
    r = BitReader(data)
    ts = [r.read(64)]
    vb = [r.read(64)]
    if ts[0] >= 1 << 63:
        ts[0] -= 1 << 64
    d = 0
    lead = trail = 0
    for _ in range(n - 1):
        d += _read_dod(r)
        ts.append(ts[-1] + d)
        if r.read(1) == 0:
            vb.append(vb[-1])
            continue
        if r.read(1) == 1:
            lead = r.read(5)
            length = r.read(6) or 64
            trail = 64 - lead - length
        vb.append(vb[-1] ^ (r.read(64 - lead - trail) << trail))
    return ts, list(struct.unpack(f">{n}d", struct.pack(f">{n}Q", *vb)))


if __name__ == "__main__":
    import math
    import random

    rng = random.Random(5)
    tss = [1_700_000_000_000 + 1000 * i + rng.choice([0, 0, 9, -4]) for i in range(500)]
    vals = [round(rng.gauss(50, 2), 2) for _ in tss] + [math.inf, -0.0]
    tss += [tss[-1] + 10**9, tss[-1] - 5]
    blob = encode(tss, vals)
    got = decode(blob, len(tss))
    assert got[0] == tss and struct.pack(f"{len(vals)}d", *got[1]) == struct.pack(
        f"{len(vals)}d", *vals)
    print(f"gorilla self-check: {len(tss)} points round-trip, {len(blob) / len(tss):.2f} B/point")

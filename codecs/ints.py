"""Integer streams (FORMAT.md section 4): differencing, run-length, and patched bit-packing.

An integer stream is a mode byte followed by the body of that mode. Modes 0-2 difference
the sequence 0, 1 or 2 times (frame of reference, delta, delta-of-delta) and bit-pack the
residuals in blocks of 128 with exceptions for outliers (PFOR); mode 3 codes runs. The
encoder tries every mode and keeps the shortest output (ties go to the lower mode).
All arithmetic wraps modulo 2**64, so any signed 64-bit input round-trips exactly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import accumulate, pairwise

from edge_agent.codecs.wire import I64_MAX, I64_MIN, M64, Reader, varint, varint_len, wrap64, zigzag

BLOCK = 128
MODE_RLE = 3
# Run-length coding is only tried when runs are at most this share of the points.
RLE_MAX_RUN_SHARE = 2


def _diff(xs: list[int]) -> list[int]:
    """Successive differences, wrapped to int64 only when one overflows."""
    d = [b - a for a, b in pairwise(xs)]
    if d and (min(d) < I64_MIN or max(d) > I64_MAX):
        d = [wrap64(v) for v in d]
    return d


def _choose_width(us: list[int]) -> tuple[int, int]:
    """(bit width, exception count) that makes a block's bytes fewest; ties to the smaller width.

    Candidates are the bit lengths that occur in the block. The size counted is exactly
    what `_pack_block` writes after the base: width byte, exception-count varint, packed
    bits, and per exception one position byte plus a varint of the bits above the width.
    """
    hist = sorted(Counter(map(int.bit_length, us)).items())
    n = len(us)
    best_w, best_cost, best_e = 0, -1, 0
    for w, _ in hist:
        exc = 0
        cost = (n * w + 7) // 8
        for bl, c in hist:
            if bl > w:
                exc += c
                cost += c * (1 + (bl - w + 6) // 7)
        cost += varint_len(exc)
        if best_cost < 0 or cost < best_cost:
            best_w, best_cost, best_e = w, cost, exc
    return best_w, best_e


def _pack_block(blk: list[int], out: bytearray) -> None:
    """Append one PFOR block: base, width, exception count, packed low bits, exceptions."""
    base = min(blk)
    us = [v - base for v in blk]
    w, exc = _choose_width(us)
    out += varint(zigzag(base))
    out.append(w)
    out += varint(exc)
    nbytes = (len(us) * w + 7) // 8
    if w:
        mask = (1 << w) - 1
        acc = 0
        for u in reversed(us):
            acc = (acc << w) | (u & mask)
        out += acc.to_bytes(nbytes, "little")
    if exc:
        for i, u in enumerate(us):
            if u >> w:
                out.append(i)
                out += varint(u >> w)


def pack(rs: list[int], out: bytearray) -> None:
    """Append the residuals ``rs`` as consecutive PFOR blocks of up to 128 values."""
    for start in range(0, len(rs), BLOCK):
        _pack_block(rs[start:start + BLOCK], out)


def unpack(rd: Reader, m: int) -> list[int]:
    """Read ``m`` residuals written by ``pack``."""
    out: list[int] = []
    for start in range(0, m, BLOCK):
        bl = min(BLOCK, m - start)
        base = rd.svarint("block base")
        w = rd.byte("block width")
        if w > 64:
            raise rd.fail(f"block bit width {w} exceeds 64")
        exc = rd.count(bl, "block exception count")
        nbytes = (bl * w + 7) // 8
        acc = int.from_bytes(rd.take(nbytes, "packed block"), "little")
        mask = (1 << w) - 1
        us = [(acc >> (i * w)) & mask for i in range(bl)] if w else [0] * bl
        last = -1
        for _ in range(exc):
            i = rd.byte("exception position")
            if i <= last or i >= bl:
                raise rd.fail(f"exception position {i} out of order or beyond block of {bl}")
            last = i
            high = rd.varint("exception high bits")
            if high >> (64 - w):
                raise rd.fail(f"exception high bits {high} do not fit above width {w}")
            us[i] |= high << w
        out.extend([((base + u + (1 << 63)) & M64) - (1 << 63) for u in us])
    return out


def _encode_order(xs: list[int], order: int) -> bytearray:
    """Mode 0-2 body: ``order`` leading values as zigzag varints, then the packed residuals.

    Order 1 leads with x[0]; order 2 with x[0] and x[1]-x[0]. The residuals are the
    order-th differences, so a regular poll grid leaves order 1 with all-equal deltas
    (packed at width 0) and order 2 with zeros.
    """
    out = bytearray([order])
    rs = xs
    for _ in range(order):
        if not rs:
            break
        out += varint(zigzag(rs[0]))
        rs = _diff(rs)
    pack(rs, out)
    return out


def _runs(xs: list[int]) -> tuple[list[int], list[int]]:
    """Run values and run lengths of ``xs``."""
    vals: list[int] = []
    lens: list[int] = []
    prev = object()
    for x in xs:
        if x == prev:
            lens[-1] += 1
        else:
            vals.append(x)
            lens.append(1)
            prev = x
    return vals, lens


def encode_ints(xs: Sequence[int], allow_rle: bool = True) -> bytes:
    """The shortest integer stream for ``xs`` (values already checked to be int64)."""
    xs = list(xs)
    best = _encode_order(xs, 0)
    for order in (1, 2):
        cand = _encode_order(xs, order)
        if len(cand) < len(best):
            best = cand
    if allow_rle and len(xs) > 1:
        vals, lens = _runs(xs)
        if len(vals) * RLE_MAX_RUN_SHARE <= len(xs):
            cand = bytearray([MODE_RLE])
            cand += varint(len(vals))
            cand += encode_ints(vals, allow_rle=False)
            cand += encode_ints([n - 1 for n in lens], allow_rle=False)
            if len(cand) < len(best):
                best = cand
    return bytes(best)


def decode_ints(rd: Reader, n: int, allow_rle: bool = True) -> list[int]:
    """Read an integer stream of ``n`` values."""
    mode = rd.byte("integer stream mode")
    if mode == MODE_RLE and allow_rle:
        runs = rd.count(n, "run count")
        vals = decode_ints(rd, runs, allow_rle=False)
        lens = decode_ints(rd, runs, allow_rle=False)
        out: list[int] = []
        total = 0
        for v, ln in zip(vals, lens, strict=True):
            if ln < 0 or ln >= n - total:
                raise rd.fail(f"run lengths exceed the {n} values declared")
            total += ln + 1
            out.extend([v] * (ln + 1))
        if total != n:
            raise rd.fail(f"runs cover {total} values, {n} declared")
        return out
    if mode > 2:
        raise rd.fail(f"unknown integer stream mode {mode}")
    lead = [rd.svarint("leading value") for _ in range(min(mode, n))]
    rs = unpack(rd, n - len(lead))
    return _integrate(lead, rs, mode)


def _integrate(lead: list[int], rs: list[int], order: int) -> list[int]:
    """Undo ``order`` differencing steps given the leading values and residuals."""
    if order == 0 or not lead:
        return rs
    if order == 1:
        xs = list(accumulate(rs, initial=lead[0]))
    elif len(lead) < 2:
        xs = lead
    else:
        d = list(accumulate(rs, initial=lead[1]))
        xs = list(accumulate(d, initial=lead[0]))
    if xs and (min(xs) < I64_MIN or max(xs) > I64_MAX):
        xs = [wrap64(v) for v in xs]
    return xs

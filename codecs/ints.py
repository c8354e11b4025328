"""Integer streams (FORMAT.md section 4): differencing, run-length, and patched bit-packing.

An integer stream is a mode byte followed by the body of that mode. Modes 0-2 difference
the sequence 0, 1 or 2 times (frame of reference, delta, delta-of-delta) and bit-pack the
residuals in blocks of 128 with exceptions for outliers (PFOR); mode 3 codes runs. The
encoder keeps the shortest mode (ties go to the lower mode): it sizes every mode exactly
without writing it (or rules it out by a lower bound) and writes only the winner.
All arithmetic wraps modulo 2**64, so any signed 64-bit input round-trips exactly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import accumulate, compress, repeat
from operator import lshift, ne, or_, sub

from edge_agent.codecs.wire import I64_MAX, I64_MIN, M64, Reader, varint, varint_len, wrap64, zigzag

BLOCK = 128
MODE_RLE = 3
# Run-length coding is only tried when runs are at most this share of the points.
RLE_MAX_RUN_SHARE = 2
SMALL = 1 << 61


def _diff(xs: list[int], small: bool = False) -> list[int]:
    """Successive differences, wrapped to int64 only when one overflows.

    ``small`` says every |x| < 2**62, so no difference can overflow.
    """
    d = list(map(sub, xs[1:], xs))
    if not small and d and (min(d) < I64_MIN or max(d) > I64_MAX):
        d = [wrap64(v) for v in d]
    return d


def _choose_width(us: list[int]) -> tuple[int, int, int]:
    """(bit width, exception count, bytes) making a block shortest; ties to the smaller width.

    Candidates are the bit lengths that occur in the block (FORMAT.md section 6). The
    bytes counted are exactly what `_emit_block` writes after the base: width byte,
    exception-count varint, packed bits, and per exception one position byte plus a
    varint of the bits above the width.
    """
    hist = sorted(Counter(map(int.bit_length, us)).items())
    n = len(us)
    top = hist[-1][0]
    best_w, best_e, best_cost = top, 0, (n * top + 7) // 8 + 1  # no exception at the top
    above = n
    for w, c in hist[:-1]:
        above -= c  # values longer than w: the exceptions at width w
        # Each exception costs at least 2 bytes, so this bound often rules w out at once.
        if (n * w + 7) // 8 + 2 * above + 1 > best_cost:
            continue
        cost = (n * w + 7) // 8 + varint_len(above)
        for bl, cnt in hist:
            if bl > w:
                cost += cnt * (1 + (bl - w + 6) // 7)
        if cost < best_cost or (cost == best_cost and w < best_w):
            best_w, best_e, best_cost = w, above, cost
    return best_w, best_e, best_cost + 1


# A planned PFOR block: (bytes, base, width, exception count, offsets from the base);
# offsets is None when every value equals the base (width 0, nothing packed).
BlockPlan = tuple[int, int, int, int, list[int] | None]
# A planned mode 0-2 stream: (bytes, mode, leading values, blocks).
StreamPlan = tuple[int, int, list[int], list[BlockPlan]]


def _plan_block(blk: list[int]) -> BlockPlan:
    """Size and layout of one PFOR block (FORMAT.md 4.2), computed without writing it."""
    base = min(blk)
    head = varint_len(zigzag(base))
    if max(blk) == base:
        return head + 2, base, 0, 0, None
    us = list(map(base.__rsub__, blk))
    w, exc, cost = _choose_width(us)
    return head + cost, base, w, exc, us


def _pack_bits(us: list[int], w: int) -> int:
    """The values ``us`` (each below 2**w) as one integer, value i at bits [i*w, i*w+w)."""
    if w <= 24:
        acc = 0
        for u in reversed(us):
            acc = (acc << w) | u
        return acc
    # Wide values: combine pairs level by level, which shifts fewer big integers.
    vals, shift = us, w
    while len(vals) > 1:
        if len(vals) & 1:
            vals = [*vals, 0]
        vals = list(map(or_, vals[::2], map(lshift, vals[1::2], repeat(shift))))
        shift <<= 1
    return vals[0]


def _emit_block(plan: BlockPlan, n: int, out: bytearray) -> None:
    """Append one planned PFOR block of ``n`` values: base, width, exceptions, packed bits."""
    _, base, w, exc, us = plan
    out += varint(zigzag(base))
    out.append(w)
    out += varint(exc)
    if us is None:
        return
    if w:
        mask = (1 << w) - 1
        low = [u & mask for u in us] if exc else us
        out += _pack_bits(low, w).to_bytes((n * w + 7) // 8, "little")
    if exc:
        for i, u in enumerate(us):
            if u >> w:
                out.append(i)
                out += varint(u >> w)


def _lower_bound(rs: list[int]) -> int:
    """A lower bound on the packed bytes of ``rs`` from every 8th value of each block.

    A sampled value's offset from the sample's minimum is no longer than its offset from
    the block's base, and each exception costs at least 2 bytes (position, varint).
    """
    total = 0
    for start in range(0, len(rs), BLOCK):
        n = min(BLOCK, len(rs) - start)
        sample = rs[start:start + n:8]
        lo = min(sample)
        above = len(sample)
        least = 2 * above  # width 0
        for w, c in sorted(Counter(map(int.bit_length, map(lo.__rsub__, sample))).items()):
            above -= c
            least = min(least, (n * w + 7) // 8 + 2 * above)
        total += 3 + least  # base varint, width byte and exception count: 1 byte or more
    return total


def _plan_plain(xs: list[int]) -> StreamPlan:
    """The shortest of modes 0, 1, 2 for ``xs`` (ties to the lower mode), sized, not written.

    Mode k leads with k values (x[0]; then x[1]-x[0]) and packs the k-th differences, so
    a regular poll grid leaves mode 1 with all-equal deltas (width 0) and mode 2 with
    zeros. Sizes are exact, so only the winner is ever packed. Mode 0 is sized last and
    only when a sampled lower bound does not already rule it out (timestamps: it never
    wins, and its large spread values cost most to size).
    """
    cands: list[tuple[int, list[int], list[int]]] = [(0, [], xs)]
    lead: list[int] = []
    rs = xs
    # Below 2**61 in magnitude neither differences nor their differences can overflow.
    small = bool(xs) and min(xs) > -SMALL and max(xs) < SMALL
    for mode in (1, 2):
        if rs:
            lead = [*lead, rs[0]]
            rs = _diff(rs, small)
        cands.append((mode, lead, rs))
    best: StreamPlan | None = None
    for mode, lead, rs in cands[1:] + cands[:1]:
        head = 1 + sum(varint_len(zigzag(v)) for v in lead)
        if best is not None and mode == 0 and len(rs) >= 32 \
                and head + _lower_bound(rs) > best[0]:
            continue  # mode 0 would win a tie, so only a strictly larger bound rules it out
        blocks = [_plan_block(rs[i:i + BLOCK]) for i in range(0, len(rs), BLOCK)]
        size = head + sum(b[0] for b in blocks)
        if best is None or size < best[0] or (size == best[0] and mode < best[1]):
            best = (size, mode, lead, blocks)
    assert best is not None
    return best


def _emit_plain(plan: StreamPlan, n: int, out: bytearray) -> None:
    """Append a planned mode 0-2 stream of ``n`` values."""
    _, mode, lead, blocks = plan
    out.append(mode)
    for v in lead:
        out += varint(zigzag(v))
    m = n - len(lead)
    for k, blk in enumerate(blocks):
        _emit_block(blk, min(BLOCK, m - k * BLOCK), out)


def _runs(xs: list[int]) -> tuple[list[int], list[int]]:
    """Run values and run lengths minus one of ``xs`` (not empty)."""
    starts = [0, *compress(range(1, len(xs)), map(ne, xs[1:], xs))]
    ends = [s - 1 for s in starts[1:]]
    ends.append(len(xs) - 1)
    return [xs[i] for i in starts], list(map(sub, ends, starts))


def encode_ints(xs: Sequence[int], allow_rle: bool = True) -> bytes:
    """The shortest integer stream for ``xs`` (values already checked to be int64).

    Modes 0-2 always, mode 3 (runs) for value streams whose runs are at most half the
    points; the shortest wins, ties to the lower mode (FORMAT.md section 6).
    """
    xs = list(xs)
    n = len(xs)
    plan = _plan_plain(xs)
    out = bytearray()
    if allow_rle and n > 1:
        nruns = 1 + sum(map(ne, xs[1:], xs))
        if nruns * RLE_MAX_RUN_SHARE <= n:
            vals, lens = _runs(xs)
            pv, pl = _plan_plain(vals), _plan_plain(lens)
            if 1 + varint_len(nruns) + pv[0] + pl[0] < plan[0]:
                out.append(MODE_RLE)
                out += varint(nruns)
                _emit_plain(pv, nruns, out)
                _emit_plain(pl, nruns, out)
                return bytes(out)
    _emit_plain(plan, n, out)
    return bytes(out)


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

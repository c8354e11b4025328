"""The ALP encoder's exponent search (FORMAT.md section 6), exact but lazy.

Section 6 defines cost(e) = 80 x (values not exact at e) + floor(N e 10/3) bits and picks
the exponent of lowest cost (ties to the smaller), first without the multiply flag and,
when that leaves a value inexact, with it. Checking every value at every exponent is
what made the pure-Python encoder slow. Here exponents are scanned in chunks, and a
scan stops as soon as the exceptions found so far prove the exponent cannot win; a good
first guess (where the first value is exact) makes most scans stop after one chunk.
Only what provably cannot be chosen is skipped, so the choice, and the bytes, are those
of the exhaustive search (the Cython fast path does the same search in C).
"""

from __future__ import annotations

import struct
from itertools import compress, islice
from operator import eq, not_

MAX_EXP = 15
POW10 = [10.0 ** e for e in range(MAX_EXP + 1)]
# 1.0 / 10**e: the double nearest 10**-e, which is what a register's scale factor 0.1 or
# 0.01 parses to, so raw * scale values (11.100000000000001 = 111 * 0.1) scale exactly too.
INV10 = [1.0 / p for p in POW10]
TWO53 = float(1 << 53)
# Encoder's estimate of one exception's cost and of one decimal digit's cost, in bits
# (integers so that every implementation makes the same choice).
EXC_COST_BITS = 80
DIGIT_COST_NUM, DIGIT_COST_DEN = 10, 3
_F32 = struct.Struct("<f")


def _scaled(vals: list[float], e: int, f32: bool, mul: bool,
            bound: float | None = None) -> tuple[list[int], list[bool]]:
    """Per value: the integer k = round(v * 10**e), and whether k gives v back exactly.

    The value is k / 10**e, or k * (1 / 10**e) with ``mul``; binary32-rounded if ``f32``.
    Where |v * 10**e| > 2**53, k is 0 and the value is not exact. ``bound``, if given,
    is at least every |v| (rounding is monotonic, so max |v| * 10**e bounds every product).
    """
    p = POW10[e]
    ts = list(map(p.__mul__, vals))
    if not ts:
        return [], []
    inside = (bound if bound is not None else max(map(abs, vals))) * p <= TWO53
    ks = list(map(round, ts)) if inside else [
        round(t) if -TWO53 <= t <= TWO53 else 0 for t in ts]
    # k / p and k * q with an int k convert k to binary64 first, as FORMAT.md 5.1 says.
    recon = list(map(INV10[e].__mul__, ks) if mul else map(p.__rtruediv__, ks))
    if f32:
        n = len(recon)
        recon = list(struct.unpack(f"<{n}f", struct.pack(f"<{n}f", *recon)))
    ok = list(map(eq, recon, vals))
    if not inside:
        ok = [good and -TWO53 <= t <= TWO53 for good, t in zip(ok, ts, strict=True)]
    return ks, ok


class Scan:
    """Exactness of the non-special values at one (exponent, multiply flag), found lazily.

    FORMAT.md section 6 defines cost(e) = 80 x (values not exact at e) + floor(N e 10/3).
    Scanning a prefix gives a lower bound on that cost, which is often enough to prove an
    exponent cannot win without scanning every value.
    """

    __slots__ = ("digits", "e", "f32", "fails", "ks", "maxabs", "mul", "ok", "plain")

    def __init__(self, plain: list[float], maxabs: float, n: int, e: int, f32: bool,
                 mul: bool) -> None:
        self.plain, self.maxabs, self.e, self.f32, self.mul = plain, maxabs, e, f32, mul
        self.digits = n * e * DIGIT_COST_NUM // DIGIT_COST_DEN
        self.fails = n - len(plain)  # special values are never exact
        self.ks: list[int] = []
        self.ok: list[bool] = []

    @property
    def done(self) -> bool:
        """Every value has been checked, so ``bound`` is the exact cost."""
        return len(self.ks) == len(self.plain)

    @property
    def bound(self) -> int:
        """A lower bound on cost(e), exact once ``done``."""
        return self.fails * EXC_COST_BITS + self.digits

    def advance(self) -> None:
        """Check the next chunk of values (16 first, then as many as checked so far)."""
        pos = len(self.ks)
        ks, ok = _scaled(self.plain[pos:pos + max(16, pos)], self.e, self.f32, self.mul,
                         self.maxabs)
        self.fails += ok.count(False)
        self.ks += ks
        self.ok += ok

    def exceeds(self, limit: int) -> bool:
        """Whether cost(e) > limit, scanning only as far as needed to prove it either way."""
        while self.bound <= limit and not self.done:
            self.advance()
        return self.bound > limit

    def complete(self) -> int:
        """The exact cost."""
        while not self.done:
            self.advance()
        return self.bound


def _first_exact(v: float, f32: bool, mul: bool) -> int:
    """The smallest exponent at which ``v`` alone is exact (0 if none): where to start."""
    for e in range(MAX_EXP + 1):
        t = v * POW10[e]
        if -TWO53 <= t <= TWO53:
            r = round(t) * INV10[e] if mul else round(t) / POW10[e]
            if (_F32.unpack(_F32.pack(r))[0] if f32 else r) == v:
                return e
    return 0


class _Search:
    """The scans of every exponent for one multiply flag, each created when first needed."""

    __slots__ = ("f32", "maxabs", "mul", "n", "plain", "scans", "specials")

    def __init__(self, plain: list[float], maxabs: float, n: int, f32: bool, mul: bool) -> None:
        self.plain, self.maxabs, self.n, self.f32, self.mul = plain, maxabs, n, f32, mul
        self.specials = (n - len(plain)) * EXC_COST_BITS
        self.scans: list[Scan | None] = [None] * (MAX_EXP + 1)

    def digits(self, e: int) -> int:
        """The digit term of cost(e)."""
        return self.n * e * DIGIT_COST_NUM // DIGIT_COST_DEN

    def scan(self, e: int) -> Scan:
        """The scan of exponent e."""
        s = self.scans[e]
        if s is None:
            s = self.scans[e] = Scan(self.plain, self.maxabs, self.n, e, self.f32, self.mul)
        return s

    def exceeds(self, e: int, limit: int) -> bool:
        """Whether cost(e) > limit, scanning only if the digit term does not prove it."""
        return self.specials + self.digits(e) > limit or self.scan(e).exceeds(limit)

    def known(self) -> int:
        """The lowest exact cost found so far (at least one scan must be complete)."""
        return min(s.bound for s in self.scans if s is not None and s.done)

    def inexact(self, e: int, hints: list[int]) -> bool:
        """Whether some value is not exact at e; tries the values at ``hints`` first.

        A value inexact at one exponent usually is at every other (a raw register times
        0.1 is never k / 10**e), so one small check tends to settle it.
        """
        if self.specials:
            return True
        if hints:
            _, ok = _scaled([self.plain[i] for i in hints], e, self.f32, self.mul, self.maxabs)
            if not all(ok):
                return True
        return self.exceeds(e, self.digits(e))

    def inexact_positions(self, limit: int) -> list[int]:
        """Up to ``limit`` positions of values found inexact by a complete scan."""
        for s in self.scans:
            if s is not None and s.done and s.fails:
                return list(islice(compress(range(len(s.ok)), map(not_, s.ok)), limit))
        return []


def _argmin(search: _Search, start: int, ceiling: int | None = None) -> tuple[int, int] | None:
    """(exponent, cost) of lowest cost, ties to the smaller exponent, over every exponent.

    This is the result of FORMAT.md section 6's search (which stops once the digit term
    alone reaches the best cost: no later exponent can win then). It visits ``start``
    first, then for each other exponent scans only until its lower bound proves it cannot
    beat the best so far; the visiting order cannot change the result. With a
    ``ceiling``, only costs below it count, and None means there is none.
    """
    best_e, best = -1, ceiling
    for e in [start, *range(start + 1, MAX_EXP + 1), *range(start)]:
        if best is None:
            best_e, best = e, search.scan(e).complete()
            continue
        # e wins with a lower cost, or with an equal one if it is the smaller exponent.
        limit = best if best_e >= 0 and e < best_e else best - 1
        if not search.exceeds(e, limit):
            best_e, best = e, search.scan(e).bound
    return None if best_e < 0 or best is None else (best_e, best)


def choose(plain: list[float], n: int, f32: bool) -> Scan:
    """The (exponent, multiply flag) that FORMAT.md section 6 chooses, as its complete scan.

    Section 6 searches without the multiply flag and, if its best exponent leaves some
    value inexact, searches with it and keeps it when strictly cheaper. Here the flagged
    search runs as soon as the unflagged start is inexact, counting only costs below the
    unflagged ones known so far, and the unflagged costs are then only bounded against
    the flagged best; every order gives the same choice.
    """
    maxabs = max(map(abs, plain), default=0.0)
    div = _Search(plain, maxabs, n, f32, False)
    start = _first_exact(plain[0], f32, False) if plain else 0
    known = div.scan(start).complete()
    # If the start, or else the next exponent, leaves no value inexact (float32 readings
    # often need one digit more than the first), the unflagged best is likely exact too,
    # which settles the choice without the flagged search.
    if known == div.digits(start) or (
            start < MAX_EXP and not div.exceeds(start + 1, div.digits(start + 1))):
        e, known = _argmin(div, start) or (start, known)
        if known == div.digits(e):
            return div.scan(e)  # the best leaves no value inexact: no flagged search
    mul = _Search(plain, maxabs, n, f32, True)
    # The flag can only win below the unflagged best, which is at most ``known``.
    found = _argmin(mul, _first_exact(plain[0], f32, True) if plain else 0, known)
    exps = range(MAX_EXP + 1)
    if found is not None and all(div.exceeds(e, found[1]) for e in exps):
        # Every unflagged cost is higher. The flag wins if the unflagged best leaves
        # some value inexact: an exponent that costs no more than a known unflagged cost
        # could be that best, and each having an inexact value proves it.
        known, hints = div.known(), div.inexact_positions(4)
        if all(div.inexact(e, hints) for e in exps if div.digits(e) <= known):
            return mul.scan(found[0])
    e, cost = _argmin(div, start) or (start, known)
    if found is not None and cost > div.digits(e) and found[1] < cost:
        return mul.scan(found[0])
    return div.scan(e)

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython fast path of the reading-batch codec: byte-identical to edge_agent.codecs.reference.

Every function here mirrors one in codecs/ints.py, codecs/floats.py or codecs/reference.py
and follows FORMAT.md; the reference is the spec of record. Arithmetic on residuals is in
uint64_t so that it wraps modulo 2**64 exactly as the reference's masked integers do.
The host must be little-endian (x86-64, AArch64 and ARM Linux all are): packed bits are
loaded with memcpy.
"""

from collections.abc import Mapping

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.object cimport PyObject
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.math cimport isinf, nearbyint
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset

from edge_agent.protocol.errors import CodecError

cdef extern from *:
    int __builtin_clzll(unsigned long long) nogil

# Raw forms of the C-API calls that build decoded lists: the new object's reference goes
# straight into the list slot (SET_ITEM steals it), with no reference-count round trip.
cdef extern from "Python.h":
    PyObject* new_long "PyLong_FromLongLong" (long long v)
    PyObject* new_float "PyFloat_FromDouble" (double v)
    void set_item "PyList_SET_ITEM" (object lst, Py_ssize_t i, PyObject* o)
    void incref "Py_INCREF" (PyObject* o)
    PyObject* Py_True
    PyObject* Py_False

cdef enum:
    BLOCK = 128
    MODE_RLE = 3
    MAX_EXP = 15
    EXC_COST_BITS = 80
    MAX_POINTS_PER_BYTE = 64

cdef uint64_t EXP_MASK = 0x7FF0000000000000ULL
cdef uint64_t NEG_ZERO = 0x8000000000000000ULL
cdef double TWO53 = 9007199254740992.0
cdef double POW10[16]
cdef double INV10[16]
for _e in range(16):
    POW10[_e] = 10.0 ** _e
    INV10[_e] = 1.0 / POW10[_e]

cdef bytes HEADER = b"\x02EC"


# ---------------------------------------------------------------- output buffer

cdef struct Buf:
    uint8_t* p
    Py_ssize_t n
    Py_ssize_t cap


cdef int buf_init(Buf* b, Py_ssize_t cap) except -1:
    b.p = <uint8_t*>malloc(cap if cap > 16 else 16)
    if b.p == NULL:
        raise MemoryError()
    b.n = 0
    b.cap = cap if cap > 16 else 16
    return 0


cdef inline int buf_reserve(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap
    cdef uint8_t* q
    if b.n + extra <= b.cap:
        return 0
    cap = b.cap * 2
    while cap < b.n + extra:
        cap *= 2
    q = <uint8_t*>realloc(b.p, cap)
    if q == NULL:
        raise MemoryError()
    b.p = q
    b.cap = cap
    return 0


cdef inline int put_byte(Buf* b, uint8_t v) except -1:
    buf_reserve(b, 1)
    b.p[b.n] = v
    b.n += 1
    return 0


cdef inline int put_varint(Buf* b, uint64_t u) except -1:
    buf_reserve(b, 10)
    while u >= 0x80:
        b.p[b.n] = <uint8_t>((u & 0x7F) | 0x80)
        b.n += 1
        u >>= 7
    b.p[b.n] = <uint8_t>u
    b.n += 1
    return 0


cdef inline int put_mem(Buf* b, const uint8_t* src, Py_ssize_t k) except -1:
    buf_reserve(b, k)
    memcpy(b.p + b.n, src, k)
    b.n += k
    return 0


cdef inline uint64_t zigzag(int64_t v) noexcept:
    return (<uint64_t>v << 1) ^ <uint64_t>(v >> 63)


cdef inline int64_t unzigzag(uint64_t u) noexcept:
    return <int64_t>((u >> 1) ^ (0 - (u & 1)))


cdef inline int varint_len(uint64_t u) noexcept:
    cdef int k = 1
    while u >= 0x80:
        u >>= 7
        k += 1
    return k


cdef inline int bitlen(uint64_t u) noexcept:
    return 0 if u == 0 else 64 - __builtin_clzll(u)


# ---------------------------------------------------------------- integer streams (ints.py)

cdef struct BlockPlan:
    int64_t base
    int w
    Py_ssize_t exc
    Py_ssize_t size   # bytes of the whole block, base varint included


cdef void plan_block(const int64_t* blk, Py_ssize_t bl, BlockPlan* pl) noexcept:
    """ints._plan_block/_choose_width: the width making the block shortest, ties to the smaller."""
    cdef Py_ssize_t counts[65]
    cdef int present[65]
    cdef int npresent = 0, a, b, w, top, best_w
    cdef int64_t base = blk[0], hi = blk[0]
    cdef Py_ssize_t i, above, cost, best_cost, best_exc = 0
    for i in range(1, bl):
        if blk[i] < base:
            base = blk[i]
        if blk[i] > hi:
            hi = blk[i]
    pl.base = base
    if hi == base:
        pl.w = 0
        pl.exc = 0
        pl.size = varint_len(zigzag(base)) + 2
        return
    memset(counts, 0, sizeof(counts))
    for i in range(bl):
        counts[bitlen(<uint64_t>blk[i] - <uint64_t>base)] += 1
    for w in range(65):
        if counts[w]:
            present[npresent] = w
            npresent += 1
    top = present[npresent - 1]
    best_w = top
    best_cost = (bl * top + 7) // 8 + 1
    above = bl
    for a in range(npresent - 1):
        w = present[a]
        above -= counts[w]
        if (bl * w + 7) // 8 + 2 * above + 1 > best_cost:
            continue  # each exception costs at least 2 bytes
        cost = (bl * w + 7) // 8 + varint_len(<uint64_t>above)
        for b in range(a + 1, npresent):
            cost += counts[present[b]] * (1 + (present[b] - w + 6) // 7)
        if cost < best_cost or (cost == best_cost and w < best_w):
            best_w = w
            best_cost = cost
            best_exc = above
    pl.w = best_w
    pl.exc = best_exc
    pl.size = varint_len(zigzag(base)) + 1 + best_cost


cdef int emit_block(const int64_t* blk, Py_ssize_t bl, const BlockPlan* pl, Buf* out) except -1:
    """ints._emit_block: base, width, exception count, packed low bits, exceptions."""
    cdef int w = pl.w, k, accbits, spill
    cdef Py_ssize_t i, nbytes
    cdef uint64_t mask, acc, v, u
    put_varint(out, zigzag(pl.base))
    put_byte(out, <uint8_t>w)
    put_varint(out, <uint64_t>pl.exc)
    if w:
        nbytes = (bl * w + 7) // 8
        buf_reserve(out, nbytes + 8)
        mask = 0xFFFFFFFFFFFFFFFFULL if w == 64 else ((<uint64_t>1 << w) - 1)
        acc = 0
        accbits = 0
        for i in range(bl):
            v = (<uint64_t>blk[i] - <uint64_t>pl.base) & mask
            acc |= v << accbits
            if accbits + w >= 64:
                memcpy(out.p + out.n, &acc, 8)
                out.n += 8
                spill = accbits + w - 64
                acc = (v >> (64 - accbits)) if accbits else 0
                accbits = spill
            else:
                accbits += w
        k = 0
        while accbits > 0:
            out.p[out.n] = <uint8_t>(acc >> (8 * k))
            out.n += 1
            k += 1
            accbits -= 8
    if pl.exc:
        for i in range(bl):
            u = <uint64_t>blk[i] - <uint64_t>pl.base
            if w < 64 and (u >> w):
                put_byte(out, <uint8_t>i)
                put_varint(out, u >> w)
    return 0


cdef Py_ssize_t packed_size(const int64_t* rs, Py_ssize_t m) noexcept:
    """Bytes of ``m`` residuals as PFOR blocks."""
    cdef Py_ssize_t start = 0, size = 0
    cdef BlockPlan pl
    while start < m:
        plan_block(rs + start, BLOCK if m - start > BLOCK else m - start, &pl)
        size += pl.size
        start += BLOCK
    return size


cdef int emit_packed(const int64_t* rs, Py_ssize_t m, Buf* out) except -1:
    cdef Py_ssize_t start = 0, bl
    cdef BlockPlan pl
    while start < m:
        bl = BLOCK if m - start > BLOCK else m - start
        plan_block(rs + start, bl, &pl)
        emit_block(rs + start, bl, &pl, out)
        start += BLOCK
    return 0


cdef Py_ssize_t plan_plain(const int64_t* xs, Py_ssize_t n, int64_t* d1, int64_t* d2,
                           int* mode_out) noexcept:
    """ints._plan_plain: size of the shortest of modes 0-2 (ties to the lower); fills the
    first and second differences into d1 (n-1 values) and d2 (n-2 values)."""
    cdef Py_ssize_t i, size, best
    cdef int mode = 0
    for i in range(n - 1):
        d1[i] = <int64_t>(<uint64_t>xs[i + 1] - <uint64_t>xs[i])
    for i in range(n - 2):
        d2[i] = <int64_t>(<uint64_t>d1[i + 1] - <uint64_t>d1[i])
    best = 1 + packed_size(xs, n)
    if n >= 1:
        size = 1 + varint_len(zigzag(xs[0])) + packed_size(d1, n - 1)
        if size < best:
            best = size
            mode = 1
        size = 1 + varint_len(zigzag(xs[0]))
        if n >= 2:
            size += varint_len(zigzag(d1[0])) + packed_size(d2, n - 2)
        if size < best:
            best = size
            mode = 2
    mode_out[0] = mode
    return best


cdef int emit_plain(const int64_t* xs, Py_ssize_t n, const int64_t* d1, const int64_t* d2,
                    int mode, Buf* out) except -1:
    """Write mode ``mode`` (0-2) of xs: leading values, then packed residuals."""
    put_byte(out, <uint8_t>mode)
    if mode == 0:
        return emit_packed(xs, n, out)
    put_varint(out, zigzag(xs[0]))
    if mode == 1:
        return emit_packed(d1, n - 1, out)
    if n >= 2:
        put_varint(out, zigzag(d1[0]))
        emit_packed(d2, n - 2, out)
    return 0


cdef int encode_ints(const int64_t* xs, Py_ssize_t n, bint allow_rle, Buf* out) except -1:
    """ints.encode_ints: modes 0-2 and, for value streams with runs <= n/2, mode 3."""
    cdef Py_ssize_t runs, i, r, size, vsize, lsize
    cdef int mode, vmode, lmode
    cdef Py_ssize_t cap = n if n > 2 else 2
    cdef int64_t* work = <int64_t*>malloc(6 * cap * sizeof(int64_t))
    cdef int64_t* d1
    cdef int64_t* d2
    cdef int64_t* vals
    cdef int64_t* lens
    cdef int64_t* e1
    cdef int64_t* e2
    if work == NULL:
        raise MemoryError()
    d1, d2, vals, lens = work, work + cap, work + 2 * cap, work + 3 * cap
    try:
        size = plan_plain(xs, n, d1, d2, &mode)
        if allow_rle and n > 1:
            runs = 1
            for i in range(1, n):
                if xs[i] != xs[i - 1]:
                    runs += 1
            if runs * 2 <= n:
                r = 0
                vals[0] = xs[0]
                lens[0] = 0
                for i in range(1, n):
                    if xs[i] == xs[i - 1]:
                        lens[r] += 1
                    else:
                        r += 1
                        vals[r] = xs[i]
                        lens[r] = 0
                # runs <= n/2, so each stream's differences fit in half the space.
                e1, e2 = work + 4 * cap, work + 4 * cap + runs
                vsize = plan_plain(vals, runs, e1, e2, &vmode)
                e1, e2 = work + 5 * cap, work + 5 * cap + runs
                lsize = plan_plain(lens, runs, e1, e2, &lmode)
                if 1 + varint_len(<uint64_t>runs) + vsize + lsize < size:
                    put_byte(out, MODE_RLE)
                    put_varint(out, <uint64_t>runs)
                    emit_plain(vals, runs, work + 4 * cap, work + 4 * cap + runs, vmode, out)
                    emit_plain(lens, runs, work + 5 * cap, work + 5 * cap + runs, lmode, out)
                    return 0
        emit_plain(xs, n, d1, d2, mode, out)
    finally:
        free(work)
    return 0


# ---------------------------------------------------------------- float streams (floats.py)

cdef inline uint64_t dbits(double v) noexcept:
    cdef uint64_t b
    memcpy(&b, &v, 8)
    return b


cdef inline bint is_special(uint64_t b) noexcept:
    return (b & EXP_MASK) == EXP_MASK or b == NEG_ZERO


cdef inline bint scale_exact(double v, int e, bint f32, bint mul, int64_t* k) noexcept:
    """k with k / 10**e (or k * 10**-e) == v exactly, binary32-rounded if f32: floats._scaled."""
    cdef double p = POW10[e]
    cdef double t = v * p
    cdef double r
    if not (-TWO53 <= t <= TWO53):
        return False
    k[0] = <int64_t>nearbyint(t)
    if mul:
        r = <double>k[0] * INV10[e]
    else:
        r = <double>k[0] / p
    if f32:
        r = <double>(<float>r)
    return r == v


cdef Py_ssize_t cost_at(const double* vals, const uint64_t* bits, Py_ssize_t n,
                        Py_ssize_t nspecial, int e, bint f32, bint mul,
                        Py_ssize_t limit) noexcept:
    """FORMAT.md section 6's cost(e), or once it is proven above ``limit``, a bound above it."""
    cdef Py_ssize_t i, bound = nspecial * EXC_COST_BITS + n * e * 10 // 3
    cdef int64_t k
    if bound > limit:
        return bound
    for i in range(n):
        if not is_special(bits[i]) and not scale_exact(vals[i], e, f32, mul, &k):
            bound += EXC_COST_BITS
            if bound > limit:
                return bound
    return bound


cdef bint argmin_exponent(const double* vals, const uint64_t* bits, Py_ssize_t n,
                          Py_ssize_t nspecial, bint f32, bint mul, int start,
                          Py_ssize_t ceiling, int* e_out, Py_ssize_t* cost_out) noexcept:
    """floats._argmin: lowest cost (ties to the smaller exponent) among costs below
    ``ceiling`` (-1: no ceiling); False if there is none. Visits ``start`` first and
    stops scanning an exponent once its cost is proven too high."""
    cdef int e, j, best_e = -1
    cdef Py_ssize_t best = ceiling, limit, c
    for j in range(MAX_EXP + 1):
        e = start + j if start + j <= MAX_EXP else start + j - MAX_EXP - 1
        if best < 0:
            best_e = e
            best = cost_at(vals, bits, n, nspecial, e, f32, mul, PY_SSIZE_T_MAX)
            continue
        limit = best if best_e >= 0 and e < best_e else best - 1
        c = cost_at(vals, bits, n, nspecial, e, f32, mul, limit)
        if c <= limit:
            best_e = e
            best = c
    e_out[0] = best_e
    cost_out[0] = best
    return best_e >= 0


cdef int first_exact(const double* vals, const uint64_t* bits, Py_ssize_t n, bint f32,
                     bint mul) noexcept:
    """floats._first_exact: smallest exponent at which the first plain value is exact."""
    cdef Py_ssize_t i
    cdef int e
    cdef int64_t k
    for i in range(n):
        if not is_special(bits[i]):
            for e in range(MAX_EXP + 1):
                if scale_exact(vals[i], e, f32, mul, &k):
                    return e
            return 0
    return 0


cdef int encode_alp(const double* vals, const uint64_t* bits, Py_ssize_t n, Buf* out,
                    Py_ssize_t* nexc_out) except -1:
    cdef bint f32 = True, mul = False
    cdef Py_ssize_t i, nplain = 0, nexc = 0, last
    cdef int e = 0, e2 = 0
    cdef Py_ssize_t cost, cost2
    cdef int64_t prev = 0
    cdef bint have_prev = False
    cdef float y
    cdef int64_t* ks = <int64_t*>malloc(n * sizeof(int64_t))
    cdef uint8_t* ok = <uint8_t*>malloc(n)
    if ks == NULL or ok == NULL:
        free(ks)
        free(ok)
        raise MemoryError()
    try:
        for i in range(n):
            if is_special(bits[i]):
                continue
            nplain += 1
            y = <float>vals[i]
            if isinf(y) or dbits(<double>y) != bits[i]:
                f32 = False
        f32 = f32 and nplain > 0
        # FORMAT.md section 6: the unflagged search; if its best leaves a value inexact,
        # the flagged one, which wins only below the unflagged best cost.
        argmin_exponent(vals, bits, n, n - nplain, f32, False,
                        first_exact(vals, bits, n, f32, False), -1, &e, &cost)
        if cost > n * e * 10 // 3:
            if argmin_exponent(vals, bits, n, n - nplain, f32, True,
                               first_exact(vals, bits, n, f32, True), cost, &e2, &cost2):
                e = e2
                mul = True
        for i in range(n):
            ok[i] = (not is_special(bits[i])) and scale_exact(vals[i], e, f32, mul, &ks[i])
            if ok[i] and not have_prev:
                prev = ks[i]
                have_prev = True
        for i in range(n):
            if ok[i]:
                prev = ks[i]
            else:
                ks[i] = prev
                nexc += 1
        put_byte(out, 0)
        put_byte(out, <uint8_t>(e | (0x80 if f32 else 0) | (0x40 if mul else 0)))
        encode_ints(ks, n, True, out)
        put_varint(out, <uint64_t>nexc)
        last = -1
        for i in range(n):
            if not ok[i]:
                put_varint(out, <uint64_t>(i - last - 1))
                buf_reserve(out, 8)
                memcpy(out.p + out.n, &bits[i], 8)
                out.n += 8
                last = i
    finally:
        free(ks)
        free(ok)
    nexc_out[0] = nexc
    return 0


cdef int encode_xor(const uint64_t* bits, Py_ssize_t n, Buf* out) except -1:
    cdef uint64_t prev = 0, x
    cdef Py_ssize_t i
    cdef int lz, tz, ln, j
    buf_reserve(out, 1 + 9 * n)
    out.p[out.n] = 1
    out.n += 1
    for i in range(n):
        x = bits[i] ^ prev
        prev = bits[i]
        if x == 0:
            out.p[out.n] = 0
            out.n += 1
            continue
        lz = __builtin_clzll(x) >> 3
        tz = (bitlen(x & (0 - x)) - 1) >> 3
        ln = 8 - lz - tz
        out.p[out.n] = <uint8_t>((lz << 4) | ln)
        out.n += 1
        x >>= 8 * tz
        for j in range(ln):
            out.p[out.n] = <uint8_t>(x >> (8 * j))
            out.n += 1
    return 0


cdef bint f32_ordered(const double* vals, Py_ssize_t n, int64_t* out) noexcept:
    """floats._f32_ordered: binary32 patterns as order-preserving int32; False if not all are."""
    cdef Py_ssize_t i
    cdef float y
    cdef uint32_t p
    for i in range(n):
        if vals[i] != vals[i]:
            return False
        y = <float>vals[i]
        if (isinf(y) and not isinf(vals[i])) or dbits(<double>y) != dbits(vals[i]):
            return False
        memcpy(&p, &y, 4)
        out[i] = <int64_t>p if p < 0x80000000U else 0x7FFFFFFF - <int64_t>p
    return True


cdef int encode_floats(const double* vals, const uint64_t* bits, Py_ssize_t n, Buf* out) except -1:
    """floats.encode_floats: the shortest of ALP, XOR (if ALP has exceptions), binary32."""
    cdef Buf best, cand, t
    cdef Py_ssize_t nexc = 0
    cdef int64_t* ords = <int64_t*>malloc(n * sizeof(int64_t))
    if ords == NULL:
        raise MemoryError()
    buf_init(&best, 64)
    buf_init(&cand, 64)
    try:
        encode_alp(vals, bits, n, &best, &nexc)
        if nexc:
            encode_xor(bits, n, &cand)
            if cand.n < best.n:
                t = best
                best = cand
                cand = t
        if f32_ordered(vals, n, ords):
            cand.n = 0
            put_byte(&cand, 2)
            encode_ints(ords, n, True, &cand)
            if cand.n < best.n:
                t = best
                best = cand
                cand = t
        put_mem(out, best.p, best.n)
    finally:
        free(best.p)
        free(cand.p)
        free(ords)
    return 0


# ---------------------------------------------------------------- reader (wire.py)

cdef struct Reader:
    const uint8_t* p
    Py_ssize_t pos
    Py_ssize_t end


cdef object fail(Reader* r, str what):
    return CodecError(f"invalid batch at byte {r.pos}: {what}")


cdef int r_byte(Reader* r, str what) except -1:
    if r.pos >= r.end:
        raise fail(r, f"input ends before {what}")
    r.pos += 1
    return r.p[r.pos - 1]


cdef const uint8_t* r_take(Reader* r, Py_ssize_t k, str what) except NULL:
    if k > r.end - r.pos:
        raise fail(r, f"{what} needs {k} bytes, only {r.end - r.pos} left")
    r.pos += k
    return r.p + r.pos - k


cdef int r_varint(Reader* r, uint64_t* out, str what) except -1:
    cdef uint64_t result = 0
    cdef uint8_t b
    cdef int i
    for i in range(10):
        if r.pos >= r.end:
            raise fail(r, f"input ends inside {what}")
        b = r.p[r.pos]
        r.pos += 1
        if i == 9 and b > 1 and b < 0x80:
            raise fail(r, f"{what} exceeds 2**64-1")
        result |= (<uint64_t>(b & 0x7F)) << (7 * i)
        if b < 0x80:
            out[0] = result
            return 0
    raise fail(r, f"{what} is longer than 10 bytes")


cdef Py_ssize_t r_count(Reader* r, Py_ssize_t limit, str what) except -1:
    cdef uint64_t u
    r_varint(r, &u, what)
    if u > <uint64_t>limit:
        raise fail(r, f"{what} {u} exceeds the limit {limit}")
    return <Py_ssize_t>u


# ---------------------------------------------------------------- decoding streams

cdef int unpack(Reader* r, Py_ssize_t m, int64_t* out) except -1:
    cdef Py_ssize_t start = 0, bl, i, nexc, j, byte, last
    cdef uint64_t ubase, mask, lo, high
    cdef int w, off, pos
    cdef const uint8_t* chunk
    cdef Py_ssize_t nbytes
    cdef uint64_t us[BLOCK]
    cdef uint8_t padded[BLOCK * 8 + 16]
    while start < m:
        bl = BLOCK if m - start > BLOCK else m - start
        r_varint(r, &ubase, "block base")
        w = r_byte(r, "block width")
        if w > 64:
            raise fail(r, f"block bit width {w} exceeds 64")
        nexc = r_count(r, bl, "block exception count")
        nbytes = (bl * w + 7) // 8
        chunk = r_take(r, nbytes, "packed block")
        mask = 0xFFFFFFFFFFFFFFFFULL if w == 64 else ((<uint64_t>1 << w) - 1)
        if w == 0:
            memset(us, 0, bl * sizeof(uint64_t))
        else:
            # A zero-padded copy lets every value load 8 bytes (plus one more when the
            # value straddles them, only possible for w > 56) without a bounds test.
            memcpy(padded, chunk, nbytes)
            memset(padded + nbytes, 0, 16)
            if w <= 56:
                for i in range(bl):
                    memcpy(&lo, padded + ((i * w) >> 3), 8)
                    us[i] = (lo >> ((i * w) & 7)) & mask
            else:
                for i in range(bl):
                    byte = (i * w) >> 3
                    off = (i * w) & 7
                    memcpy(&lo, padded + byte, 8)
                    lo >>= off
                    if off:
                        lo |= (<uint64_t>padded[byte + 8]) << (64 - off)
                    us[i] = lo & mask
        last = -1
        for j in range(nexc):
            pos = r_byte(r, "exception position")
            if pos <= last or pos >= bl:
                raise fail(r, f"exception position {pos} out of order or beyond block of {bl}")
            last = pos
            r_varint(r, &high, "exception high bits")
            if w and (high >> (64 - w)):
                raise fail(r, f"exception high bits {high} do not fit above width {w}")
            if w < 64:
                us[pos] |= high << w
        ubase = <uint64_t>unzigzag(ubase)
        for i in range(bl):
            out[start + i] = <int64_t>(ubase + us[i])
        start += BLOCK
    return 0


cdef int decode_ints(Reader* r, Py_ssize_t n, bint allow_rle, int64_t* out) except -1:
    cdef int mode = r_byte(r, "integer stream mode")
    cdef Py_ssize_t runs, j, total, ln, lead, i
    cdef uint64_t u
    cdef int64_t d
    cdef int64_t* vals
    cdef int64_t* lens
    if mode == MODE_RLE and allow_rle:
        runs = r_count(r, n, "run count")
        vals = <int64_t*>malloc((runs if runs else 1) * sizeof(int64_t))
        lens = <int64_t*>malloc((runs if runs else 1) * sizeof(int64_t))
        try:
            if vals == NULL or lens == NULL:
                raise MemoryError()
            decode_ints(r, runs, False, vals)
            decode_ints(r, runs, False, lens)
            total = 0
            for j in range(runs):
                if lens[j] < 0 or lens[j] >= n - total:
                    raise fail(r, f"run lengths exceed the {n} values declared")
                ln = lens[j] + 1
                for i in range(ln):
                    out[total + i] = vals[j]
                total += ln
            if total != n:
                raise fail(r, f"runs cover {total} values, {n} declared")
        finally:
            free(vals)
            free(lens)
        return 0
    if mode > 2:
        raise fail(r, f"unknown integer stream mode {mode}")
    lead = mode if mode < n else n
    for i in range(lead):
        r_varint(r, &u, "leading value")
        out[i] = unzigzag(u)
    unpack(r, n - lead, out + lead)
    if mode == 1:
        for i in range(1, n):
            out[i] = <int64_t>(<uint64_t>out[i - 1] + <uint64_t>out[i])
    elif mode == 2 and n >= 2:
        d = out[1]
        out[1] = <int64_t>(<uint64_t>out[0] + <uint64_t>d)
        for i in range(2, n):
            d = <int64_t>(<uint64_t>d + <uint64_t>out[i])
            out[i] = <int64_t>(<uint64_t>out[i - 1] + <uint64_t>d)
    return 0


cdef int decode_f32(Reader* r, Py_ssize_t n, double* out) except -1:
    """floats._decode_f32: order-preserving int32 back to binary32 patterns, widened."""
    cdef int64_t* ords = <int64_t*>malloc(n * sizeof(int64_t))
    cdef Py_ssize_t i
    cdef uint32_t p
    cdef float y
    if ords == NULL:
        raise MemoryError()
    try:
        decode_ints(r, n, True, ords)
        for i in range(n):
            if ords[i] < -<int64_t>0x80000000 or ords[i] > 0x7FFFFFFF:
                raise fail(r, "binary32 pattern outside the signed 32-bit range")
        for i in range(n):
            p = <uint32_t>ords[i] if ords[i] >= 0 else <uint32_t>(0x7FFFFFFF - ords[i])
            memcpy(&y, &p, 4)
            if y != y:
                raise fail(r, "binary32 stream holds a NaN pattern")
            out[i] = <double>y
    finally:
        free(ords)
    return 0


cdef int decode_floats(Reader* r, Py_ssize_t n, double* out, int version) except -1:
    cdef int enc = r_byte(r, "float encoding")
    cdef int spec, e, ctrl, lz, ln, j
    cdef bint f32, mul
    cdef double p
    cdef float y
    cdef Py_ssize_t i, nexc, last, idx
    cdef uint64_t gap, prev = 0, x
    cdef const uint8_t* src
    cdef int64_t* ks
    if enc == 0:
        spec = r_byte(r, "ALP exponent")
        e = spec & 0x3F
        f32 = (spec & 0x80) != 0
        mul = (spec & 0x40) != 0
        if e > MAX_EXP:
            raise fail(r, f"ALP exponent {e} exceeds {MAX_EXP}")
        ks = <int64_t*>malloc(n * sizeof(int64_t))
        if ks == NULL:
            raise MemoryError()
        try:
            decode_ints(r, n, True, ks)
            # One branch-free loop per case (division, not multiplication by 10**-e:
            # k / 10**e is what FORMAT.md 5.1 specifies without the multiply flag).
            if mul:
                p = INV10[e]
                for i in range(n):
                    out[i] = <double>ks[i] * p
            else:
                p = POW10[e]
                for i in range(n):
                    out[i] = <double>ks[i] / p
            if f32:
                for i in range(n):
                    y = <float>out[i]
                    if isinf(y):
                        raise fail(r, "ALP value overflows binary32")
                    out[i] = <double>y
        finally:
            free(ks)
        nexc = r_count(r, n, "ALP exception count")
        last = -1
        for i in range(nexc):
            r_varint(r, &gap, "ALP exception gap")
            if gap >= <uint64_t>(n - last - 1):
                raise fail(r, f"ALP exception position beyond {n} values")
            idx = last + 1 + <Py_ssize_t>gap
            src = r_take(r, 8, "ALP exception value")
            memcpy(&out[idx], src, 8)
            last = idx
        return 0
    if enc == 1:
        for i in range(n):
            ctrl = r_byte(r, "XOR control")
            lz = ctrl >> 4
            ln = ctrl & 0x0F
            if ln == 0:
                if lz:
                    raise fail(r, f"XOR control {ctrl:#04x} has no length")
                memcpy(&out[i], &prev, 8)
                continue
            if lz + ln > 8:
                raise fail(r, f"XOR control {ctrl:#04x} spans more than 8 bytes")
            src = r_take(r, ln, "XOR bytes")
            x = 0
            for j in range(ln):
                x |= (<uint64_t>src[j]) << (8 * j)
            prev ^= x << (8 * (8 - lz - ln))
            memcpy(&out[i], &prev, 8)
        return 0
    if enc == 2 and version >= 2:
        return decode_f32(r, n, out)
    raise fail(r, f"unknown float encoding {enc} in a version {version} batch")


# ---------------------------------------------------------------- batches (reference.py)

cdef list int_list(const int64_t* xs, Py_ssize_t n):
    """xs as a list of ints; a value equal to the one before shares its object."""
    cdef list out = PyList_New(n)
    cdef Py_ssize_t i
    cdef PyObject* o = NULL
    for i in range(n):
        if i and xs[i] == xs[i - 1]:
            incref(o)
        else:
            o = new_long(xs[i])
            if o == NULL:
                raise MemoryError()
        set_item(out, i, o)
    return out


cdef list float_list(const double* xs, Py_ssize_t n):
    """xs as a list of floats; a value bit-identical to the one before shares its object."""
    cdef list out = PyList_New(n)
    cdef Py_ssize_t i
    cdef PyObject* o = NULL
    for i in range(n):
        if i and memcmp(&xs[i], &xs[i - 1], 8) == 0:
            incref(o)
        else:
            o = new_float(xs[i])
            if o == NULL:
                raise MemoryError()
        set_item(out, i, o)
    return out


cdef list bool_list(const int64_t* xs, Py_ssize_t n):
    """xs (all 0 or 1) as a list of bools."""
    cdef list out = PyList_New(n)
    cdef Py_ssize_t i
    cdef PyObject* o
    for i in range(n):
        o = Py_True if xs[i] else Py_False
        incref(o)
        set_item(out, i, o)
    return out


def decode_batch(blob):
    """Decode a batch; CodecError on anything that is not a complete, valid batch."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise CodecError(f"a batch is bytes, got {type(blob).__name__}")
    cdef bytes data = bytes(blob)
    cdef Reader r
    cdef Py_ssize_t count, s, nlen, n, i, prev_n = -1
    cdef uint64_t u
    cdef int kind
    cdef int64_t* ts = NULL
    cdef int64_t* prev_ts = NULL
    cdef int64_t* swap
    cdef int64_t* iv = NULL
    cdef double* fv = NULL
    cdef list vals, tl, prev_tl = None
    if len(data) < 3 or (data[0] != 1 and data[0] != 2):
        got = data[:1].hex() or "nothing"
        raise CodecError(f"not a version 1 or 2 reading batch: first byte is {got}")
    if data[1:3] != b"EC":
        raise CodecError(f"not a reading batch: magic is {data[1:3]!r}, expected {b'EC'!r}")
    r.p = <const uint8_t*>data
    r.pos = 3
    r.end = len(data)
    out = {}
    try:
        count = r_count(&r, r.end - r.pos, "series count")
        for s in range(count):
            nlen = r_count(&r, r.end - r.pos, "series name length")
            r_take(&r, nlen, "series name")
            try:
                name = data[r.pos - nlen:r.pos].decode("utf-8")
            except UnicodeDecodeError:
                raise fail(&r, "series name is not valid UTF-8") from None
            # The limit checked by hand: a message naming the series is built only on failure.
            r_varint(&r, &u, "point count")
            if u > <uint64_t>(MAX_POINTS_PER_BYTE * (r.end - r.pos)):
                raise fail(&r, f"point count of series {name!r} {u} exceeds the limit "
                           f"{MAX_POINTS_PER_BYTE * (r.end - r.pos)}")
            n = <Py_ssize_t>u
            kind = r_byte(&r, "series type")
            if kind > 2:
                raise fail(&r, f"unknown series type {kind} for {name!r}")
            if n == 0:
                vals = []
                tl = []
            else:
                ts = <int64_t*>malloc(n * sizeof(int64_t))
                if ts == NULL:
                    raise MemoryError()
                decode_ints(&r, n, False, ts)
                # Series polled together share their timestamps: reuse the previous
                # series' int objects (in a new list) instead of creating them again.
                if n == prev_n and memcmp(ts, prev_ts, n * sizeof(int64_t)) == 0:
                    tl = prev_tl[:]
                    free(ts)
                else:
                    tl = int_list(ts, n)
                    swap = prev_ts
                    prev_ts, prev_n, prev_tl = ts, n, tl
                    free(swap)
                ts = NULL
                if kind == 2:
                    fv = <double*>malloc(n * sizeof(double))
                    if fv == NULL:
                        raise MemoryError()
                    decode_floats(&r, n, fv, data[0])
                    vals = float_list(fv, n)
                    free(fv)
                    fv = NULL
                else:
                    iv = <int64_t*>malloc(n * sizeof(int64_t))
                    if iv == NULL:
                        raise MemoryError()
                    decode_ints(&r, n, True, iv)
                    if kind == 1:
                        vals = int_list(iv, n)
                    else:
                        for i in range(n):
                            if iv[i] != 0 and iv[i] != 1:
                                raise fail(&r, f"bool series {name!r} holds a value other "
                                           "than 0 or 1")
                        vals = bool_list(iv, n)
                    free(iv)
                    iv = NULL
            if name in out:
                raise fail(&r, f"series {name!r} appears twice")
            out[name] = (tl, vals)
        if r.pos != r.end:
            raise fail(&r, f"{r.end - r.pos} bytes after the last series")
    finally:
        free(ts)
        free(prev_ts)
        free(iv)
        free(fv)
    return out


cdef int64_t* int64_array(str name, str what, list xs) except NULL:
    """xs as int64_t (malloc'd), with the reference's type and range errors."""
    cdef Py_ssize_t n = len(xs), i
    cdef int64_t* out = <int64_t*>malloc((n if n else 1) * sizeof(int64_t))
    if out == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            x = xs[i]
            if not isinstance(x, int) or isinstance(x, bool):
                if what == "timestamp":
                    raise CodecError(f"series {name!r}: timestamp {i} is {type(x).__name__} "
                                     f"{x!r}, expected integer milliseconds")
                raise CodecError(f"series {name!r}: value {i} is {type(x).__name__} {x!r} "
                                 "in a int series; a series holds one type")
            try:
                out[i] = x
            except OverflowError:
                raise CodecError(f"series {name!r}: {what} {i} = {x} is outside the signed "
                                 "64-bit range") from None
    except BaseException:
        free(out)
        raise
    return out


cdef struct LastTimestamps:
    int64_t* t        # the previous series' timestamps (owned), NULL if none
    Py_ssize_t n
    Buf stream        # their encoded stream


cdef int encode_series(object name, object ts, object values, Buf* out,
                       LastTimestamps* last) except -1:
    """reference.encode_series; series sharing the previous one's timestamps share its stream."""
    cdef Py_ssize_t n, i
    cdef int kind
    cdef int64_t* t = NULL
    cdef int64_t* iv = NULL
    cdef double* fv = NULL
    cdef uint64_t* bits = NULL
    if not isinstance(name, str):
        raise CodecError(f"series name {name!r} is {type(name).__name__}, expected str")
    try:
        raw_name = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CodecError(f"series name {name!r} is not encodable as UTF-8: {exc}") from None
    try:
        # Lists are read in place (the reference copies; the values read are the same).
        tlist = ts if type(ts) is list else list(ts)
        vlist = values if type(values) is list else list(values)
    except TypeError:
        raise CodecError(f"series {name!r}: timestamps and values must be sequences") from None
    n = len(tlist)
    try:
        t = int64_array(name, "timestamp", tlist)
        if n != len(vlist):
            raise CodecError(f"series {name!r}: {n} timestamps but {len(vlist)} values")
        kind = 1
        if n:
            first = vlist[0]
            kind = (0 if isinstance(first, bool) else 1 if isinstance(first, int)
                    else 2 if isinstance(first, float) else -1)
            if kind < 0:
                raise CodecError(f"series {name!r}: value 0 is {type(first).__name__}, "
                                 "expected bool, int or float")
        if kind == 0:
            iv = <int64_t*>malloc(n * sizeof(int64_t))
            if iv == NULL:
                raise MemoryError()
            for i in range(n):
                v = vlist[i]
                if not isinstance(v, bool):
                    raise CodecError(f"series {name!r}: value {i} is {type(v).__name__} {v!r} "
                                     "in a bool series; a series holds one type")
                iv[i] = 1 if v else 0
        elif kind == 1:
            for i in range(n):
                v = vlist[i]
                if not isinstance(v, int) or isinstance(v, bool):
                    raise CodecError(f"series {name!r}: value {i} is {type(v).__name__} {v!r} "
                                     "in a int series; a series holds one type")
            iv = int64_array(name, "value", vlist)
        else:
            fv = <double*>malloc(n * sizeof(double))
            bits = <uint64_t*>malloc(n * sizeof(uint64_t))
            if fv == NULL or bits == NULL:
                raise MemoryError()
            for i in range(n):
                v = vlist[i]
                if not isinstance(v, float):
                    raise CodecError(f"series {name!r}: value {i} is {type(v).__name__} {v!r} "
                                     "in a float series; a series holds one type")
                fv[i] = v
                memcpy(&bits[i], &fv[i], 8)
        put_varint(out, <uint64_t>len(raw_name))
        put_mem(out, <const uint8_t*><bytes>raw_name, len(raw_name))
        put_varint(out, <uint64_t>n)
        put_byte(out, <uint8_t>kind)
        if n:
            if n == last.n and memcmp(t, last.t, n * sizeof(int64_t)) == 0:
                put_mem(out, last.stream.p, last.stream.n)
            else:
                last.stream.n = 0
                encode_ints(t, n, False, &last.stream)
                put_mem(out, last.stream.p, last.stream.n)
                free(last.t)
                last.t, last.n = t, n
                t = NULL
            if kind == 2:
                encode_floats(fv, bits, n, out)
            else:
                encode_ints(iv, n, True, out)
    finally:
        free(t)
        free(iv)
        free(fv)
        free(bits)
    return 0


def encode_batch(series):
    """Encode {name: (timestamps_ms, values)} into one batch (version byte first)."""
    cdef Buf out
    cdef LastTimestamps last
    if not isinstance(series, Mapping):
        raise CodecError(f"a batch is a mapping of name to (timestamps, values), "
                         f"got {type(series).__name__}")
    last.t = NULL
    last.n = -1
    buf_init(&last.stream, 64)
    try:
        buf_init(&out, 256)
    except MemoryError:
        free(last.stream.p)
        raise
    try:
        put_mem(&out, <const uint8_t*>HEADER, 3)
        put_varint(&out, <uint64_t>len(series))
        for name, pair in series.items():
            try:
                ts, values = pair
            except (TypeError, ValueError):
                raise CodecError(f"series {name!r}: expected a (timestamps, values) pair") from None
            encode_series(name, ts, values, &out, &last)
        return PyBytes_FromStringAndSize(<char*>out.p, out.n)
    finally:
        free(out.p)
        free(last.t)
        free(last.stream.p)

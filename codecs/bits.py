"""Bit-level primitives of data batch version 3 (codecs/FORMAT.md, section 10.1): a writer and a
bounds-checked reader of MSB-first bit fields, Exp-Golomb codes and length-prefixed numbers.

Every read checks the bits left first and raises CodecError naming the field and the bit
offset, so a hostile length cannot make the reader run past its input or loop for long: a
field is at most 64 bits and an Exp-Golomb prefix at most 64 zeros.
"""

from __future__ import annotations

from edge_agent.codecs.wire import M64, unzigzag, zigzag
from edge_agent.protocol.errors import CodecError

MAX_EG_ZEROS = 64  # an Exp-Golomb code of a value below 2**64 has at most 64 leading zeros


class BitWriter:
    """Appends MSB-first bit fields; ``finish`` pads the last byte with zero bits."""

    __slots__ = ("_acc", "_n", "out")

    def __init__(self) -> None:
        self.out = bytearray()
        self._acc = 0
        self._n = 0

    def bits(self, value: int, width: int) -> None:
        """Append the ``width`` low bits of ``value`` (0 <= value < 2**width)."""
        self._acc = (self._acc << width) | value
        self._n += width
        if self._n >= 64:  # keep the accumulator small: emit the whole bytes
            rest = self._n & 7
            self.out += (self._acc >> rest).to_bytes(self._n >> 3, "big")
            self._acc &= (1 << rest) - 1
            self._n = rest

    def eg(self, x: int) -> None:
        """Order-0 Exp-Golomb code of ``x >= 0``: n zeros, then x + 1 in n + 1 bits."""
        x1 = x + 1
        self.bits(x1, 2 * x1.bit_length() - 1)

    def snum(self, v: int) -> None:
        """A signed 64-bit number: EG(bit length L of its zigzag u), then u's L - 1 low bits."""
        u = zigzag(v)
        n = u.bit_length()
        self.eg(n)
        if n > 1:
            self.bits(u & ((1 << (n - 1)) - 1), n - 1)

    def finish(self) -> bytes:
        """The bytes written, the last one padded with zero bits."""
        if self._n:
            pad = -self._n & 7
            self.out += (self._acc << pad).to_bytes((self._n + pad) >> 3, "big")
            self._acc = self._n = 0
        return bytes(self.out)


class BitReader:
    """Reads MSB-first bit fields from ``data[start:]``; CodecError instead of reading past it."""

    __slots__ = ("base", "data", "end", "pos")

    def __init__(self, data: bytes, start: int = 0) -> None:
        self.data = data
        self.base = start * 8
        self.pos = self.base          # in bits from the start of ``data``
        self.end = len(data) * 8

    @property
    def remaining(self) -> int:
        """Bits not read yet."""
        return self.end - self.pos

    def fail(self, what: str) -> CodecError:
        """A CodecError naming the problem and the bit offset in the batch."""
        return CodecError(f"data batch v3: invalid bits at bit {self.pos} (byte "
                          f"{self.pos >> 3}): {what}")

    def bits(self, width: int, what: str) -> int:
        """Read a ``width``-bit field (0..64 bits)."""
        if width == 0:
            return 0
        if width > self.end - self.pos:
            raise self.fail(f"input ends inside {what}")
        first, stop = self.pos >> 3, (self.pos + width + 7) >> 3
        chunk = int.from_bytes(self.data[first:stop], "big")
        value = (chunk >> (stop * 8 - self.pos - width)) & ((1 << width) - 1)
        self.pos += width
        return value

    def eg(self, what: str) -> int:
        """Read an order-0 Exp-Golomb code (at most 64 leading zeros)."""
        look = min(MAX_EG_ZEROS + 1, self.end - self.pos)
        window = self.bits(look, what) if look else 0
        self.pos -= look
        if window == 0:
            raise self.fail(f"{what}: no terminating bit in {look} bits")
        zeros = look - window.bit_length()
        self.pos += zeros
        return self.bits(zeros + 1, what) - 1

    def count(self, limit: int, what: str) -> int:
        """Read an EG count and refuse it above ``limit``."""
        n = self.eg(what)
        if n > limit:
            raise self.fail(f"{what} {n} exceeds the limit {limit}")
        return n

    def snum(self, what: str) -> int:
        """Read a number written by ``BitWriter.snum`` (a signed 64-bit value)."""
        n = self.eg(f"{what} length")
        if n > 64:
            raise self.fail(f"{what} length {n} exceeds 64 bits")
        if n == 0:
            return 0
        u = (1 << (n - 1)) | self.bits(n - 1, what)
        return unzigzag(u & M64)

    def finish(self, what: str) -> None:
        """Refuse anything but zero padding bits in the last byte after the last field."""
        left = self.end - self.pos
        if left >= 8:
            raise self.fail(f"{left // 8} bytes after {what}")
        if left and self.bits(left, "padding"):
            raise self.fail("padding bits after the last field are not zero")

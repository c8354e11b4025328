"""Byte-level primitives of the batch format: varints, zigzag, and a bounds-checked reader.

FORMAT.md section 2 defines them; every read checks the remaining input first, so a
hostile length can never make the decoder allocate more than the input justifies.
"""

from __future__ import annotations

from edge_agent.protocol.errors import CodecError

M64 = (1 << 64) - 1
I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1
MAX_VARINT_BYTES = 10


def wrap64(v: int) -> int:
    """Reduce an integer modulo 2**64 into the signed 64-bit range (two's complement)."""
    return ((v + (1 << 63)) & M64) - (1 << 63)


def zigzag(v: int) -> int:
    """Map a signed 64-bit integer to unsigned so small magnitudes get small codes."""
    return ((v << 1) ^ (v >> 63)) & M64


def unzigzag(u: int) -> int:
    """Inverse of ``zigzag``."""
    return (u >> 1) ^ -(u & 1)


def varint(u: int) -> bytes:
    """Unsigned LEB128 encoding of ``0 <= u < 2**64``."""
    out = bytearray()
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def varint_len(u: int) -> int:
    """Number of bytes ``varint(u)`` takes."""
    return max(1, (u.bit_length() + 6) // 7)


class Reader:
    """A cursor over the input that raises CodecError instead of reading past the end."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)

    @property
    def remaining(self) -> int:
        """Bytes not consumed yet."""
        return self.end - self.pos

    def fail(self, what: str) -> CodecError:
        """A CodecError that names what was wrong and the byte offset where."""
        return CodecError(f"invalid batch at byte {self.pos}: {what}")

    def byte(self, what: str) -> int:
        """Read one byte; ``what`` names the field for the error message."""
        if self.pos >= self.end:
            raise self.fail(f"input ends before {what}")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def take(self, n: int, what: str) -> bytes:
        """Read ``n`` bytes, checked against the input before slicing."""
        if n > self.end - self.pos:
            raise self.fail(f"{what} needs {n} bytes, only {self.end - self.pos} left")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def varint(self, what: str) -> int:
        """Read an unsigned LEB128 varint of at most 10 bytes and value below 2**64."""
        data, pos, end = self.data, self.pos, self.end
        result = 0
        shift = 0
        for _ in range(MAX_VARINT_BYTES):
            if pos >= end:
                self.pos = pos
                raise self.fail(f"input ends inside {what}")
            b = data[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                self.pos = pos
                if result > M64:
                    raise self.fail(f"{what} exceeds 2**64-1")
                return result
            shift += 7
        self.pos = pos
        raise self.fail(f"{what} is longer than {MAX_VARINT_BYTES} bytes")

    def svarint(self, what: str) -> int:
        """Read a zigzag varint as a signed 64-bit integer."""
        return unzigzag(self.varint(what))

    def count(self, limit: int, what: str) -> int:
        """Read a varint count and reject it above ``limit``."""
        n = self.varint(what)
        if n > limit:
            raise self.fail(f"{what} {n} exceeds the limit {limit}")
        return n

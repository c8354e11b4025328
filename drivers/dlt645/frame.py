"""DL/T 645-2007 frames: encode a request, find and check a reply in a byte stream (pure).

The frame (DL/T 645-2007, 4.2 帧格式)::

    [FE FE FE FE]  68  A0 A1 A2 A3 A4 A5  68  C  L  DATA...  CS  16

* ``FE`` x 0-4: the wake-up preamble (4.3.1 前导字节), sent before a frame to wake the
  meter's receiver; it is not part of the frame and not in the checksum.
* ``68`` (4.2.1 帧起始符) opens the frame and again the control part after the address.
* ``A0..A5`` (4.2.2 地址域): twelve BCD digits, two per byte, the lowest byte first; ``AA``
  in a byte is a wildcard the meter matches whatever its digits are, ``AA`` x 6 the
  broadcast address of the read-address command; ``99`` x 6 is the broadcast of time sync.
* ``C`` (4.2.3 控制码): D7 direction (1 = from the meter), D6 abnormal reply, D5 a follow-up
  frame comes (后续帧), D4..D0 the function.
* ``L`` (4.2.4 数据域长度): bytes of DATA, one byte, so at most 255 (200 for read replies).
* ``DATA`` (4.2.5 数据域): every byte sent with ``0x33`` added, modulo 256, and the 0x33
  taken off again on receipt.
* ``CS`` (4.2.6 校验码): the sum modulo 256 of every byte from the first ``68`` to the end of
  DATA, as sent (after the +0x33).
* ``16`` (4.2.7 结束符) closes the frame.

Multi-byte values inside DATA (data identifiers, BCD numbers) go lowest byte first (4.3.2
传输次序). The decoder raises only ``FrameError`` (a ``DeviceError``), whatever the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.protocol.errors import DeviceError

START = 0x68
END = 0x16
WAKE = 0xFE
PREAMBLE = bytes([WAKE] * 4)  # 4.3.1: the master sends four FE before a frame
DATA_OFFSET = 0x33            # 4.2.5: added to every data byte on the wire
HEADER_BYTES = 10             # 68 + 6 address + 68 + C + L
ENVELOPE_BYTES = HEADER_BYTES + 2  # ... + CS + 16
MAX_DATA = 255                # L is one byte (4.2.4)

# Control code bits (4.2.3).
FROM_METER = 0x80   # D7: 0 master -> meter, 1 meter -> master
ABNORMAL = 0x40     # D6: 1 the meter refuses (异常应答), DATA is one error byte
FOLLOWS = 0x20      # D5: 1 more data follows in follow-up frames (有后续数据)
FUNCTION = 0x1F     # D4..D0

# Function codes (4.2.3) used by the gateway.
READ_DATA = 0x11
READ_FOLLOW = 0x12
READ_ADDRESS = 0x13

BROADCAST_ADDRESS = "AAAAAAAAAAAA"  # 4.2.2: the read-address command's broadcast
ADDRESS_DIGITS = 12

# The error information word of an abnormal reply (错误信息字), bit -> meaning.
ERROR_BITS: tuple[tuple[int, str], ...] = (
    (0x01, "other error"),
    (0x02, "no requested data"),
    (0x04, "password wrong or not authorised"),
    (0x08, "baud rate cannot be changed"),
    (0x10, "too many annual time zones"),
    (0x20, "too many daily time periods"),
    (0x40, "too many tariffs"),
)
NO_REQUESTED_DATA = 0x02


class FrameError(DeviceError):
    """Bytes that are not a valid DL/T 645 frame, or a reply that does not fit its request."""


def error_text(code: int) -> str:
    """The meanings of the bits set in an abnormal reply's error byte."""
    found = [text for bit, text in ERROR_BITS if code & bit]
    return ", ".join(found) or f"error byte {code:#04x} (no defined bit set)"


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: address digits as printed on the meter (highest first), control, plain data."""

    address: str
    control: int
    data: bytes = b""

    @property
    def function(self) -> int:
        """D4..D0 of the control code."""
        return self.control & FUNCTION

    @property
    def from_meter(self) -> bool:
        """D7: sent by a meter."""
        return bool(self.control & FROM_METER)

    @property
    def abnormal(self) -> bool:
        """D6: an abnormal reply (the meter refuses; DATA is the error byte)."""
        return bool(self.control & ABNORMAL)

    @property
    def follows(self) -> bool:
        """D5: the meter has more data for a read-follow-up request."""
        return bool(self.control & FOLLOWS)


def check_address(address: str) -> str:
    """``address`` upper-cased if it is 12 digits (``A`` allowed as a wildcard nibble)."""
    text = address.upper()
    if len(text) != ADDRESS_DIGITS or any(c not in "0123456789A" for c in text):
        raise FrameError(f"address {address!r}: expected 12 decimal digits "
                         "(AA bytes as wildcards)")
    return text


def address_bytes(address: str) -> bytes:
    """The six address bytes as sent: BCD, lowest byte first (4.2.2)."""
    return bytes.fromhex(check_address(address))[::-1]


def checksum(frame_part: bytes) -> int:
    """Sum modulo 256 of the bytes from the first 68 to the end of DATA (4.2.6)."""
    return sum(frame_part) & 0xFF


def scramble(data: bytes) -> bytes:
    """Data as sent: 0x33 added to every byte (4.2.5)."""
    return bytes((b + DATA_OFFSET) & 0xFF for b in data)


def unscramble(data: bytes) -> bytes:
    """Data as meant: 0x33 taken from every byte (4.2.5)."""
    return bytes((b - DATA_OFFSET) & 0xFF for b in data)


def encode_frame(frame: Frame, *, preamble: bytes = PREAMBLE) -> bytes:
    """The bytes of ``frame`` on the wire, after the wake-up preamble."""
    if not 0 <= frame.control <= 0xFF:
        raise FrameError(f"control code {frame.control}: expected 0..255")
    if len(frame.data) > MAX_DATA:
        raise FrameError(f"{len(frame.data)} data bytes: at most {MAX_DATA} fit in L (4.2.4)")
    if len(preamble) > 4 or any(b != WAKE for b in preamble):
        raise FrameError("the preamble is at most four FE bytes (4.3.1)")
    body = (bytes([START]) + address_bytes(frame.address) + bytes([START, frame.control,
                                                                    len(frame.data)])
            + scramble(frame.data))
    return preamble + body + bytes([checksum(body), END])


def di_bytes(di: int) -> bytes:
    """A data identifier DI3 DI2 DI1 DI0 as sent: DI0 first (4.3.2)."""
    if not 0 <= di <= 0xFFFFFFFF:
        raise FrameError(f"data identifier {di:#x}: expected four bytes")
    return di.to_bytes(4, "little")


def read_request(address: str, di: int) -> bytes:
    """Read data (function 11): the data identifier is the whole DATA field."""
    return encode_frame(Frame(address, READ_DATA, di_bytes(di)))


def read_follow_request(address: str, di: int, seq: int) -> bytes:
    """Read follow-up data (function 12): the identifier and the frame's sequence number."""
    return encode_frame(Frame(address, READ_FOLLOW, di_bytes(di) + bytes([seq & 0xFF])))


def read_address_request(address: str = BROADCAST_ADDRESS) -> bytes:
    """Read the communication address (function 13), broadcast or with AA wildcards."""
    return encode_frame(Frame(address, READ_ADDRESS))


@dataclass(frozen=True, slots=True)
class Step:
    """One step through a byte stream: a frame, a rejected candidate, or a need for more bytes.

    ``rest`` is what remains to be searched after this step (the unread tail); with neither
    ``frame`` nor ``rejected`` the stream holds no complete frame yet.
    """

    rest: bytes
    frame: Frame | None = None
    rejected: str | None = None


def _decode_at(buf: bytes, i: int) -> Frame:
    """The frame whose first 68 is ``buf[i]`` and which is complete in ``buf``."""
    length = buf[i + 9]
    end = i + HEADER_BYTES + length
    if buf[end] != checksum(buf[i:end]):
        raise FrameError(f"bad checksum {buf[end]:02X} (expected {checksum(buf[i:end]):02X})")
    if buf[end + 1] != END:
        raise FrameError(f"frame ends with {buf[end + 1]:02X}, not 16 (4.2.7)")
    return Frame(address=buf[i + 1:i + 7][::-1].hex().upper(), control=buf[i + 8],
                 data=unscramble(buf[i + HEADER_BYTES:end]))


def _complete_after(buf: bytes, i: int) -> Step | None:
    """The first whole, valid frame starting after ``buf[i]``, if one has arrived."""
    j = buf.find(START, i + 1)
    while 0 <= j <= len(buf) - ENVELOPE_BYTES:
        end = j + ENVELOPE_BYTES + buf[j + 9]
        if buf[j + 7] == START and end <= len(buf):
            try:
                return Step(rest=buf[end:], frame=_decode_at(buf, j))
            except FrameError:
                pass
        j = buf.find(START, j + 1)
    return None


def next_frame(buf: bytes) -> Step:
    """Find the first frame in ``buf``, skipping noise and the preamble before it.

    A candidate (``68``, six bytes, ``68``) whose checksum or end byte is wrong is rejected
    and the search goes on from the byte after its first ``68``, so a frame hidden behind
    noise that happens to contain ``68`` is still found.
    """
    at = 0
    while True:
        i = buf.find(START, at)
        if i < 0:
            return Step(rest=b"")
        if len(buf) < i + HEADER_BYTES:
            return Step(rest=buf[i:])
        if buf[i + 7] != START:
            at = i + 1
            continue
        if len(buf) < i + ENVELOPE_BYTES + buf[i + 9]:
            # Incomplete, or noise whose "length" runs past what has arrived: a whole
            # frame behind it is taken now rather than after the rest of the bogus length.
            later = _complete_after(buf, i)
            return later if later is not None else Step(rest=buf[i:])
        try:
            frame = _decode_at(buf, i)
        except FrameError as exc:
            return Step(rest=buf[i + 1:], rejected=str(exc))
        return Step(rest=buf[i + ENVELOPE_BYTES + buf[i + 9]:], frame=frame)


def decode_frame(raw: bytes) -> Frame:
    """Decode exactly one frame (preamble allowed); ``FrameError`` says what is wrong."""
    body = raw.lstrip(bytes([WAKE]))
    if len(raw) - len(body) > 4:
        raise FrameError(f"{len(raw) - len(body)} FE bytes before the frame: at most 4 (4.3.1)")
    if len(body) < ENVELOPE_BYTES:
        raise FrameError(f"{len(body)} bytes: a frame has at least {ENVELOPE_BYTES}")
    if body[0] != START or body[7] != START:
        raise FrameError("a frame starts 68, six address bytes, 68 (4.2.1)")
    if len(body) != ENVELOPE_BYTES + body[9]:
        raise FrameError(f"L = {body[9]} but {len(body) - ENVELOPE_BYTES} data bytes")
    return _decode_at(body, 0)

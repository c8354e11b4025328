"""The RS-485 line model of the emulator: who hears which byte when, and what faults do (pure).

A two-wire RS-485 line is one half-duplex medium: one transmitter at a time, every node
hears every byte, and a byte takes one character time (start, data, parity and stop bits
over the baud rate; Modbus over serial line V1.02, 2.5.1) to cross it. The model keeps
that medium's timetable. A frame handed to it at time ``now`` starts when the wire is
free and, for a reply, not before t3.5 plus the device's turnaround after the end of the
request the device heard (a slave answers only after it has seen the request end, 2.5.1.1);
byte i of the frame reaches its listeners at ``start + (i + 1) * char_time``.

The master (the client under test) is heard by every plugged drop (and by itself with
local echo on, as on adapters that do not suppress their own transmission). A drop's
reply is heard by the master only: simulated servers would try to parse another device's
reply as a request, which real devices discard by its address.

Toward the drops the model plays the part of a real slave's receiver: a device takes a
frame when the t3.5 silence after it shows it complete, and throws away a frame whose CRC
fails (2.5.1.1, 2.5.1.2). The simulators (pymodbus servers on PTYs) cannot see silence,
so one garbled frame would leave their parsers misaligned for every frame after it;
instead the model hands each drop whole frames, at the moment their last byte arrives,
and keeps back the frames that fail their CRC (counted in ``discarded_by_devices``).
Toward the master every byte, good or bad, arrives at its own time: the client's
resilience is what the bench tests.

Faults, each drawn from one seeded ``random.Random`` so a run can be replayed:

- ``crc_rate``: share of frames whose CRC is corrupted (one bit of the frame's last byte,
  the CRC high byte, is flipped; 2.5.1.2), in both directions;
- ``drop_rate``: share of bytes lost on the line;
- ``noise(n)``: a burst of n random bytes on the wire, heard by everybody;
- per drop ``latency_s`` (device turnaround) and ``plugged`` (an unplugged drop hears
  nothing and says nothing);
- ``echo``: the master hears its own frames;
- a master whose port is set to another baud rate than the line's garbles every byte it
  sends (what a receiver makes of a wrong-speed signal), so nobody answers it.

The line also carries DL/T 645-2007 (``protocol = "dlt645"``): a frame is then whole when its
checksum and end byte are right (DL/T 645-2007 4.2.6, 4.2.7), and a meter's reply follows
the request after its turnaround alone: DL/T 645 frames carry their length, there is no
t3.5 silence in that protocol.

A "frame" here is what one read() returned from a source: pymodbus writes each frame
with one write(), so the two coincide; if a frame ever arrives split, the fault applies
to a piece of it, which still makes it fail its CRC.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from pymodbus.framer.rtu import FramerRTU

from edge_agent.drivers.dlt645.frame import FrameError, decode_frame

MASTER = "master"
FIXED_GAP_ABOVE_BAUD = 19200
FIXED_T35_S = 0.00175


def crc_ok(frame: bytes) -> bool:
    """True when the frame's last two bytes are the CRC of the rest (serial line 2.5.1.2)."""
    return len(frame) >= 4 and FramerRTU.check_CRC(frame[:-2], (frame[-2] << 8) | frame[-1])


def dlt645_ok(frame: bytes) -> bool:
    """True when ``frame`` is one whole DL/T 645 frame (wake-up bytes allowed)."""
    try:
        decode_frame(frame)
    except FrameError:
        return False
    return True


def char_time_s(baudrate: int, parity: str = "N", stopbits: int = 1) -> float:
    """Seconds per character: start + 8 data + parity + stop bits over the baud rate."""
    return (1 + 8 + (0 if parity == "N" else 1) + stopbits) / baudrate


@dataclass(slots=True)
class Drop:
    """One device's connection to the line."""

    name: str
    plugged: bool = True
    latency_s: float = 0.0
    heard_end: float = 0.0   # when the last master byte reached this drop
    frames_in: int = 0       # frames it heard from the master
    frames_out: int = 0      # reply frames it put on the line
    lost_unplugged: int = 0  # reply frames thrown away while unplugged


@dataclass(slots=True)
class Stats:
    """Counters of the whole line."""

    master_frames: int = 0
    reply_frames: int = 0
    corrupted_requests: int = 0
    corrupted_replies: int = 0
    dropped_bytes: int = 0
    noise_bytes: int = 0
    garbled_frames: int = 0     # sent by a master at the wrong baud rate
    echoed_frames: int = 0
    discarded_by_devices: int = 0  # frames the drops' receivers threw away (bad CRC)
    busy_s: float = 0.0         # wire time occupied, gaps excluded

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready counters."""
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(slots=True)
class Delivery:
    """Bytes a listener receives, each at its due time on the monotonic clock."""

    to: str
    due: list[float]
    data: bytes


@dataclass(slots=True)
class LineModel:
    """The timetable and fault state of one emulated line."""

    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    seed: int = 0
    crc_rate: float = 0.0
    drop_rate: float = 0.0
    echo: bool = False
    protocol: str = "modbus"          # or "dlt645": which frames a device takes as whole
    drops: dict[str, Drop] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    wire_free_at: float = 0.0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @property
    def char_s(self) -> float:
        """One character time at the line's framing."""
        return char_time_s(self.baudrate, self.parity, self.stopbits)

    @property
    def t35_s(self) -> float:
        """The inter-frame silence (serial line V1.02, 2.5.1.1); none in DL/T 645."""
        if self.protocol == "dlt645":
            return 0.0
        return FIXED_T35_S if self.baudrate > FIXED_GAP_ABOVE_BAUD else 3.5 * self.char_s

    def add_drop(self, name: str, latency_s: float = 0.0) -> Drop:
        """Attach a device's drop cable to the line."""
        drop = self.drops[name] = Drop(name, latency_s=latency_s)
        return drop

    def _faults(self, data: bytes) -> tuple[bytes, bool]:
        """Apply byte loss and CRC corruption; returns the bytes and whether CRC was hit."""
        corrupted = False
        if self.crc_rate and data and self.rng.random() < self.crc_rate:
            data = data[:-1] + bytes([data[-1] ^ (1 << self.rng.randrange(8))])
            corrupted = True
        if self.drop_rate:
            kept = bytearray()
            for b in data:
                if self.rng.random() < self.drop_rate:
                    self.stats.dropped_bytes += 1
                else:
                    kept.append(b)
            data = bytes(kept)
        return data, corrupted

    def _occupy(self, start: float, n: int) -> list[float]:
        """Put n characters on the wire from ``start``; their arrival times."""
        char = self.char_s
        self.wire_free_at = start + n * char
        self.stats.busy_s += n * char
        return [start + (i + 1) * char for i in range(n)]

    def from_master(self, data: bytes, now: float, master_baud: int | None = None
                    ) -> list[Delivery]:
        """The master sent ``data`` at ``now`` (its port set to ``master_baud``)."""
        self.stats.master_frames += 1
        if master_baud is not None and master_baud != self.baudrate:
            # A UART sampling at the wrong rate sees framing errors and wrong bits.
            self.stats.garbled_frames += 1
            data = bytes(self.rng.randrange(256) for _ in data)
        else:
            data, corrupted = self._faults(data)
            self.stats.corrupted_requests += corrupted
        if not data:
            return []
        due = self._occupy(max(now, self.wire_free_at), len(data))
        out = []
        whole = [due[-1]] * len(data)  # a receiver takes the frame once it is complete
        good = dlt645_ok(data) if self.protocol == "dlt645" else crc_ok(data)
        if not good:
            self.stats.discarded_by_devices += 1
        for drop in self.drops.values():
            if drop.plugged:
                drop.heard_end = due[-1]
                drop.frames_in += 1
                if good:
                    out.append(Delivery(drop.name, whole, data))
        if self.echo:
            self.stats.echoed_frames += 1
            out.append(Delivery(MASTER, due, data))
        return out

    def from_drop(self, name: str, data: bytes, now: float) -> list[Delivery]:
        """Drop ``name`` replied ``data`` at ``now``."""
        drop = self.drops[name]
        if not drop.plugged:
            drop.lost_unplugged += 1
            return []
        drop.frames_out += 1
        self.stats.reply_frames += 1
        data, corrupted = self._faults(data)
        self.stats.corrupted_replies += corrupted
        if not data:
            return []
        earliest = drop.heard_end + self.t35_s + drop.latency_s
        due = self._occupy(max(now, self.wire_free_at, earliest), len(data))
        return [Delivery(MASTER, due, data)]

    def noise(self, n: int, now: float) -> list[Delivery]:
        """A burst of ``n`` random bytes (a contactor switching next to the cable)."""
        data = bytes(self.rng.randrange(256) for _ in range(n))
        self.stats.noise_bytes += n
        if not data:
            return []
        due = self._occupy(max(now, self.wire_free_at), n)
        # The drops' receivers discard the burst (no valid CRC); the master hears all of it.
        self.stats.discarded_by_devices += 1
        return [Delivery(MASTER, due, data)]

    def settings(self) -> dict[str, object]:
        """The line's current settings, for the control socket and logs."""
        return {"baudrate": self.baudrate, "parity": self.parity, "stopbits": self.stopbits,
                "seed": self.seed, "crc_rate": self.crc_rate, "drop_rate": self.drop_rate,
                "echo": self.echo, "char_time_ms": round(self.char_s * 1000, 4),
                "t35_ms": round(self.t35_s * 1000, 4),
                "drops": {d.name: {"plugged": d.plugged, "latency_ms": d.latency_s * 1000}
                          for d in self.drops.values()}}

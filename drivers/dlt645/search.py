"""Finding the meters on a line whose addresses nobody wrote down (pure: the scan sends).

The read-address command (function 13) sent to ``AAAAAAAAAAAA`` is answered by every meter
on the line with its address. DL/T 645-2007 4.2.2 allows abbreviated addressing (缩位寻址):
some low bytes of the address given, the high bytes filled with ``AA`` as wildcards, and a
meter whose low bytes match answers with its full address. With one meter on the line the
broadcast is the whole search. With several they answer at once and their replies collide
into garbage; then the search fixes the lowest wildcard byte to each of its 100 BCD values
(00-99) and asks again, narrowing byte by byte from the low end, as abbreviated addressing
reads (meters of one block also tend to share their high digits and differ in the low ones):

    AAAAAAAAAAAA -> collision -> AAAAAAAAAA00 .. AAAAAAAAAA99 -> AAAAAAAAAA01 collides
    -> AAAAAAAA0001 .. AAAAAAAA9901 -> each answered by one meter at most

A pattern answered by exactly one clean frame holds exactly that one meter; a silent pattern
holds none; anything else (a garbled frame, two frames, bytes that never made a frame) is
a collision to split further. A pattern with no ``AA`` left that still garbles is reported
as noisy rather than split forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from edge_agent.drivers.dlt645.frame import BROADCAST_ADDRESS, READ_ADDRESS, Frame


class Outcome(StrEnum):
    """What one read-address probe heard."""

    SILENT = "silent"
    ONE = "one"
    COLLISION = "collision"


def classify(pattern: str, frames: Sequence[Frame], rejected: int,
             bytes_seen: int) -> tuple[Outcome, str | None]:
    """(outcome, the address when one meter answered) of a read-address probe of ``pattern``."""
    replies = [f for f in frames if f.from_meter and f.function == READ_ADDRESS
               and not f.abnormal]
    if not replies and not rejected and not bytes_seen:
        return Outcome.SILENT, None
    if len(replies) == 1 and not rejected and matches(pattern, replies[0].address):
        return Outcome.ONE, replies[0].address
    return Outcome.COLLISION, None


def matches(pattern: str, address: str) -> bool:
    """True if ``address`` fits ``pattern`` (``AA`` bytes match anything)."""
    return len(address) == 12 and address.isdigit() and all(
        pattern[i:i + 2] in ("AA", address[i:i + 2]) for i in range(0, 12, 2))


def split(pattern: str) -> list[str]:
    """The 100 patterns with the lowest wildcard byte fixed to 00..99 ([] if none is left)."""
    for i in range(10, -1, -2):  # A0 is the last two digits (4.2.2: sent first)
        if pattern[i:i + 2] == "AA":
            return [f"{pattern[:i]}{n:02d}{pattern[i + 2:]}" for n in range(100)]
    return []


@dataclass(slots=True)
class AddressSearch:
    """The narrowing search's state: patterns still to ask, and what was found."""

    pending: list[str] = field(default_factory=lambda: [BROADCAST_ADDRESS])
    found: list[str] = field(default_factory=list)
    noisy: list[str] = field(default_factory=list)
    probes: int = 0
    collisions: int = 0

    def next_pattern(self) -> str | None:
        """The next pattern to send a read-address to, or None when the search is done."""
        return self.pending.pop(0) if self.pending else None

    def salvage(self, frames: Sequence[Frame]) -> None:
        """Keep the address of any whole read-address reply heard, even for another pattern.

        A meter slower than the scan's wait answers during the next probe; its reply is
        still a meter's address (the checksum vouches for it), so it is not lost.
        """
        for f in frames:
            if f.from_meter and f.function == READ_ADDRESS and not f.abnormal \
                    and f.address.isdigit() and f.address not in self.found:
                self.found.append(f.address)

    def record(self, pattern: str, outcome: Outcome, address: str | None = None) -> None:
        """Take in what the probe of ``pattern`` heard."""
        self.probes += 1
        if outcome is Outcome.ONE and address is not None:
            if address not in self.found:
                self.found.append(address)
        elif outcome is Outcome.COLLISION:
            self.collisions += 1
            narrower = split(pattern)
            if narrower:
                self.pending[:0] = narrower  # depth first: finish one branch at a time
            else:
                self.noisy.append(pattern)

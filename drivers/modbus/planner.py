"""The read planner: from the points due on one device, the fewest Modbus reads.

Pure: points and learned device facts in, ``ReadRequest`` values out; no I/O, no asyncio.

A read covers one contiguous span of one table (coils, discrete inputs, input registers
and holding registers are separate address spaces, Modbus application protocol V1.1b3,
4.3) of at most ``Table.max_read`` items (125 registers or 2000 bits, spec 6.1-6.4).
Neighbouring points are coalesced into one read when the hole between them is at most
``max_gap`` items; hole items are read and thrown away.

``BadRanges`` remembers, per device, what the device has proven it rejects (exception 2,
"illegal data address", spec 7): addresses, and boundaries a read may not cross (some
devices reject a read that spans two internal blocks even when every address is valid).
It learns from replies only, through ``after_reply``, which decides for each reply what
is learned and what must be asked next. The scheduler drives it like this, per device::

    pending = plan_reads(due_points, bad=bad)        # never touches known-bad addresses
    rejected = [p for p in due_points if bad.is_point_bad(p)]
    # report `rejected` as device_exception code 2 without sending anything
    while pending:
        req = pending.pop(0)
        reply = await transport.read_request(unit, req)
        follow = after_reply(bad, req, reply)
        pending[:0] = follow.resend                   # isolate the culprit in this cycle
        # report follow.rejected as device_exception code 2; decode the data of a good
        # reply; comm errors and other exceptions teach nothing about addresses

``split_after_illegal`` halves a rejected read at the hole (or point boundary) nearest
its middle, leaving the hole out of both halves. If both halves are then answered, the
device rejected only the part between them: the hole's addresses are marked bad, or,
for a zero-width hole, the boundary. Every rejected read therefore ends in at least one
new permanent fact, so a device with k bad spots costs at most k failing cascades of
about log2(points) reads each, and then never again.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable
from dataclasses import dataclass, field

from edge_agent.drivers.model import Point, ReadRequest, Table
from edge_agent.drivers.transport import Reply

ILLEGAL_DATA_ADDRESS = 2  # Modbus application protocol V1.1b3, section 7

_Key = tuple[Table, int, int]


def _key(request: ReadRequest) -> _Key:
    return (request.table, request.address, request.count)


@dataclass(slots=True)
class _Split:
    """A rejected read split in two, waiting to hear whether both halves are answered."""

    table: Table
    hole_start: int
    hole_end: int
    waiting: set[_Key] = field(default_factory=set)


class BadRanges:
    """Per-device memory of addresses and read boundaries the device rejects."""

    def __init__(self) -> None:
        # table -> sorted, disjoint, non-adjacent half-open ranges [start, end) of bad addresses
        self._starts: dict[Table, list[int]] = {}
        self._ends: dict[Table, list[int]] = {}
        # table -> sorted addresses c such that no read may contain both c - 1 and c
        self._walls: dict[Table, list[int]] = {}
        self._pending: dict[_Key, _Split] = {}

    @property
    def empty(self) -> bool:
        """True while nothing is learned or pending (plans then depend on the points alone)."""
        return not (any(self._starts.values()) or any(self._walls.values()) or self._pending)

    def contains(self, table: Table, address: int) -> bool:
        """True if the device has proven that ``address`` of ``table`` is illegal."""
        starts = self._starts.get(table)
        if not starts:
            return False
        i = bisect_right(starts, address) - 1
        return i >= 0 and address < self._ends[table][i]

    def _overlaps(self, table: Table, start: int, end: int) -> bool:
        """True if any bad address lies in [start, end)."""
        ends = self._ends.get(table)
        if not ends or start >= end:
            return False
        i = bisect_right(ends, start)  # first range ending after `start`
        return i < len(ends) and self._starts[table][i] < end

    def is_point_bad(self, point: Point) -> bool:
        """True if any of the point's own addresses is proven illegal (report it, don't ask)."""
        return self._overlaps(point.table, point.address, point.end)

    def can_bridge(self, table: Table, hole_start: int, hole_end: int) -> bool:
        """True if one read may run from ``hole_start - 1`` through ``hole_end`` inclusive.

        The hole [hole_start, hole_end) must hold no bad address and no learned boundary may
        lie between the last item before it and the first item after it.
        """
        if hole_end < hole_start:  # overlapping points: nothing between them to bridge
            return True
        if self._overlaps(table, hole_start, hole_end):
            return False
        walls = self._walls.get(table)
        if not walls:
            return True
        i = bisect_left(walls, hole_start)
        return not (i < len(walls) and walls[i] <= hole_end)

    def ranges(self, table: Table) -> list[tuple[int, int]]:
        """The proven-bad address ranges [start, end) of ``table``, in address order."""
        return list(zip(self._starts.get(table, []), self._ends.get(table, []), strict=True))

    def walls(self, table: Table) -> list[int]:
        """Addresses c of ``table`` such that no read may contain both c - 1 and c."""
        return list(self._walls.get(table, []))

    def mark_bad(self, request: ReadRequest) -> None:
        """Record that the device rejects every address of ``request`` (exception 2 on it)."""
        self._forget(_key(request))
        self._add_range(request.table, request.address, request.end)

    def split_after_illegal(self, request: ReadRequest) -> list[ReadRequest]:
        """Split a read rejected with exception 2 in two; [] if it is one point's registers.

        On [] the request cannot be split and is marked bad here (as by ``mark_bad``, which
        may still be called: it is idempotent). Otherwise the scheduler sends both halves
        (before other reads, so the culprit is isolated in this cycle) and reports each
        answered one through ``record_ok`` and each rejected one through this method.
        """
        self._forget(_key(request))
        points = sorted(request.points, key=_by_address)
        best: tuple[int, int] | None = None  # (size of the larger half, index of first right point)
        reach = points[0].end if points else 0
        for i in range(1, len(points)):
            if points[i].address >= reach:  # no point straddles: a clean cut
                larger = max(reach - points[0].address, request.end - points[i].address)
                if best is None or larger < best[0]:
                    best = (larger, i)
            reach = max(reach, points[i].end)
        if best is None:
            self._add_range(request.table, request.address, request.end)
            return []
        left = _request(request.table, points[: best[1]])
        right = _request(request.table, points[best[1]:])
        split = _Split(request.table, left.end, right.address, {_key(left), _key(right)})
        for k in split.waiting:
            self._pending[k] = split
        return [left, right]

    def record_ok(self, request: ReadRequest) -> None:
        """Record that the device answered ``request``; may complete an isolation."""
        if not self._pending:
            return
        k = _key(request)
        split = self._pending.pop(k, None)
        if split is None:
            return
        split.waiting.discard(k)
        if split.waiting:
            return
        # Both halves answered, the whole was rejected: the rejection lies between them.
        if split.hole_start < split.hole_end:
            self._add_range(split.table, split.hole_start, split.hole_end)
        else:
            walls = self._walls.setdefault(split.table, [])
            if split.hole_start not in walls:
                insort(walls, split.hole_start)

    def _forget(self, k: _Key) -> None:
        """Drop the isolation ``k`` belongs to: one of its halves was itself rejected."""
        split = self._pending.pop(k, None)
        if split is not None:
            for other in split.waiting:
                self._pending.pop(other, None)

    def _add_range(self, table: Table, start: int, end: int) -> None:
        merged = [*self.ranges(table), (start, end)]
        merged.sort()
        out: list[tuple[int, int]] = []
        for s, e in merged:
            if out and s <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], e))
            else:
                out.append((s, e))
        self._starts[table] = [s for s, _ in out]
        self._ends[table] = [e for _, e in out]


@dataclass(frozen=True, slots=True)
class FollowUp:
    """What a reply leaves to do: reads to send first, points to report as exception 2."""

    resend: tuple[ReadRequest, ...] = ()
    rejected: tuple[Point, ...] = ()


def after_reply(bad: BadRanges, request: ReadRequest, reply: Reply) -> FollowUp:
    """Learn what ``reply`` to ``request`` proves about the device's addresses; say what next.

    Data completes any isolation ``request`` was part of. Exception 2 to a read of several
    points splits it (``resend``, to be sent before the cycle's other reads); to one point's
    registers it marks them bad (``rejected``). Any other outcome teaches nothing: another
    exception code is about the device's state, not its address map, and silence is not an
    answer. No I/O: the only effect is on ``bad``.
    """
    if reply.data is not None:
        bad.record_ok(request)
        return FollowUp()
    if reply.exception_code != ILLEGAL_DATA_ADDRESS or not request.points:
        return FollowUp()
    parts = bad.split_after_illegal(request)
    if parts:
        return FollowUp(resend=tuple(parts))
    return FollowUp(rejected=request.points)


def _by_address(p: Point) -> tuple[int, int]:
    return (p.address, p.end)


def _request(table: Table, points: list[Point]) -> ReadRequest:
    start = points[0].address
    end = max(p.end for p in points)
    return ReadRequest(table=table, address=start, count=end - start, points=tuple(points))


def plan_reads(points: Iterable[Point], *, max_gap: int = 16,
               bad: BadRanges | None = None) -> list[ReadRequest]:
    """The fewest reads covering ``points`` of one device, ordered by table then address.

    Points whose own addresses ``bad`` knows to be illegal are left out (ask
    ``bad.is_point_bad``); every other point is listed by exactly one request whose span
    contains it whole.
    """
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    by_table: dict[Table, list[Point]] = {}
    for p in points:
        if not 1 <= p.count <= p.table.max_read:
            raise ValueError(
                f"point {p.name!r} ({p.table.value} {p.address}) occupies {p.count} items; "
                f"one read carries 1 to {p.table.max_read}")
        if bad is not None and bad.is_point_bad(p):
            continue
        by_table.setdefault(p.table, []).append(p)
    requests: list[ReadRequest] = []
    for table in Table:
        group = by_table.get(table)
        if group:
            group.sort(key=_by_address)
            requests.extend(_pack(table, group, max_gap, bad))
    return requests


# Why greedy is optimal. Call a span [s, e) feasible if e - s <= max_read, it holds no
# bad address and crosses no wall, and no run of addresses in it that no due point
# occupies is longer than max_gap. Feasibility depends on the span alone and is inherited
# by every sub-span. Sort the points by start; greedy opens a span at the first point p
# and extends it point by point until some point j does not fit. When j fails, j.end is
# beyond the span so far, and [p.start, j.end) is infeasible: too long, or it contains the
# over-long hole, bad address or wall before j (earlier points all end before that hole).
# Take any optimal cover; trim the span covering p to start at p.start (no point starts
# earlier, so it covers the same points). It cannot contain j (its sub-span [p.start,
# j.end) would be feasible), so any point it covers beyond greedy's span starts at or
# after j.start and ends before j.end (else it would contain [p.start, j.end)): it lies
# inside j and is covered by whichever span covers j. Swapping the trimmed span for
# greedy's first span keeps a cover of the same size; repeat on the rest. Greedy's own
# holes are measured between its points only; in its spans those equal the global holes,
# because no earlier point reaches past the start of a later span's first point.
def _pack(table: Table, points: list[Point], max_gap: int,
          bad: BadRanges | None) -> list[ReadRequest]:
    limit = table.max_read
    out: list[ReadRequest] = []
    members = [points[0]]
    start, end = points[0].address, points[0].end
    for p in points[1:]:
        new_end = end if p.end < end else p.end
        if (new_end - start <= limit and p.address - end <= max_gap
                and (bad is None or bad.can_bridge(table, end, p.address))):
            members.append(p)
            end = new_end
        else:
            out.append(ReadRequest(table, start, end - start, tuple(members)))
            members = [p]
            start, end = p.address, p.end
    out.append(ReadRequest(table, start, end - start, tuple(members)))
    return out


def requests_per_cycle(points: Iterable[Point], *, max_gap: int = 16) -> int:
    """How many reads one cycle needs when every point is due (for the config summary)."""
    return len(plan_reads(points, max_gap=max_gap))

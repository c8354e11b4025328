"""Read planner: hand-checked minima, a brute-force optimality check, and BadRanges learning."""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import pairwise

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from edge_agent.drivers.modbus.planner import (
    ILLEGAL_DATA_ADDRESS,
    BadRanges,
    FollowUp,
    after_reply,
    plan_reads,
    requests_per_cycle,
)
from edge_agent.drivers.model import TYPE_LAYOUT, DataType, Point, ReadRequest, Table
from edge_agent.drivers.transport import Reply

SEED = 20240611  # fixed hypothesis / random seed, printed by the property tests
IR, HR, COIL = Table.INPUT_REGISTER, Table.HOLDING_REGISTER, Table.COIL


def pt(address: int, dtype: DataType = DataType.UINT16, table: Table = HR, *,
       count: int | None = None, name: str | None = None, bit: int | None = None) -> Point:
    """A point with the register count its type implies (or ``count`` for strings/bits)."""
    n = count if count is not None else (1 if table.is_bit else TYPE_LAYOUT[dtype][0])
    return Point(name=name or f"{table.value}@{address}", table=table, address=address,
                 type=DataType.BOOL if table.is_bit else dtype, count=n, bit=bit)


def spans(requests: Sequence[ReadRequest]) -> list[tuple[str, int, int]]:
    return [(r.table.value, r.address, r.count) for r in requests]


# --- hand-checked minima -------------------------------------------------------------

SDM630_SPARSE = [0x00, 0x02, 0x04, 0x06, 0x08, 0x0A, 0x0C, 0x0E, 0x10, 0x34, 0x46, 0x48, 0x4A,
                 0x156]


def test_sdm630_full_float_block_is_one_read_plus_total_kwh() -> None:
    points = [pt(a, DataType.FLOAT32, IR) for a in range(0x00, 0x4C, 2)] + [
        pt(0x156, DataType.FLOAT32, IR)]
    plan = plan_reads(points)
    assert spans(plan) == [("input_register", 0, 0x4C), ("input_register", 0x156, 2)]
    assert [len(r.points) for r in plan] == [38, 1]


@pytest.mark.parametrize(("max_gap", "expected"), [
    # 0x00..0x11 | hole 0x12..0x33 (34) | 0x34..0x35 | hole 0x36..0x45 (16) | 0x46..0x4B | 0x156
    (15, [(0, 0x12), (0x34, 2), (0x46, 6), (0x156, 2)]),
    (16, [(0, 0x12), (0x34, 0x18), (0x156, 2)]),
    (33, [(0, 0x12), (0x34, 0x18), (0x156, 2)]),
    (34, [(0, 0x4C), (0x156, 2)]),
    (300, [(0, 0x4C), (0x156, 2)]),  # 0x156 + 2 - 0 = 344 > 125: never one read
])
def test_sdm630_sparse_map_gaps_just_under_and_over(max_gap: int,
                                                    expected: list[tuple[int, int]]) -> None:
    points = [pt(a, DataType.FLOAT32, IR) for a in SDM630_SPARSE]
    plan = plan_reads(points, max_gap=max_gap)
    assert [(r.address, r.count) for r in plan] == expected
    assert requests_per_cycle(points, max_gap=max_gap) == len(expected)


@pytest.mark.parametrize(("second", "reads"), [(17, 1), (18, 2)])
def test_hole_of_exactly_max_gap_is_bridged(second: int, reads: int) -> None:
    # a point at 0 ends at 1; a point at 17 leaves a hole of 16 (addresses 1..16)
    assert len(plan_reads([pt(0), pt(second)], max_gap=16)) == reads


def test_max_gap_zero_still_joins_adjacent_points() -> None:
    assert spans(plan_reads([pt(0), pt(1), pt(3)], max_gap=0)) == [
        ("holding_register", 0, 2), ("holding_register", 3, 1)]


@pytest.mark.parametrize(("n", "reads"), [(125, 1), (126, 2), (250, 2), (251, 3)])
def test_contiguous_registers_split_at_125(n: int, reads: int) -> None:
    plan = plan_reads([pt(a) for a in range(n)])
    assert len(plan) == reads
    assert all(r.count <= 125 for r in plan)
    assert sum(len(r.points) for r in plan) == n


@pytest.mark.parametrize(("n", "reads"), [(2000, 1), (2001, 2)])
def test_contiguous_coils_split_at_2000(n: int, reads: int) -> None:
    plan = plan_reads([pt(a, table=COIL) for a in range(n)])
    assert len(plan) == reads
    assert plan[0].count == min(n, 2000)


def test_tables_are_separate_address_spaces_in_fixed_order() -> None:
    points = [pt(0, table=HR), pt(0, table=IR), pt(1, table=COIL),
              pt(2, table=Table.DISCRETE_INPUT), pt(1, table=HR)]
    assert spans(plan_reads(points)) == [
        ("coil", 1, 1), ("discrete_input", 2, 1), ("input_register", 0, 1),
        ("holding_register", 0, 2)]


def test_overlapping_points_share_one_read_and_all_are_listed() -> None:
    status = [pt(10, DataType.BOOL, bit=b, name=f"bit{b}") for b in range(3)]
    whole = pt(10, name="status")
    twice = pt(10, name="status_again")
    wide = pt(9, DataType.UINT32, name="wide")  # 9..10, overlaps register 10
    plan = plan_reads([*status, whole, twice, wide])
    assert spans(plan) == [("holding_register", 9, 2)]
    assert sorted(p.name for p in plan[0].points) == sorted(
        ["bit0", "bit1", "bit2", "status", "status_again", "wide"])


def test_a_point_is_never_split_even_when_the_next_read_could_start_earlier() -> None:
    # 0..119 single registers, then a 10-register string at 120..129: the string moves whole
    points = [pt(a) for a in range(120)] + [pt(120, DataType.STRING, count=10)]
    plan = plan_reads(points)
    assert spans(plan) == [("holding_register", 0, 120), ("holding_register", 120, 10)]


def test_output_does_not_depend_on_input_order() -> None:
    points = [pt(a, DataType.FLOAT32, IR) for a in SDM630_SPARSE] + [pt(a) for a in (5, 1, 3)]
    shuffled = list(points)
    random.Random(SEED).shuffle(shuffled)
    assert plan_reads(shuffled) == plan_reads(points)


def test_point_wider_than_one_read_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"'huge'.*occupies 126 items; one read carries 1 to 125"):
        plan_reads([pt(0, DataType.STRING, count=126, name="huge")])


def test_bad_address_in_a_hole_splits_the_read() -> None:
    bad = BadRanges()
    bad.mark_bad(ReadRequest(HR, 5, 1, ()))
    assert spans(plan_reads([pt(0, DataType.FLOAT32), pt(6)], bad=bad)) == [
        ("holding_register", 0, 2), ("holding_register", 6, 1)]
    assert bad.contains(HR, 5) and not bad.contains(HR, 4) and not bad.contains(IR, 5)


def test_points_straddling_a_bad_range_are_left_out_and_reported_bad() -> None:
    bad = BadRanges()
    bad.mark_bad(ReadRequest(HR, 5, 2, ()))  # 5, 6
    straddling = [pt(4, DataType.FLOAT32, name="a"), pt(6, DataType.FLOAT32, name="b")]
    fine = [pt(3, name="c"), pt(8, name="d")]
    plan = plan_reads([*straddling, *fine], bad=bad)
    assert spans(plan) == [("holding_register", 3, 1), ("holding_register", 8, 1)]
    assert [bad.is_point_bad(p) for p in straddling + fine] == [True, True, False, False]


# --- brute-force optimality ----------------------------------------------------------

def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _span_ok(s: int, e: int, limit: int, max_gap: int, occupied: list[tuple[int, int]],
             bad: set[int]) -> bool:
    """Feasible span, checked independently: length, no bad address, no long unoccupied run."""
    if e - s > limit or any(s <= b < e for b in bad):
        return False
    cursor = s
    for os_, oe in occupied:
        if oe <= cursor or os_ >= e:
            continue
        if os_ - cursor > max_gap:
            return False
        cursor = max(cursor, oe)
    return e - cursor <= max_gap


def brute_force_minimum(points: list[Point], limit: int, max_gap: int, bad: set[int]) -> int:
    """Fewest feasible spans such that every point lies whole inside one (set cover by DP)."""
    occupied = _merge([(p.address, p.end) for p in points])
    starts = sorted({p.address for p in points})
    ends = sorted({p.end for p in points})
    covers = set()
    for s in starts:
        for e in ends:
            if e > s and _span_ok(s, e, limit, max_gap, occupied, bad):
                mask = sum(1 << i for i, p in enumerate(points) if s <= p.address and p.end <= e)
                if mask:
                    covers.add(mask)
    full = (1 << len(points)) - 1
    inf = len(points) + 1
    best = [0] + [inf] * full
    for m in range(1, full + 1):
        best[m] = min((best[m & ~c] + 1 for c in covers if m & c), default=inf)
    return best[full]


@st.composite
def register_maps(draw: st.DrawFn) -> tuple[Table, list[Point], int, set[int]]:
    table = draw(st.sampled_from([HR, COIL]))
    n = draw(st.integers(1, 8))
    span = 400 if table is HR else 5000
    points = []
    for i in range(n):
        if table.is_bit:
            count = 1
        else:
            count = draw(st.sampled_from([1, 1, 2, 4, draw(st.integers(1, 125))]))
        address = draw(st.integers(0, span - count))
        points.append(Point(name=f"p{i}", table=table, address=address,
                            type=DataType.BOOL if table.is_bit else DataType.UINT16,
                            count=count))
    max_gap = draw(st.integers(0, 60 if table is HR else 800))
    bad = set(draw(st.lists(st.integers(0, span), max_size=3)))
    return table, points, max_gap, bad


@seed(SEED)
@settings(max_examples=400, deadline=None, database=None)
@given(register_maps())
def test_plan_matches_brute_force_minimum_and_respects_limits(
        case: tuple[Table, list[Point], int, set[int]]) -> None:
    print(f"hypothesis seed {SEED}")
    table, points, max_gap, bad_addresses = case
    bad = BadRanges()
    for a in bad_addresses:
        bad.mark_bad(ReadRequest(table, a, 1, ()))
    plan = plan_reads(points, max_gap=max_gap, bad=bad)
    usable = [p for p in points if not any(p.address <= a < p.end for a in bad_addresses)]
    assert [p for p in points if bad.is_point_bad(p)] == [
        p for p in points if p not in usable]

    listed = [p for r in plan for p in r.points]
    assert sorted(listed, key=lambda p: p.name) == sorted(usable, key=lambda p: p.name)
    for r in plan:
        assert r.table is table and 1 <= r.count <= table.max_read
        assert not any(r.address <= a < r.end for a in bad_addresses)
        assert all(r.address <= p.address and p.end <= r.end for p in r.points)
        assert min(p.address for p in r.points) == r.address
        assert max(p.end for p in r.points) == r.end
        # every run of items thrown away inside this read is at most max_gap long
        occupied = _merge([(p.address, p.end) for p in r.points])
        assert all(b[0] - a[1] <= max_gap for a, b in pairwise(occupied))
    assert [r.address for r in plan] == sorted(r.address for r in plan)
    if usable:
        assert len(plan) == brute_force_minimum(usable, table.max_read, max_gap, bad_addresses)
    else:
        assert plan == []


def test_brute_force_sees_what_naive_packing_would_miss() -> None:
    # Sanity of the oracle itself: a map whose minimum is 2 by hand (124 + 2 > 125).
    points = [pt(0, DataType.STRING, count=124), pt(124, DataType.FLOAT32)]
    assert brute_force_minimum(points, 125, 16, set()) == 2
    assert brute_force_minimum([*points[:1], pt(124)], 125, 16, set()) == 1
    assert brute_force_minimum([pt(0), pt(10)], 125, 16, {5}) == 2


# --- BadRanges: learning from a sequence of replies ----------------------------------

class Device:
    """The address rules of a device: illegal addresses, and boundaries it cannot read across."""

    def __init__(self, illegal: set[int], walls: set[int] | None = None) -> None:
        self.illegal = illegal
        self.walls = walls or set()

    def rejects(self, req: ReadRequest) -> bool:
        return (any(req.address <= a < req.end for a in self.illegal)
                or any(req.address < w < req.end for w in self.walls))


def run_cycle(device: Device, points: list[Point], bad: BadRanges, max_gap: int = 16,
              report_ok: bool = True) -> tuple[int, int, dict[str, str]]:
    """One poll cycle driven exactly as the planner's docstring says.

    Returns (reads sent, exception-2 replies, point name -> "good" | "exc2").
    """
    outcome = {p.name: "exc2" for p in points if bad.is_point_bad(p)}
    pending = plan_reads(points, max_gap=max_gap, bad=bad)
    sent = rejected = 0
    while pending:
        req = pending.pop(0)
        sent += 1
        if device.rejects(req):
            rejected += 1
            follow = after_reply(bad, req, EXC2)
            pending[:0] = follow.resend
            outcome.update({p.name: "exc2" for p in follow.rejected})
        else:
            if report_ok:
                assert after_reply(bad, req, data_for(req)) == FollowUp()
            outcome.update({p.name: "good" for p in req.points})
    return sent, rejected, outcome


EXC2 = Reply(exception_code=ILLEGAL_DATA_ADDRESS)


def data_for(req: ReadRequest) -> Reply:
    return Reply(data=[0] * req.count)


def test_after_reply_resends_the_halves_of_a_rejected_read_first() -> None:
    bad = BadRanges()
    whole = plan_reads([pt(0, name="a"), pt(1, name="b"), pt(9, name="c")])[0]
    follow = after_reply(bad, whole, EXC2)
    assert follow.rejected == ()
    assert spans(follow.resend) == [("holding_register", 0, 2), ("holding_register", 9, 1)]
    assert [p.name for r in follow.resend for p in r.points] == ["a", "b", "c"]
    # Both halves answered: the hole between them is what the device rejected.
    for half in follow.resend:
        assert after_reply(bad, half, data_for(half)) == FollowUp()
    assert bad.ranges(HR) == [(2, 9)]


def test_after_reply_reports_one_rejected_points_registers_and_remembers_them() -> None:
    bad = BadRanges()
    single = plan_reads([pt(4, DataType.FLOAT32, name="f")])[0]
    follow = after_reply(bad, single, EXC2)
    assert follow.resend == () and [p.name for p in follow.rejected] == ["f"]
    assert bad.ranges(HR) == [(4, 6)]
    assert plan_reads(single.points, bad=bad) == []


@pytest.mark.parametrize("reply", [
    Reply(exception_code=4),       # device failure: its state, not its address map
    Reply(exception_code=0x0B),    # a gateway's serial device did not answer
    Reply(error="no reply"),
], ids=["exception-4", "gateway-0x0B", "silence"])
def test_after_reply_learns_nothing_from_other_outcomes(reply: Reply) -> None:
    bad = BadRanges()
    whole = plan_reads([pt(0), pt(5)])[0]
    assert after_reply(bad, whole, reply) == FollowUp()
    assert bad.empty


def test_after_reply_to_a_request_without_points_learns_nothing() -> None:
    bad = BadRanges()
    assert after_reply(bad, ReadRequest(HR, 0, 3, ()), EXC2) == FollowUp()
    assert bad.empty


def test_a_rejected_half_drops_the_isolation_it_belonged_to() -> None:
    bad = BadRanges()
    left, right = after_reply(bad, plan_reads([pt(0), pt(1), pt(8), pt(9)])[0], EXC2).resend
    after_reply(bad, left, data_for(left))
    deeper = after_reply(bad, right, EXC2).resend  # the culprit is in the right half
    assert spans(deeper) == [("holding_register", 8, 1), ("holding_register", 9, 1)]
    assert after_reply(bad, deeper[0], data_for(deeper[0])) == FollowUp()
    assert after_reply(bad, deeper[1], data_for(deeper[1])) == FollowUp()
    assert bad.ranges(HR) == [] and bad.walls(HR) == [9]  # not the unproven hole 2..8


def test_bad_address_in_a_coalesced_hole_is_learned_in_one_cycle() -> None:
    points = [pt(0), pt(1), pt(5), pt(6)]  # hole 2..4
    bad = BadRanges()
    device = Device(illegal={3})
    assert run_cycle(device, points, bad) == (3, 1, dict.fromkeys(
        ["holding_register@0", "holding_register@1", "holding_register@5",
         "holding_register@6"], "good"))
    assert bad.ranges(HR) == [(2, 5)]  # the whole hole: the replies only prove "somewhere here"
    assert bad.walls(HR) == []
    sent, rejected, outcome = run_cycle(device, points, bad)
    assert (sent, rejected) == (2, 0)
    assert set(outcome.values()) == {"good"}


def test_bad_point_is_isolated_by_halving_then_never_asked_again() -> None:
    points = [pt(a, name=f"r{a}") for a in range(16)]
    bad = BadRanges()
    device = Device(illegal={11})
    sent, rejected, outcome = run_cycle(device, points, bad)
    # halving 16 points: whole, then 8+8, 4+4, 2+2, 1+1 -> 9 reads, 5 of them rejected
    assert (sent, rejected) == (9, 5)
    assert outcome["r11"] == "exc2"
    assert [n for n, o in outcome.items() if o != "good"] == ["r11"]
    assert bad.ranges(HR) == [(11, 12)]
    assert bad.is_point_bad(points[11]) and not bad.is_point_bad(points[10])
    sent, rejected, outcome = run_cycle(device, points, bad)
    assert (sent, rejected) == (2, 0)  # 0..10 and 12..15: no read touches 11
    assert outcome["r11"] == "exc2" and sum(o == "good" for o in outcome.values()) == 15


def test_block_boundary_is_learned_as_a_wall() -> None:
    points = [pt(98, DataType.FLOAT32, name="a"), pt(100, DataType.FLOAT32, name="b")]
    bad = BadRanges()
    device = Device(illegal=set(), walls={100})
    assert run_cycle(device, points, bad)[:2] == (3, 1)
    assert bad.walls(HR) == [100] and bad.ranges(HR) == []
    assert not bad.can_bridge(HR, 100, 100)
    assert bad.can_bridge(HR, 101, 101) and bad.can_bridge(HR, 98, 99)
    assert run_cycle(device, points, bad)[:2] == (2, 0)


def test_unsplittable_requests_return_no_parts() -> None:
    bad = BadRanges()
    single = plan_reads([pt(7, DataType.FLOAT64)])[0]
    bit_fields = plan_reads([pt(7, DataType.BOOL, bit=b, name=f"b{b}") for b in range(4)])[0]
    nested = plan_reads([pt(7, DataType.UINT64, name="wide"), pt(8, name="inner")])[0]
    assert bad.split_after_illegal(bit_fields) == []
    assert bad.ranges(HR) == [(7, 8)]  # marked by split_after_illegal itself
    bad.mark_bad(bit_fields)  # idempotent
    assert bad.ranges(HR) == [(7, 8)]
    assert bad.split_after_illegal(nested) == []
    assert bad.split_after_illegal(single) == []
    assert bad.ranges(HR) == [(7, 11)]


def test_rejected_half_leaves_the_hole_unproven() -> None:
    points = [pt(0, name="x"), pt(10, name="y")]
    bad = BadRanges()
    whole = plan_reads(points)[0]
    left, right = bad.split_after_illegal(whole)
    assert (left.address, left.count, right.address, right.count) == (0, 1, 10, 1)
    bad.record_ok(left)
    assert bad.split_after_illegal(right) == []  # right is one point: marked bad
    bad.record_ok(ReadRequest(HR, 10, 1, ()))  # a stale reply must not complete the split
    assert bad.ranges(HR) == [(10, 11)]
    assert bad.can_bridge(HR, 1, 11) is False  # a hole 1..10 would hold the bad 10
    assert bad.can_bridge(HR, 1, 10)  # up to 9, then a point at 10 (checked by is_point_bad)


def test_without_record_ok_a_bad_hole_is_never_learned() -> None:
    # The protocol needs the scheduler's success reports: without them every cycle repeats
    # the rejected read and its two halves.
    points = [pt(0), pt(5)]
    bad = BadRanges()
    device = Device(illegal={3})
    for _ in range(3):
        assert run_cycle(device, points, bad, report_ok=False)[:2] == (3, 1)
    assert bad.ranges(HR) == []
    assert run_cycle(device, points, bad)[:2] == (3, 1)
    assert run_cycle(device, points, bad)[:2] == (2, 0)


def test_ranges_merge_and_stay_sorted() -> None:
    bad = BadRanges()
    for a, n in [(20, 2), (5, 1), (6, 3), (21, 4), (40, 1)]:
        bad.mark_bad(ReadRequest(HR, a, n, ()))
    assert bad.ranges(HR) == [(5, 9), (20, 25), (40, 41)]
    assert [bad.contains(HR, a) for a in (4, 5, 8, 9, 24, 25, 40)] == [
        False, True, True, False, True, False, True]


def test_learning_converges_and_is_sound_on_random_devices() -> None:
    print(f"random seed {SEED}")
    rng = random.Random(SEED)
    for _ in range(300):
        n = rng.randint(1, 30)
        points = [pt(a, name=f"p{i}") for i, a in enumerate(rng.sample(range(200), n))]
        illegal = set(rng.sample(range(200), rng.randint(0, 6)))
        device = Device(illegal)
        bad = BadRanges()
        max_gap = rng.randint(0, 20)
        failing_cycles = 0
        for _cycle in range(len(illegal) + 1):
            _, rejected, outcome = run_cycle(device, points, bad, max_gap=max_gap)
            failing_cycles += rejected > 0
        # each failing cycle proves a new illegal address; after that no read is rejected
        assert failing_cycles <= len(illegal)
        assert run_cycle(device, points, bad, max_gap=max_gap)[1] == 0
        for p in points:
            expect = "exc2" if p.address in illegal else "good"
            assert outcome[p.name] == expect, (p, illegal)
        # sound: every learned range holds an address the device really rejects
        assert all(any(s <= a < e for a in illegal) for s, e in bad.ranges(HR))
        assert bad.walls(HR) == []

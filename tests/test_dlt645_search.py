"""The wildcard address search (pure) against lines of meters whose addresses it must find."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.drivers.dlt645.frame import FROM_METER, READ_ADDRESS, Frame
from edge_agent.drivers.dlt645.search import AddressSearch, Outcome, classify, matches, split


def _run(addresses: set[str]) -> AddressSearch:
    """Search a line whose meters answer a pattern as real ones do: alone cleanly, else garbled."""
    search = AddressSearch()
    while (pattern := search.next_pattern()) is not None:
        hit = [a for a in addresses if matches(pattern, a)]
        frames = [Frame(hit[0], FROM_METER | READ_ADDRESS, bytes.fromhex(hit[0])[::-1])] \
            if len(hit) == 1 else []
        outcome, address = classify(pattern, frames, rejected=int(len(hit) > 1),
                                    bytes_seen=24 * len(hit))
        search.record(pattern, outcome, address)
        assert search.probes < 5000
    return search


def test_one_meter_is_found_by_the_broadcast_alone() -> None:
    search = _run({"000102030425"})
    assert search.found == ["000102030425"] and search.probes == 1


def test_collisions_narrow_byte_by_byte_lowest_first() -> None:
    assert split("AAAAAAAAAAAA")[:2] == ["AAAAAAAAAA00", "AAAAAAAAAA01"]
    assert split("AAAAAAAA0017")[99] == "AAAAAA990017"
    assert split("230401000017") == []
    five = {"230401000017", "230401000023", "230401000112", "230402000017", "190000005566"}
    search = _run(five)
    assert sorted(search.found) == sorted(five)
    # root, 100 at the lowest byte, then 100 more per byte the 17s share: 00, then 01/02 split.
    assert search.probes == 1 + 100 + 100 + 100 + 100 and search.collisions == 4


def test_silence_and_garbage_are_told_apart() -> None:
    assert classify("AAAAAAAAAAAA", [], 0, 0) == (Outcome.SILENT, None)
    assert classify("AAAAAAAAAAAA", [], 0, 7)[0] is Outcome.COLLISION  # bytes, no frame
    wrong = Frame("111111111111", FROM_METER | READ_ADDRESS, b"")
    assert classify("AAAAAAAAAA00", [wrong], 0, 20)[0] is Outcome.COLLISION  # does not fit


@settings(max_examples=40, deadline=None)
@given(st.sets(st.text("0123", min_size=12, max_size=12), max_size=6))
def test_the_search_finds_exactly_the_meters_on_the_line(addresses: set[str]) -> None:
    search = _run(addresses)
    assert sorted(search.found) == sorted(addresses) and not search.noisy


def test_a_late_reply_heard_during_another_probe_is_kept() -> None:
    search = AddressSearch()
    late = Frame("230401000017", FROM_METER | READ_ADDRESS, bytes.fromhex("230401000017")[::-1])
    search.salvage([late, Frame("AAAAAAAAAAAA", READ_ADDRESS)])  # a request echo is no meter
    search.salvage([late])
    assert search.found == ["230401000017"]

"""The spool's pure decisions: file layout, admission under the cap, replay pacing."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config.model import SpoolPolicy
from edge_agent.runtime.spool_core import (
    FIXED_PAGES,
    NewBatch,
    RatePacer,
    StoredRow,
    admit,
    integrity_ok,
    layout,
    row_cost,
)

SEED = 4404
print(f"test_spool_core seed {SEED}")

DROP, REJECT = SpoolPolicy.DROP_OLDEST, SpoolPolicy.REJECT_NEW


def rows(*costs: int) -> list[StoredRow]:
    """Stored rows with ids 1.. and 10 readings each."""
    return [StoredRow(i + 1, c, 10) for i, c in enumerate(costs)]


def test_layout_keeps_database_wal_and_index_under_the_cap() -> None:
    for cap in (256 * 1024, 1 << 20, 64 << 20, 256 << 20):
        lay = layout(cap)
        assert 32 * 1024 + 2 * lay.wal_bytes + lay.max_page_count * 4096 <= cap
        assert lay.data_budget == (lay.max_page_count - FIXED_PAGES) * 4096
    big = layout(256 * 1024 * 1024)
    assert big.wal_pages == 1024                      # 4 MiB of WAL at most
    assert big.data_budget > 0.96 * 256 * 1024 * 1024
    with pytest.raises(ValueError, match="no room"):
        layout(64 * 1024)


def test_drop_oldest_evicts_just_enough_of_the_oldest() -> None:
    d = admit([NewBatch(250, 7)], stored=900, budget=1000, policy=DROP,
              oldest=rows(*[100] * 9))
    assert d.accepted == [True]
    assert [r.id for r in d.evict] == [1, 2]
    assert d.stored_after == 950 and d.dropped_batches == 2


def test_reject_new_keeps_the_old_and_refuses_what_does_not_fit() -> None:
    d = admit([NewBatch(50, 7), NewBatch(60, 7), NewBatch(40, 7)], stored=900, budget=1000,
              policy=REJECT, oldest=rows(*[100] * 9))
    assert d.accepted == [True, False, True]
    assert d.evict == [] and d.stored_after == 990 and d.dropped_batches == 1


@pytest.mark.parametrize("policy", [DROP, REJECT])
def test_a_batch_larger_than_the_budget_is_never_stored(policy: SpoolPolicy) -> None:
    d = admit([NewBatch(1001, 5)], stored=0, budget=1000, policy=policy, oldest=[])
    assert d.accepted == [False] and d.evict == [] and d.dropped_batches == 1


def test_new_batches_of_one_group_push_out_each_other_last() -> None:
    d = admit([NewBatch(400, 1), NewBatch(400, 1), NewBatch(400, 1)], stored=200,
              budget=1000, policy=DROP, oldest=rows(200))
    # the stored row goes first, then the oldest new batch of the group
    assert [r.id for r in d.evict] == [1]
    assert d.evict_new == [0] and d.accepted == [True, True, True]
    assert d.stored_after == 800 and d.dropped_batches == 2


def test_the_batch_in_flight_is_never_evicted_so_the_new_one_is_refused() -> None:
    # 900 bytes are in flight (not offered as a candidate): nothing can make room
    d = admit([NewBatch(200, 3)], stored=900, budget=1000, policy=DROP, oldest=[])
    assert d.accepted == [False] and d.dropped_batches == 1


def test_candidates_are_read_only_as_far_as_needed() -> None:
    seen: list[int] = []

    def lazy() -> object:
        for r in rows(*[100] * 1000):
            seen.append(r.id)
            yield r

    admit([NewBatch(150, 1)], stored=1000, budget=1000, policy=DROP, oldest=lazy())  # type: ignore[arg-type]
    assert seen == [1, 2]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 300), max_size=30), st.lists(st.integers(1, 400), max_size=10),
       st.integers(100, 2000), st.sampled_from([DROP, REJECT]))
def test_admission_never_exceeds_the_budget_and_counts_every_drop(
        stored_costs: list[int], new_costs: list[int], budget: int,
        policy: SpoolPolicy) -> None:
    stored_rows = rows(*stored_costs)
    stored = sum(stored_costs)
    d = admit([NewBatch(c, 1) for c in new_costs], stored, max(budget, stored), policy,
              stored_rows)
    budget = max(budget, stored)
    assert d.stored_after <= budget
    kept_new = [c for i, (c, ok) in enumerate(zip(new_costs, d.accepted, strict=True))
                if ok and i not in d.evict_new]
    assert d.stored_after == stored - sum(r.cost for r in d.evict) + sum(kept_new)
    # evictions are a prefix of the oldest rows, and only under drop-oldest
    assert d.evict == stored_rows[:len(d.evict)]
    if policy is REJECT:
        assert d.evict == [] and d.evict_new == []
    assert d.dropped_batches == len(new_costs) - len(kept_new) + len(d.evict)


def test_pacer_holds_the_message_rate() -> None:
    pacer = RatePacer(msgs_per_s=20, bytes_per_s=0, burst_s=0)
    now, sent = 0.0, 0
    while now < 10.0:
        wait = pacer.delay(now)
        if wait:
            now += wait
            continue
        pacer.spend(now, 1000)
        sent += 1
    assert sent == 200  # 20 per second for 10 s


def test_pacer_holds_the_byte_rate_and_allows_a_burst_after_idle() -> None:
    pacer = RatePacer(msgs_per_s=0, bytes_per_s=10_000, burst_s=1.0)
    rng = random.Random(SEED)
    now, sent_bytes = 100.0, 0
    while now < 110.0:
        wait = pacer.delay(now)
        if wait:
            now += wait
            continue
        size = rng.randint(100, 2000)
        pacer.spend(now, size)
        sent_bytes += size
    # 10 s at 10 kB/s plus one second of burst allowance, give or take the last message
    assert 100_000 <= sent_bytes <= 112_000, sent_bytes


def test_integrity_and_cost_helpers() -> None:
    assert integrity_ok([("ok",)])
    assert not integrity_ok([("*** in database main ***",), ("Page 5: btreeInitPage error",)])
    assert row_cost(100) > 100

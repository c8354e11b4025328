"""The pure rollout state machine: waves, deadlines, abort threshold, pause, resume, abort."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from edge_agent.fleet import rollout as ro

T0 = 1_700_000_000_000


def plan(n: int = 100, waves: list[int] | None = None, **kw: Any) -> ro.Plan:
    gws = [f"gw-{i:03d}" for i in range(n)]
    kw.setdefault("revert", {g: "old-bundle" for g in gws})
    return ro.Plan(id="r1", kind="config", version=10, bundle_id="new-bundle", gateways=gws,
                   waves_pct=waves or [1, 10, 50, 100], wave_deadline_s=60,
                   abort_above_pct=kw.pop("abort_above_pct", 20),
                   abort_min_count=kw.pop("abort_min_count", 5), revert_version=11, **kw)


def report_all(state: dict[str, Any], result: str = "applied", version: int = 10,
               only: set[str] | None = None) -> dict[str, Any]:
    reports = [(gw, version, result, "") for gw, st in state["gw"].items()
               if st == ro.OFFERED and (only is None or gw in only)]
    return ro.observe_all(state, reports, T0)


def test_wave_sizes_are_cumulative_and_end_at_everyone() -> None:
    assert plan(100).wave_ends() == [1, 10, 50, 100]
    assert plan(7).wave_ends() == [1, 4, 7]       # 10% of 7 rounds up to 1: merged
    assert plan(1000).wave_ends() == [10, 100, 500, 1000]
    with pytest.raises(ValueError, match="ending at 100"):
        ro.check_plan(plan(10, waves=[10, 50]))
    with pytest.raises(ValueError, match="no target"):
        ro.check_plan(plan(0))


def test_a_clean_rollout_goes_through_every_wave_without_waiting() -> None:
    s = ro.start(plan(100), T0)
    offered = []
    for wave in range(4):
        s, offers = ro.take_outbox(s)
        offered += offers
        assert s["wave"] == wave
        s = ro.tick(report_all(s), T0)  # same instant: no wave waits
    assert s["status"] == ro.SUCCEEDED
    assert [gw for gw, _ in offered] == plan(100).gateways  # each offered exactly once
    assert ro.counts(s) == {ro.APPLIED: 100}
    json.dumps(s)  # persistable as is


def test_failures_above_the_threshold_abort_and_offer_the_previous_config_back() -> None:
    s = ro.start(plan(100), T0)
    s, _ = ro.take_outbox(s)
    s = ro.tick(report_all(s), T0)          # wave 1: 1 gateway applied
    s, wave2 = ro.take_outbox(s)
    bad = {gw for gw, _ in wave2[:3]}       # 3 of 9 fail: 3/10 decided = 30% > 20%
    s = report_all(s, "reverted", only=bad)
    s = report_all(s)
    s = ro.tick(s, T0)
    assert s["status"] == ro.ABORTING and "3 of 10 gateways failed" in s["abort_reason"]
    s, back = ro.take_outbox(s)
    assert {gw for gw, _ in back} == set(plan(100).gateways[:10])
    assert {bid for _, bid in back} == {"old-bundle"}
    # restore reports arrive at the revert version
    s = ro.observe_all(s, [(gw, 11, "applied", "") for gw, _ in back], T0)
    assert ro.counts(s) == {ro.RESTORED: 10, ro.WAITING: 90}
    s = ro.tick(s, T0)
    assert s["status"] == ro.ABORTED and "10 restored, 0 not restored" in s["events"][-1][1]
    assert ro.tick(s, T0 + 10**6) is s  # terminal: nothing moves


def test_a_gateway_silent_after_abort_is_marked_not_restored() -> None:
    s = ro.start(plan(10), T0)
    s = ro.abort(s, T0, "by hand")
    s, back = ro.take_outbox(s)
    s = ro.tick(s, T0 + 10**6)  # not published yet: no deadline runs
    assert s["status"] == ro.ABORTING
    s = ro.published(s, [gw for gw, _ in back], T0)
    s = ro.tick(s, T0 + 59_000)
    assert s["status"] == ro.ABORTING
    s = ro.tick(s, T0 + 60_000)
    assert s["status"] == ro.ABORTED and ro.counts(s)[ro.RESTORE_FAILED] == 1


def test_below_the_minimum_count_a_failure_does_not_abort() -> None:
    s = ro.start(plan(100), T0)
    s, _ = ro.take_outbox(s)
    s = ro.tick(report_all(s, "reverted"), T0)  # 1 of 1 failed, but min count is 5
    assert s["status"] == ro.RUNNING and s["wave"] == 1


def test_silent_gateways_fail_at_the_wave_deadline() -> None:
    s = ro.start(plan(100, abort_above_pct=50), T0)
    s, _ = ro.take_outbox(s)
    s = ro.tick(report_all(s), T0)
    s, wave2 = ro.take_outbox(s)
    s = ro.published(s, [gw for gw, _ in wave2], T0)
    quiet = {gw for gw, _ in wave2[:2]}
    s = report_all(s, only={gw for gw, _ in wave2} - quiet)
    s = ro.tick(s, T0 + 59_000)
    assert s["wave"] == 1  # still waiting for the two
    s = ro.tick(s, T0 + 60_000)
    assert s["wave"] == 2 and all(s["gw"][g] == ro.FAILED for g in quiet)
    assert "no report within 60 s" in s["reasons"][sorted(quiet)[0]]
    # a late "applied" still counts
    s = ro.observe_all(s, [(sorted(quiet)[0], 10, "applied", "")], T0 + 61_000)
    assert s["gw"][sorted(quiet)[0]] == ro.APPLIED


def test_pause_resume_and_abort_by_hand() -> None:
    s = ro.start(plan(100), T0)
    s, _ = ro.take_outbox(s)
    s = ro.pause(s, T0)
    s = ro.tick(report_all(s), T0)
    assert s["status"] == ro.PAUSED and s["wave"] == 0  # no new wave while paused
    with pytest.raises(ValueError, match="paused to paused"):
        ro.pause(s, T0)
    s = ro.tick(ro.resume(s, T0), T0)
    assert s["wave"] == 1
    s = ro.abort(s, T0, "operator saw errors")
    assert s["abort_reason"] == "operator saw errors"
    with pytest.raises(ValueError, match="aborting to running"):
        ro.resume(s, T0)


def test_reports_are_idempotent_and_stale_versions_ignored() -> None:
    s = ro.start(plan(10), T0)
    gw = s["outbox"][0][0]
    assert ro.observe_all(s, [(gw, 9, "applied", "")], T0) is s  # an older version's report
    assert ro.observe_all(s, [("gw-unknown", 10, "applied", "")], T0) is s
    s2 = ro.observe_all(s, [(gw, 10, "applied", "")], T0)
    assert ro.observe_all(s2, [(gw, 10, "applied", "")], T0) is s2


def test_random_outcomes_never_break_the_invariants() -> None:
    seed = 424242
    print(f"rollout fuzz seed {seed}")
    rng = random.Random(seed)
    for _ in range(200):
        n = rng.randint(1, 60)
        s = ro.start(plan(n, abort_above_pct=rng.choice([0, 10, 50, 90]),
                          abort_min_count=rng.randint(1, 10)), T0)
        now = T0
        offered: list[str] = []
        for _step in range(50):
            s, offers = ro.take_outbox(s)
            s = ro.published(s, [gw for gw, _ in offers], now)
            offered += [gw for gw, bid in offers if bid == "new-bundle"]
            reports = [(gw, 10, rng.choice(["applied", "reverted", "rejected"]), "")
                       for gw, st in s["gw"].items() if st == ro.OFFERED and rng.random() < .5]
            s = ro.observe_all(s, reports, now)
            now += rng.choice([0, 30_000, 61_000])
            s = ro.tick(s, now)
            if s["status"] not in ro.ACTIVE:
                break
        assert len(offered) == len(set(offered))  # nobody offered twice
        if s["status"] == ro.SUCCEEDED:
            assert set(s["gw"].values()) <= {ro.APPLIED, ro.FAILED}
        if s["status"] in (ro.ABORTING, ro.ABORTED):
            assert ro.OFFERED not in s["gw"].values() and ro.APPLIED not in s["gw"].values()
        recounted: dict[str, int] = {}
        for st in s["gw"].values():
            recounted[st] = recounted.get(st, 0) + 1
        assert ro.counts(s) == recounted  # the kept counters never drift


def test_the_deadline_runs_from_publication_not_from_the_wave_decision() -> None:
    """An offer published late (a long wave, a starved service) gets its full deadline."""
    s = ro.start(plan(100, waves=[100]), T0)
    s, offers = ro.take_outbox(s)
    gws = [gw for gw, _ in offers]
    s = ro.published(s, gws[:50], T0)
    s = ro.published(s, gws[50:], T0 + 50_000)  # the second half reached the broker 50 s later
    s = ro.tick(report_all(s, only=set(gws[:50])), T0 + 100_000)
    assert s["status"] == ro.RUNNING and ro.counts(s) == {ro.APPLIED: 50, ro.OFFERED: 50}
    s = ro.tick(report_all(s), T0 + 100_001)
    assert s["status"] == ro.SUCCEEDED and ro.counts(s) == {ro.APPLIED: 100}


def test_a_tick_with_nothing_due_changes_nothing() -> None:
    s = ro.start(plan(1000), T0)
    s, offers = ro.take_outbox(s)
    s = ro.published(s, [gw for gw, _ in offers], T0)
    s, changed = ro.take_changes(s)
    assert len(changed) == 1000
    assert ro.tick(s, T0 + 1000) is s and ro.take_changes(s)[1] == []


def test_deadlines_are_judged_at_the_time_the_intake_has_read_up_to() -> None:
    """A report sent before the deadline but not yet read (the service starved or stopped):
    the driver judges at the intake's probe time, which trails, so nobody fails early."""
    s = ro.start(plan(10, waves=[100]), T0)
    s, offers = ro.take_outbox(s)
    s = ro.published(s, [gw for gw, _ in offers], T0)
    late = ro.tick(s, T0 + 600_000, judged_ms=T0 + 59_999)  # intake read up to just before
    assert late["status"] == ro.RUNNING and ro.counts(late) == {ro.OFFERED: 10}
    assert ro.tick(s, T0 + 600_000, judged_ms=0) is s  # no probe back yet: nobody is late
    s = ro.tick(s, T0 + 600_000, judged_ms=T0 + 60_000)
    assert s["status"] == ro.ABORTING and "10 of 10 gateways failed" in s["abort_reason"]

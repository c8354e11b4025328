"""The rollout state machine (pure): waves, deadlines, failure threshold, pause/resume/abort.

State is one JSON-able dict so it persists and resumes after a restart. Functions take a
state and return a new one (an unchanged state is returned as is); offers to publish are queued
in ``state["outbox"]`` as ``[gateway, bundle_id]`` pairs (the driver publishes them and clears
the outbox), so a crash between deciding and publishing re-publishes on resume (a retained
bundle is idempotent).

A wave succeeds when each of its gateways has reported the rollout's version applied (the
gateway commits only after its own health gate) or failed; one that has not reported within the
wave deadline counts as failed, the deadline counted from when its offer was actually published
(``published``), never from when the wave was decided. The rollout aborts when, with at least
``abort_min_count`` outcomes, the failed share exceeds ``abort_above_pct``. On abort
("aborting") every gateway that was offered the new version is offered its previous config back
(pre-signed at start under a newer version, so the gateways' rollback protection accepts it);
the rollout is "aborted" once each of them reported the restore or let one deadline pass after
that offer was published.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

RUNNING, PAUSED, SUCCEEDED = "running", "paused", "succeeded"
ABORTING, ABORTED = "aborting", "aborted"  # aborting: previous configs offered, awaiting reports
TRANSITIONS: dict[str, frozenset[str]] = {
    RUNNING: frozenset({PAUSED, SUCCEEDED, ABORTING}),
    PAUSED: frozenset({RUNNING, ABORTING}),
    ABORTING: frozenset({ABORTED}),
    SUCCEEDED: frozenset(),
    ABORTED: frozenset(),
}
ACTIVE = (RUNNING, PAUSED, ABORTING)
# Cost: every step costs what it changes plus flat copies of the per-gateway maps. Counters are
# kept as gateways move (``counts``), a wave is done when none is left "offered", and deadlines
# are looked at only once the earliest is due, so a rollout's steps cost in proportion to its
# gateways, not to its gateways times its ticks. The gateways changed since the driver last
# wrote are listed in ``dirty`` (``take_changes``): the driver writes only their rows.

# per-gateway status
WAITING, OFFERED, APPLIED, FAILED, REVERTING, RESTORED, RESTORE_FAILED = (
    "waiting", "offered", "applied", "failed", "reverting", "restored", "restore_failed")
SUCCESS_RESULTS = frozenset({"applied", "current"})
# The statuses a report can still move (observe_all): only these gateways' reports are queued
# for their rollouts.
AWAITING_REPORT = (OFFERED, FAILED, REVERTING)
MAX_EVENTS = 100


@dataclass(frozen=True, slots=True)
class Plan:
    """What a rollout does (fixed at start)."""

    id: str
    kind: str
    version: int
    bundle_id: str
    gateways: list[str]                 # in wave order
    waves_pct: list[int]                # cumulative, ending at 100
    wave_deadline_s: float
    abort_above_pct: float
    abort_min_count: int
    revert_version: int = 0
    revert: dict[str, str] = field(default_factory=dict)  # gateway -> bundle id of its previous

    def wave_ends(self) -> list[int]:
        """Cumulative gateway counts at the end of each wave (strictly increasing)."""
        n = len(self.gateways)
        ends: list[int] = []
        for pct in self.waves_pct:
            end = min(n, max(1, math.ceil(pct * n / 100)))
            if not ends or end > ends[-1]:
                ends.append(end)
        if not ends or ends[-1] != n:
            ends.append(n)
        return ends


def check_plan(plan: Plan) -> None:
    """ValueError naming the first thing wrong with a plan."""
    if not plan.gateways:
        raise ValueError("rollout has no target gateways")
    if len(set(plan.gateways)) != len(plan.gateways):
        raise ValueError("rollout lists a gateway twice")
    pcts = plan.waves_pct
    if not pcts or any(not 0 < p <= 100 for p in pcts) or pcts != sorted(set(pcts)) \
            or pcts[-1] != 100:
        raise ValueError(f"waves {pcts}: expected increasing percentages in 1..100 ending at 100")
    if not 0 <= plan.abort_above_pct < 100:
        raise ValueError(f"abort-above {plan.abort_above_pct}: expected 0 <= pct < 100")
    if plan.abort_min_count < 1 or plan.wave_deadline_s <= 0:
        raise ValueError("abort-min must be >= 1 and the wave deadline > 0 s")


def _event(state: dict[str, Any], now_ms: int, text: str) -> None:
    state["events"] = [*state["events"], [now_ms, text]][-MAX_EVENTS:]


def _move(state: dict[str, Any], status: str, now_ms: int, why: str) -> None:
    if status not in TRANSITIONS[state["status"]]:
        raise ValueError(f"rollout {state['plan']['id']}: cannot go from {state['status']} "
                         f"to {status}")
    state["status"] = status
    if status in (SUCCEEDED, ABORTED):
        state["finished_ms"] = now_ms
    _event(state, now_ms, f"{status}: {why}")


# The per-gateway maps: copied (C-level dict copies) rather than deep-copied when a state
# changes, so one step costs what it changes plus a flat copy, never a walk of every value.
_MAPS = ("gw", "reasons", "counts", "sent", "dirty")


def _clone(state: dict[str, Any]) -> dict[str, Any]:
    out = dict(state)
    for key in _MAPS:
        out[key] = dict(state[key])
    out["outbox"] = list(state["outbox"])
    out["events"] = list(state["events"])
    return out


def _set(state: dict[str, Any], gw: str, status: str, why: str | None = None) -> None:
    """Move one gateway (on a cloned state): counters, reason and the changed set follow."""
    old = state["gw"][gw]
    counts_ = state["counts"]
    counts_[old] -= 1
    if not counts_[old]:
        del counts_[old]
    counts_[status] = counts_.get(status, 0) + 1
    state["gw"][gw] = status
    if why is None:
        state["reasons"].pop(gw, None)
    else:
        state["reasons"][gw] = why
    state["dirty"][gw] = True


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A state stored before counters and publication times, in today's shape.

    Offers of such a state count from their wave's start, as they did then.
    """
    if "counts" in state:
        return state
    state = dict(state)
    c: dict[str, int] = {}
    for status in state["gw"].values():
        c[status] = c.get(status, 0) + 1
    state["counts"] = c
    state["sent"] = {gw: state["wave_started_ms"] for gw, st in state["gw"].items()
                     if st in (OFFERED, REVERTING)}
    state["next_due_ms"] = state["wave_started_ms"] + \
        int(plan_of(state).wave_deadline_s * 1000) if state["sent"] else None
    state["dirty"] = {}
    return state


def plan_of(state: dict[str, Any]) -> Plan:
    """The plan stored in a state."""
    return Plan(**state["plan"])


def start(plan: Plan, now_ms: int) -> dict[str, Any]:
    """A new running rollout with its first wave offered."""
    check_plan(plan)
    state: dict[str, Any] = {
        "plan": asdict(plan), "status": RUNNING, "wave": -1, "wave_started_ms": now_ms,
        "gw": dict.fromkeys(plan.gateways, WAITING), "reasons": {}, "outbox": [],
        "events": [], "started_ms": now_ms, "finished_ms": None, "abort_reason": None,
        "counts": {WAITING: len(plan.gateways)}, "sent": {}, "next_due_ms": None,
        "dirty": dict.fromkeys(plan.gateways, True),
    }
    _event(state, now_ms, f"started: {plan.kind} v{plan.version} to {len(plan.gateways)} "
                          f"gateways in waves {plan.wave_ends()}")
    return _next_wave(state, plan, now_ms)


def _next_wave(state: dict[str, Any], plan: Plan, now_ms: int) -> dict[str, Any]:
    ends = plan.wave_ends()
    wave = state["wave"] + 1
    if wave >= len(ends):
        _move(state, SUCCEEDED, now_ms, f"all {len(ends)} waves done")
        return state
    begin = ends[wave - 1] if wave > 0 else 0
    state["wave"] = wave
    state["wave_started_ms"] = now_ms
    for gw in plan.gateways[begin:ends[wave]]:
        _set(state, gw, OFFERED)
        state["outbox"].append([gw, plan.bundle_id])
    _event(state, now_ms, f"wave {wave + 1}/{len(ends)}: offered to {ends[wave] - begin} "
                          f"gateways ({ends[wave]} of {len(plan.gateways)})")
    return state


def published(state: dict[str, Any], gateways: Sequence[str], now_ms: int) -> dict[str, Any]:
    """Note that the offers to ``gateways`` reached the broker at ``now_ms``.

    A gateway's deadline runs from here, not from when its wave was decided: an offer that
    waited behind thousands of others (or behind a starved service) has not been late yet.
    """
    live = [gw for gw in gateways if state["gw"].get(gw) in (OFFERED, REVERTING)]
    if not live:
        return state
    state = _clone(state)
    for gw in live:
        state["sent"][gw] = now_ms
        state["dirty"][gw] = True
    due = now_ms + int(plan_of(state).wave_deadline_s * 1000)
    nxt = state["next_due_ms"]
    state["next_due_ms"] = due if nxt is None else min(nxt, due)
    return state


def observe_all(state: dict[str, Any], reports: Sequence[tuple[str, int | None, str, str]],
                now_ms: int) -> dict[str, Any]:
    """Feed (gateway, version, result, reason) reports, idempotently (the same report twice
    changes nothing; an unchanged state is returned as is). Reports are taken in the order
    given: of two reports of one gateway, the later one decides."""
    plan = state["plan"]
    version, revert_version = plan["version"], plan["revert_version"]
    gw_status = state["gw"]
    out: dict[str, Any] | None = None
    for gateway, rversion, result, reason in reports:
        status = (gw_status if out is None else out["gw"]).get(gateway)
        if status is None or rversion is None:
            continue
        ok = result in SUCCESS_RESULTS
        new = status
        if rversion == version and status in (OFFERED, FAILED) and (ok or status == OFFERED):
            new = APPLIED if ok else FAILED  # a late "applied" overrides a deadline failure
        elif rversion == revert_version and status == REVERTING:
            new = RESTORED if ok else RESTORE_FAILED
        if new != status:
            if out is None:
                out = _clone(state)
            bad = new in (FAILED, RESTORE_FAILED)
            _set(out, gateway, new, f"{result}: {reason}"[:300] if bad else None)
            if not bad:
                out["sent"].pop(gateway, None)
    return state if out is None else out


def counts(state: dict[str, Any]) -> dict[str, int]:
    """How many gateways are in each status (kept as the state changes, not recounted)."""
    return dict(state["counts"])


def _expire(state: dict[str, Any], status: str, to: str, why: str,
            now_ms: int) -> dict[str, Any]:
    """Gateways in ``status`` whose offer was published a deadline ago move to ``to``.

    Looks at the gateways only when the earliest deadline (``next_due_ms``) has come, and
    then notes the next one, so a tick with nothing due costs nothing per gateway.
    """
    due = state["next_due_ms"]
    if due is None or now_ms < due:
        return state
    state = _clone(state)
    deadline_ms = int(plan_of(state).wave_deadline_s * 1000)
    nxt: int | None = None
    for gw, sent in list(state["sent"].items()):
        if state["gw"][gw] != status:
            del state["sent"][gw]
        elif now_ms - sent >= deadline_ms:
            _set(state, gw, to, why)
            del state["sent"][gw]
        else:
            nxt = sent + deadline_ms if nxt is None else min(nxt, sent + deadline_ms)
    state["next_due_ms"] = nxt
    return state


def _finish_abort(state: dict[str, Any], now_ms: int, judged_ms: int) -> dict[str, Any]:
    plan = plan_of(state)
    state = _expire(state, REVERTING, RESTORE_FAILED,
                    f"no report of the previous config within {plan.wave_deadline_s:g} s of "
                    "its offer", judged_ms)
    if state["counts"].get(REVERTING, 0):
        return state
    state = _clone(state)
    c = state["counts"]
    _move(state, ABORTED, now_ms, f"{c.get(RESTORED, 0)} restored, "
                                  f"{c.get(RESTORE_FAILED, 0)} not restored")
    return state


def tick(state: dict[str, Any], now_ms: int, judged_ms: int | None = None) -> dict[str, Any]:
    """Advance on time and outcomes: deadline failures, abort threshold, next wave.

    Deadlines are judged at ``judged_ms`` (default ``now_ms``): the time up to which every
    report sent has been read (the service's intake probe), so a report waiting unread behind
    a slow or stopped service is never taken for a missing one.
    """
    judged = now_ms if judged_ms is None else judged_ms
    if state["status"] == ABORTING:
        return _finish_abort(state, now_ms, judged)
    if state["status"] != RUNNING:
        return state
    plan = plan_of(state)
    state = _expire(state, OFFERED, FAILED,
                    f"no report within {plan.wave_deadline_s:g} s of its offer", judged)
    c = state["counts"]
    failed, decided = c.get(FAILED, 0), c.get(FAILED, 0) + c.get(APPLIED, 0)
    if decided >= plan.abort_min_count and failed * 100 > plan.abort_above_pct * decided:
        return abort(state, now_ms, f"{failed} of {decided} gateways failed "
                                    f"(> {plan.abort_above_pct:g}%)")
    # Only gateways of the waves so far are ever offered: none left offered, the wave is done.
    if not c.get(OFFERED, 0):
        return _next_wave(_clone(state), plan, now_ms)
    return state


def pause(state: dict[str, Any], now_ms: int, why: str = "by hand") -> dict[str, Any]:
    """Stop offering new waves; gateways already offered continue."""
    state = _clone(state)
    _move(state, PAUSED, now_ms, why)
    return state


def resume(state: dict[str, Any], now_ms: int, why: str = "by hand") -> dict[str, Any]:
    """Continue a paused rollout; offers still unanswered get a full deadline again."""
    state = _clone(state)
    _move(state, RUNNING, now_ms, why)
    state["wave_started_ms"] = now_ms
    for gw in state["sent"]:
        state["sent"][gw] = now_ms
        state["dirty"][gw] = True
    if state["sent"]:
        state["next_due_ms"] = now_ms + int(plan_of(state).wave_deadline_s * 1000)
    return state


def abort(state: dict[str, Any], now_ms: int, why: str = "by hand") -> dict[str, Any]:
    """Stop, and offer the previous config back to every gateway offered the new one."""
    state = _clone(state)
    plan = plan_of(state)
    _move(state, ABORTING, now_ms, why)
    state["abort_reason"] = why
    state["wave_started_ms"] = now_ms
    offered_back = 0
    for gw, status in list(state["gw"].items()):
        if status in (OFFERED, APPLIED, FAILED) and gw in plan.revert:
            _set(state, gw, REVERTING)
            state["sent"].pop(gw, None)  # its restore's deadline runs from that offer
            state["outbox"].append([gw, plan.revert[gw]])
            offered_back += 1
    state["next_due_ms"] = None
    _event(state, now_ms, f"previous config offered back to {offered_back} gateways")
    return state


def take_outbox(state: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The state with an empty outbox, and the offers that were in it."""
    offers = [(gw, bid) for gw, bid in state["outbox"]]
    if not offers:
        return state, []
    state = dict(state)
    state["outbox"] = []
    return state, offers


def take_changes(state: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The state with an empty changed set, and the gateways whose rows changed since the
    last take (the driver writes only those)."""
    if not state["dirty"]:
        return state, []
    changed = list(state["dirty"])
    state = dict(state)
    state["dirty"] = {}
    return state, changed


def summary(state: dict[str, Any]) -> dict[str, Any]:
    """A compact view for status displays."""
    plan = plan_of(state)
    return {"id": plan.id, "kind": plan.kind, "version": plan.version, "status": state["status"],
            "wave": state["wave"] + 1, "waves": len(plan.wave_ends()),
            "gateways": len(plan.gateways), "counts": counts(state),
            "abort_reason": state["abort_reason"], "started_ms": state["started_ms"],
            "finished_ms": state["finished_ms"]}

"""The rollout state machine (pure): waves, deadlines, failure threshold, pause/resume/abort.

State is one JSON-able dict so it persists as one row and resumes after a restart. Functions
take a state and return a new one; offers to publish are queued in ``state["outbox"]`` as
``[gateway, bundle_id]`` pairs (the driver publishes them and clears the outbox), so a crash
between deciding and publishing re-publishes on resume (a retained bundle is idempotent).

A wave succeeds when each of its gateways has reported the rollout's version applied (the
gateway commits only after its own health gate) or failed; one that has not reported by the
wave deadline counts as failed. The rollout aborts when, with at least ``abort_min_count``
outcomes, the failed share exceeds ``abort_above_pct``. On abort ("aborting") every gateway that was
offered the new version is offered its previous config back (pre-signed at start under a newer
version, so the gateways' rollback protection accepts it); the rollout is "aborted" once each of
them reported the restore or one wave deadline passed.
"""

from __future__ import annotations

import copy
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

# per-gateway status
WAITING, OFFERED, APPLIED, FAILED, REVERTING, RESTORED, RESTORE_FAILED = (
    "waiting", "offered", "applied", "failed", "reverting", "restored", "restore_failed")
SUCCESS_RESULTS = frozenset({"applied", "current"})
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
        state["gw"][gw] = OFFERED
        state["outbox"].append([gw, plan.bundle_id])
    _event(state, now_ms, f"wave {wave + 1}/{len(ends)}: offered to {ends[wave] - begin} "
                          f"gateways ({ends[wave]} of {len(plan.gateways)})")
    return state


def observe_all(state: dict[str, Any], reports: Sequence[tuple[str, int | None, str, str]],
                now_ms: int) -> dict[str, Any]:
    """Feed (gateway, version, result, reason) reports, idempotently (the same report twice
    changes nothing; an unchanged state is returned as is)."""
    plan = plan_of(state)
    changes: dict[str, tuple[str, str | None]] = {}
    for gateway, version, result, reason in reports:
        status = state["gw"].get(gateway)
        if status is None or version is None:
            continue
        ok = result in SUCCESS_RESULTS
        new = status
        if version == plan.version and status in (OFFERED, FAILED) and (ok or status == OFFERED):
            new = APPLIED if ok else FAILED  # a late "applied" overrides a deadline failure
        elif version == plan.revert_version and status == REVERTING:
            new = RESTORED if ok else RESTORE_FAILED
        if new != status:
            bad = new in (FAILED, RESTORE_FAILED)
            changes[gateway] = (new, f"{result}: {reason}"[:300] if bad else None)
    if not changes:
        return state
    state = copy.deepcopy(state)
    for gateway, (new, why) in changes.items():
        state["gw"][gateway] = new
        if why is None:
            state["reasons"].pop(gateway, None)
        else:
            state["reasons"][gateway] = why
    return state


def counts(state: dict[str, Any]) -> dict[str, int]:
    """How many gateways are in each status."""
    out: dict[str, int] = {}
    for status in state["gw"].values():
        out[status] = out.get(status, 0) + 1
    return out


def _finish_abort(state: dict[str, Any], now_ms: int) -> dict[str, Any]:
    plan = plan_of(state)
    waiting = [gw for gw, st in state["gw"].items() if st == REVERTING]
    if waiting and now_ms - state["wave_started_ms"] < plan.wave_deadline_s * 1000:
        return state
    state = copy.deepcopy(state)
    for gw in waiting:
        state["gw"][gw] = RESTORE_FAILED
        state["reasons"][gw] = f"no report of the previous config within {plan.wave_deadline_s:g} s"
    c = counts(state)
    _move(state, ABORTED, now_ms, f"{c.get(RESTORED, 0)} restored, "
                                  f"{c.get(RESTORE_FAILED, 0)} not restored")
    return state


def tick(state: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """Advance on time and outcomes: deadline failures, abort threshold, next wave."""
    if state["status"] == ABORTING:
        return _finish_abort(state, now_ms)
    if state["status"] != RUNNING:
        return state
    state = copy.deepcopy(state)
    plan = plan_of(state)
    ends = plan.wave_ends()
    in_wave = plan.gateways[:ends[state["wave"]]]
    if now_ms - state["wave_started_ms"] >= plan.wave_deadline_s * 1000:
        for gw in in_wave:
            if state["gw"][gw] == OFFERED:
                state["gw"][gw] = FAILED
                state["reasons"][gw] = f"no report within {plan.wave_deadline_s:g} s"
    c = counts(state)
    failed, decided = c.get(FAILED, 0), c.get(FAILED, 0) + c.get(APPLIED, 0)
    if decided >= plan.abort_min_count and failed * 100 > plan.abort_above_pct * decided:
        return abort(state, now_ms, f"{failed} of {decided} gateways failed "
                                    f"(> {plan.abort_above_pct:g}%)")
    if all(state["gw"][gw] in (APPLIED, FAILED) for gw in in_wave):
        return _next_wave(state, plan, now_ms)
    return state


def pause(state: dict[str, Any], now_ms: int, why: str = "by hand") -> dict[str, Any]:
    """Stop offering new waves; gateways already offered continue."""
    state = copy.deepcopy(state)
    _move(state, PAUSED, now_ms, why)
    return state


def resume(state: dict[str, Any], now_ms: int, why: str = "by hand") -> dict[str, Any]:
    """Continue a paused rollout; the current wave's deadline starts again."""
    state = copy.deepcopy(state)
    _move(state, RUNNING, now_ms, why)
    state["wave_started_ms"] = now_ms
    return state


def abort(state: dict[str, Any], now_ms: int, why: str = "by hand") -> dict[str, Any]:
    """Stop, and offer the previous config back to every gateway offered the new one."""
    state = copy.deepcopy(state)
    plan = plan_of(state)
    _move(state, ABORTING, now_ms, why)
    state["abort_reason"] = why
    state["wave_started_ms"] = now_ms  # the restore reports get one wave deadline
    offered_back = 0
    for gw, status in state["gw"].items():
        if status in (OFFERED, APPLIED, FAILED) and gw in plan.revert:
            state["gw"][gw] = REVERTING
            state["outbox"].append([gw, plan.revert[gw]])
            offered_back += 1
    _event(state, now_ms, f"previous config offered back to {offered_back} gateways")
    return state


def take_outbox(state: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The state with an empty outbox, and the offers that were in it."""
    offers = [(gw, bid) for gw, bid in state["outbox"]]
    if not offers:
        return state, []
    state = copy.deepcopy(state)
    state["outbox"] = []
    return state, offers


def summary(state: dict[str, Any]) -> dict[str, Any]:
    """A compact view for status displays."""
    plan = plan_of(state)
    return {"id": plan.id, "kind": plan.kind, "version": plan.version, "status": state["status"],
            "wave": state["wave"] + 1, "waves": len(plan.wave_ends()),
            "gateways": len(plan.gateways), "counts": counts(state),
            "abort_reason": state["abort_reason"], "started_ms": state["started_ms"],
            "finished_ms": state["finished_ms"]}

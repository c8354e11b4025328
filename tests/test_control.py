"""The gateway control plane: stages, journal, recovery, and the async shell with fake callables
standing for the agent (validate, dry-run, switch, healthy) on a fake clock."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path

import pytest

from edge_agent.control.journal import Journal, Stage, Trial, recover
from edge_agent.control.plane import ControlPlane
from edge_agent.control.truststore import load_trust, save_trust
from edge_agent.protocol.bundle import make_bundle, root_signed, sign_envelope
from edge_agent.protocol.clock import FakeClock
from edge_agent.protocol.errors import ConfigError, DeviceError
from edge_agent.protocol.keys import PrivateKey
from edge_agent.protocol.trust import TrustedState
from edge_agent.protocol.verify import Bundle

SEED = 11
print(f"test_control: key seed {SEED}")
NOW = 1_700_000_000


def key(name: str) -> PrivateKey:
    return PrivateKey(hashlib.sha256(f"{SEED}/{name}".encode()).digest())


ROOT_KEYS = [key("r1"), key("r2")]
RELEASE = key("release")
ROOT = sign_envelope(root_signed(1, [k.public for k in ROOT_KEYS], 2, [RELEASE.public], 1,
                                 issued=NOW - 10, expires=NOW + 10**7), ROOT_KEYS)


def config_bundle(version: int, payload: bytes, gw: str = "gw-a") -> bytes:
    return make_bundle("config", version, payload, [RELEASE], issued=NOW - 5,
                       expires=NOW + 3600, gateways=[gw])


class FakeAgent:
    """Records what the control plane asked of the agent; failures are switched on by tests."""

    def __init__(self) -> None:
        self.running = "local"
        self.switches: list[str] = []
        self.dry_runs: list[str] = []
        self.health_checks = 0
        self.fail_health_at: int | None = None
        self.fail_dry_run = False

    def validate(self, payload: bytes) -> str:
        text = payload.decode()
        if not text.startswith("cfg:"):
            raise ConfigError(f"payload {text[:10]!r} is not a config")
        return text

    async def dry_run(self, cfg: str) -> None:
        self.dry_runs.append(cfg)
        if self.fail_dry_run:
            raise DeviceError("device meter (unit 1) did not answer")

    async def switch(self, cfg: str) -> None:
        self.switches.append(cfg)
        self.running = cfg

    async def healthy(self) -> tuple[bool, str]:
        self.health_checks += 1
        if self.fail_health_at is not None and self.health_checks >= self.fail_health_at:
            return False, "device meter not polled"
        return True, "ok"


def plane(tmp: Path, agent: FakeAgent, clock: FakeClock, hold_s: float = 10) -> ControlPlane[str]:
    return ControlPlane(tmp, validate=agent.validate, dry_run=agent.dry_run,
                        switch=agent.switch, healthy=agent.healthy, hold_s=hold_s,
                        check_every_s=1.0, clock=clock, fsync=False)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    save_trust(tmp_path, TrustedState("gw-a", "north", (), ROOT))
    return tmp_path


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_transition_table_refuses_illegal_moves() -> None:
    b = Bundle("config", 3, NOW, NOW + 1, "ab", b"", {})
    j = Journal().advance(Stage.VERIFIED, b)
    with pytest.raises(ValueError, match="verified -> switched"):
        j.advance(Stage.SWITCHED)
    with pytest.raises(ValueError, match="None -> committed"):
        Journal().commit()
    j = j.advance(Stage.VALIDATED).advance(Stage.DRY_RUN_OK).advance(Stage.SWITCHED)
    assert j.commit() == Journal(3, "ab")


def test_recover_reverts_a_switched_trial_and_drops_an_earlier_one() -> None:
    j = Journal(2, "old", Trial(3, "new", NOW, Stage.SWITCHED))
    after, report = recover(j)
    assert after.trial is None and after.good_version == 2
    assert report is not None and report["result"] == "reverted" and report["version"] == 3
    after, report = recover(Journal(2, "old", Trial(3, "new", NOW, Stage.VALIDATED)))
    assert after.trial is None and report is not None and report["result"] == "dry_run_failed"
    assert recover(Journal(2, "old")) == (Journal(2, "old"), None)


def test_happy_path_commits_after_the_health_gate(state: Path) -> None:
    agent, clock = FakeAgent(), FakeClock(NOW)
    cp = plane(state, agent, clock)
    report = asyncio.run(cp.offer(config_bundle(4, b"cfg:four"), "local"))
    assert report["result"] == "applied" and report["version"] == 4, report
    assert agent.switches == ["cfg:four"]
    assert agent.health_checks == 11  # t = 0..10 s, every second, all healthy
    assert load_trust(state).floor("config") == 4
    assert (state / "config.good").read_bytes() == b"cfg:four"
    # The retained bundle delivered again (reconnect) is "current": nothing happens.
    again = asyncio.run(cp.offer(config_bundle(4, b"cfg:four"), "cfg:four"))
    assert again["result"] == "current" and agent.switches == ["cfg:four"]


def test_rejected_bundle_changes_nothing(state: Path) -> None:
    agent, clock = FakeAgent(), FakeClock(NOW)
    cp = plane(state, agent, clock)
    before = snapshot(state)
    report = asyncio.run(cp.offer(config_bundle(4, b"cfg:x", gw="gw-b"), "local"))
    assert report["result"] == "rejected" and "does not target" in report["reason"]
    assert snapshot(state) == before and agent.switches == [] and agent.dry_runs == []


def test_refusals_are_counted_in_health_and_logged_once_then_summarised(
        state: Path, caplog: pytest.LogCaptureFixture) -> None:
    agent, clock = FakeAgent(), FakeClock(NOW)
    cp = plane(state, agent, clock)
    hostile = [config_bundle(4, b"cfg:x", gw="gw-b"), b"not a bundle", b"\xff" * 40]

    async def offer_all(n: int) -> None:
        for i in range(n):
            await cp.offer(hostile[i % len(hostile)], "local")

    with caplog.at_level(logging.WARNING, logger="edge_agent.control.plane"):
        asyncio.run(offer_all(300))
    firsts = [r for r in caplog.records if "rejected (unverified)" in r.getMessage()]
    assert len(firsts) == 1 and len(caplog.records) == 1, [r.getMessage() for r in
                                                           caplog.records]
    health = cp.health()
    assert health["offered"] == 300 and health["by_result"] == {"rejected": 300}, health
    assert health["rejected_by_reason"] == {"unverified": 300}, health
    assert health["committed"] == 0 and health["trial"] is None
    # A minute later the 299 counted since are summarised in one line, at the next health.
    caplog.clear()
    clock.advance(61)
    with caplog.at_level(logging.WARNING, logger="edge_agent.control.plane"):
        assert cp.health()["offered"] == 300
        assert cp.health()["offered"] == 300  # nothing new: no second summary
    assert [r.getMessage().split(" in the last")[0] for r in caplog.records] == [
        "config bundles: 299 more 'unverified' rejections"]
    # A genuine bundle still applies, and is counted as such.
    asyncio.run(cp.offer(config_bundle(4, b"cfg:four"), "local"))
    assert cp.health()["by_result"] == {"applied": 1, "rejected": 300}
    # The same failed version offered again is refused under its own reason.
    agent.fail_dry_run = True
    asyncio.run(cp.offer(config_bundle(5, b"cfg:five"), "cfg:four"))
    asyncio.run(cp.offer(config_bundle(5, b"cfg:five"), "cfg:four"))
    assert cp.health()["rejected_by_reason"] == {"already_failed": 1, "unverified": 300}


@pytest.mark.parametrize("payload, result", [(b"garbage", "invalid"),
                                             (b"cfg:needs-devices", "dry_run_failed")])
def test_invalid_or_failed_dry_run_is_never_switched(state: Path, payload: bytes,
                                                     result: str) -> None:
    agent, clock = FakeAgent(), FakeClock(NOW)
    agent.fail_dry_run = True
    cp = plane(state, agent, clock)
    report = asyncio.run(cp.offer(config_bundle(5, payload), "local"))
    assert report["result"] == result, report
    assert agent.switches == [] and load_trust(state).floor("config") == 0
    assert not (state / "config.good").exists()


def test_health_gate_failure_reverts_and_is_not_retried(state: Path) -> None:
    agent, clock = FakeAgent(), FakeClock(NOW)
    cp = plane(state, agent, clock)
    assert asyncio.run(cp.offer(config_bundle(4, b"cfg:four"), "local"))["result"] == "applied"
    agent.fail_health_at = agent.health_checks + 4
    report = asyncio.run(cp.offer(config_bundle(5, b"cfg:five"), "cfg:four"))
    assert report["result"] == "reverted" and "check 4" in report["reason"], report
    assert agent.switches == ["cfg:four", "cfg:five", "cfg:four"]
    assert agent.running == "cfg:four"
    assert load_trust(state).floor("config") == 4
    assert (state / "config.good").read_bytes() == b"cfg:four"
    # The same retained bundle again: remembered as failed, not applied a second time.
    again = asyncio.run(cp.offer(config_bundle(5, b"cfg:five"), "cfg:four"))
    assert again["result"] == "rejected" and "already failed" in again["reason"]
    assert agent.switches == ["cfg:four", "cfg:five", "cfg:four"]


def test_previous_config_offered_back_under_a_new_version(state: Path) -> None:
    agent, clock = FakeAgent(), FakeClock(NOW)
    cp = plane(state, agent, clock)
    asyncio.run(cp.offer(config_bundle(4, b"cfg:four"), "local"))
    asyncio.run(cp.offer(config_bundle(5, b"cfg:five"), "cfg:four"))
    report = asyncio.run(cp.offer(config_bundle(6, b"cfg:four"), "cfg:five"))
    assert report["result"] == "applied" and load_trust(state).floor("config") == 6
    assert agent.switches[-1] == "cfg:four"
    # ...and a gateway that already runs that payload only moves its floor.
    n = len(agent.switches)
    report = asyncio.run(cp.offer(config_bundle(7, b"cfg:four"), "cfg:four"))
    assert report["result"] == "applied" and "same config" in report["reason"]
    assert len(agent.switches) == n and load_trust(state).floor("config") == 7


def test_boot_after_a_crash_in_the_health_gate_reverts(state: Path) -> None:
    agent, clock = FakeAgent(), FakeClock(NOW)
    cp = plane(state, agent, clock)
    asyncio.run(cp.offer(config_bundle(4, b"cfg:four"), "local"))

    async def crash_during_hold() -> None:
        # The gate never finishes: the process "dies" while the trial is switched in.
        agent.fail_health_at = None
        task = asyncio.ensure_future(cp.offer(config_bundle(5, b"cfg:five"), "cfg:four"))
        while json.loads((state / "config-control.json").read_bytes())["trial"] is None:
            await asyncio.sleep(0)
        task.cancel()

    cp.hold_s = 10**6
    asyncio.run(crash_during_hold())
    journal = json.loads((state / "config-control.json").read_bytes())
    assert journal["trial"]["stage"] == "switched"
    restarted = plane(state, FakeAgent(), clock)
    good, report = restarted.boot()
    assert good == b"cfg:four"
    assert report is not None and report["result"] == "reverted" and report["version"] == 5
    assert load_trust(state).floor("config") == 4
    assert restarted.journal.trial is None


def test_crash_between_journal_commit_and_floor_is_healed(state: Path) -> None:
    agent, clock = FakeAgent(), FakeClock(NOW)
    sha = hashlib.sha256(b"cfg:four").hexdigest()
    (state / "config.good").write_bytes(b"cfg:four")
    (state / "config-control.json").write_text(json.dumps(Journal(4, sha).to_json()))
    cp = plane(state, agent, clock)
    report = asyncio.run(cp.offer(config_bundle(4, b"cfg:four"), "cfg:four"))
    assert report["result"] == "applied" and agent.switches == []
    assert load_trust(state).floor("config") == 4


def test_a_newer_root_is_kept_even_when_the_config_fails(state: Path) -> None:
    new_release = key("release-2")
    root2 = sign_envelope(root_signed(2, [k.public for k in ROOT_KEYS], 2,
                                      [new_release.public], 1, issued=NOW - 1,
                                      expires=NOW + 10**7), ROOT_KEYS)
    blob = make_bundle("config", 4, b"garbage", [new_release], issued=NOW, expires=NOW + 60,
                       gateways=["gw-a"], roots=[root2])
    cp = plane(state, FakeAgent(), FakeClock(NOW))
    assert asyncio.run(cp.offer(blob, "local"))["result"] == "invalid"
    assert load_trust(state).root_version == 2  # the old release key is now revoked here
    old = asyncio.run(cp.offer(config_bundle(5, b"cfg:five"), "local"))
    assert old["result"] == "rejected" and "0 valid signatures" in old["reason"]


def test_trust_file_is_0600(state: Path) -> None:
    assert (state / "trust.json").stat().st_mode & 0o777 == 0o600
    cp = plane(state, FakeAgent(), FakeClock(NOW))
    asyncio.run(cp.offer(config_bundle(4, b"cfg:four"), "local"))
    for name in ("trust.json", "config-control.json", "config.good"):
        assert (state / name).stat().st_mode & 0o777 == 0o600, name


class HangingAgent(FakeAgent):
    """A switch to any config named in ``hang_on`` never completes (a stop that hangs)."""

    def __init__(self, *hang_on: str) -> None:
        super().__init__()
        self.hang_on = set(hang_on)

    async def switch(self, cfg: str) -> None:
        self.switches.append(cfg)
        if cfg in self.hang_on:
            await asyncio.Event().wait()  # never set: only the plane's deadline ends this
        self.running = cfg


def test_a_switch_that_never_completes_is_reverted_and_reported(state: Path) -> None:
    agent, clock = HangingAgent("cfg:five"), FakeClock(NOW)
    cp = ControlPlane(state, validate=agent.validate, dry_run=agent.dry_run, switch=agent.switch,
                      healthy=agent.healthy, hold_s=3, clock=clock, fsync=False,
                      switch_timeout_s=lambda cfg: 0.2)
    assert asyncio.run(cp.offer(config_bundle(4, b"cfg:four"), "local"))["result"] == "applied"

    async def offer() -> dict[str, object]:
        return await asyncio.wait_for(cp.offer(config_bundle(5, b"cfg:five"), "cfg:four"), 5)

    report = asyncio.run(offer())
    assert report["result"] == "reverted", report
    assert "switch to config v5 did not complete within 0.2 s" in str(report["reason"])
    assert "reverted to v4" in str(report["reason"])
    assert agent.switches == ["cfg:four", "cfg:five", "cfg:four"] and agent.running == "cfg:four"
    assert cp.revert_failed is None and not cp.ops.busy
    assert load_trust(state).floor("config") == 4 and cp.journal.trial is None


def test_a_revert_that_hangs_too_is_reported_and_left_to_the_watchdog(state: Path) -> None:
    agent, clock = HangingAgent("cfg:five", "cfg:four"), FakeClock(NOW)
    cp = ControlPlane(state, validate=agent.validate, dry_run=agent.dry_run, switch=agent.switch,
                      healthy=agent.healthy, hold_s=3, clock=clock, fsync=False,
                      switch_timeout_s=0.1)
    agent.hang_on.discard("cfg:four")
    assert asyncio.run(cp.offer(config_bundle(4, b"cfg:four"), "local"))["result"] == "applied"
    agent.hang_on.add("cfg:four")
    report = asyncio.run(asyncio.wait_for(cp.offer(config_bundle(5, b"cfg:five"), "cfg:four"), 5))
    assert report["result"] == "reverted", report
    assert "the revert to v4 failed" in str(report["reason"])
    # The gateway's watchdog reads this and stops pinging: systemd restarts it on v4, which
    # the journal names as the last good config.
    assert cp.revert_failed is not None and "revert to config v4" in cp.revert_failed
    assert cp.journal.good_version == 4 and cp.journal.trial is None


def test_an_overdue_step_is_named_until_it_ends(state: Path) -> None:
    from edge_agent.runtime.lifecycle import Operations

    clock = FakeClock(NOW)
    ops = Operations(clock)
    with ops.step("stopping the agent", 5.0):
        clock.advance(4.0)
        assert ops.overdue() == [] and ops.busy
        clock.advance(2.0)
        assert ops.overdue() == ["stopping the agent still running 6.0 s after it started "
                                 "(deadline 5 s)"]
    assert ops.overdue() == [] and not ops.busy


class BuggyAgent(FakeAgent):
    """Callbacks that fail with exceptions that are not the project's: bugs, not verdicts."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where

    def validate(self, payload: bytes) -> str:
        if self.where == "validate" and payload == b"cfg:five":
            raise TypeError("unhashable type: 'list'")
        return super().validate(payload)

    async def dry_run(self, cfg: str) -> None:
        if self.where == "dry_run" and cfg == "cfg:five":
            raise OverflowError("cannot convert float infinity to integer")
        await super().dry_run(cfg)

    async def switch(self, cfg: str) -> None:
        if self.where == "switch" and cfg == "cfg:five":
            self.switches.append(cfg)
            raise OverflowError("cannot convert float infinity to integer")
        await super().switch(cfg)


@pytest.mark.parametrize(("where", "result"), [("validate", "invalid"),
                                               ("dry_run", "dry_run_failed"),
                                               ("switch", "reverted")])
def test_a_bug_in_a_step_costs_the_bundle_not_the_gateway(state: Path, where: str,
                                                         result: str) -> None:
    agent, clock = BuggyAgent(where), FakeClock(NOW)
    cp = plane(state, agent, clock, hold_s=2)
    assert asyncio.run(cp.offer(config_bundle(4, b"cfg:four"), "local"))["result"] == "applied"
    report = asyncio.run(cp.offer(config_bundle(5, b"cfg:five"), "cfg:four"))
    assert report["result"] == result, report
    assert "internal error in" in str(report["reason"]) and "Error" in str(report["reason"])
    assert agent.running == "cfg:four" and load_trust(state).floor("config") == 4
    assert cp.journal.trial is None and cp.journal.good_version == 4 and not cp.ops.busy
    # The plane takes the next bundle as usual.
    agent.where = ""
    assert asyncio.run(cp.offer(config_bundle(6, b"cfg:six"), "cfg:four"))["result"] == "applied"


class HangingDryRun(FakeAgent):
    async def dry_run(self, cfg: str) -> None:
        self.dry_runs.append(cfg)
        await asyncio.Event().wait()  # a probe that never ends: only the deadline ends it


def test_a_dry_run_that_never_ends_fails_at_its_deadline(state: Path) -> None:
    agent, clock = HangingDryRun(), FakeClock(NOW)
    sizes: list[str] = []

    def budget(cfg: str) -> float:
        sizes.append(cfg)
        return 0.2

    cp = ControlPlane(state, validate=agent.validate, dry_run=agent.dry_run, switch=agent.switch,
                      healthy=agent.healthy, hold_s=3, clock=clock, fsync=False,
                      dry_run_timeout_s=budget)
    report = asyncio.run(asyncio.wait_for(cp.offer(config_bundle(5, b"cfg:five"), "local"), 5))
    assert report["result"] == "dry_run_failed", report
    assert "dry run did not complete within 0.2 s" in str(report["reason"])
    assert sizes == ["cfg:five"] and agent.switches == [] and not cp.ops.busy
    assert load_trust(state).floor("config") == 0 and cp.journal.trial is None

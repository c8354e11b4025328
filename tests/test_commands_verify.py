"""The pure command verifier and command planner (issue 12): operator role, envelope, refusals.

No broker, no bus: bytes and trusted state in, a verdict out; a command and a site config in,
the writes (or the refusal naming the interlock and the value seen) out.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.interlocks import Interlocks
from edge_agent.config.loader import load_config_bytes
from edge_agent.control.commands import (
    CommandPlan,
    Refusal,
    cabinet_refusal,
    flash_refusal,
    plan_command,
)
from edge_agent.protocol.bundle import root_signed, sign_envelope
from edge_agent.protocol.command import (
    ACCEPTED,
    FAULT,
    REJECTED,
    command_signed,
    encode_command,
    verify_command,
)
from edge_agent.protocol.errors import ConfigError
from edge_agent.protocol.keys import PrivateKey
from edge_agent.protocol.trust import TrustedState
from edge_agent.protocol.verify import update_root

SEED = 12
NOW = 1_700_000_000
DAY = 86_400
print(f"test_commands_verify: key seed {SEED}")


def key(name: str) -> PrivateKey:
    """A deterministic key (fixed seed) so failures reproduce."""
    return PrivateKey(hashlib.sha256(f"{SEED}/{name}".encode()).digest())


ROOT_K, REL, OP, EVIL = key("root"), key("release"), key("operator"), key("evil")


def root(version: int, operators: list[PrivateKey], signers: list[PrivateKey] | None = None
         ) -> dict[str, Any]:
    signed = root_signed(version, [ROOT_K.public], 1, [REL.public], 1, issued=NOW - DAY,
                         expires=NOW + 365 * DAY, operator_keys=[k.public for k in operators])
    return sign_envelope(signed, signers or [ROOT_K])


ROOT_OLD = root(1, [])          # a root from before commands: no operator role
ROOT_OP = root(1, [OP])


def trust(r: dict[str, Any] = ROOT_OP, gw: str = "gw-a") -> TrustedState:
    return TrustedState(gateway_id=gw, site="north", tags=("lamps",), root=r)


def cmd(action: str = "dim", args: dict[str, Any] | None = None, *, keys: tuple[PrivateKey, ...]
        = (OP,), issued: int = NOW, expires: int = NOW + 600, cid: str = "c1",
        roots: tuple[dict[str, Any], ...] = (), **targets: Any) -> bytes:
    targets = targets or {"gateways": ["gw-a"]}
    signed = command_signed(cid, action, args or {"lamps": ["lamp-1"], "level_pct": 40},
                            issued=issued, expires=expires, **targets)
    return encode_command(signed, keys, roots)


def test_a_signed_command_is_accepted() -> None:
    v = verify_command(cmd(), trust(), NOW)
    assert v.code == ACCEPTED, v.reason
    assert v.command is not None and v.command.args == {"lamps": ["lamp-1"], "level_pct": 40}


@pytest.mark.parametrize(("blob", "now", "t", "reason"), [
    (cmd(keys=(EVIL,)), NOW, trust(), "0 valid signatures from operator keys"),
    (cmd(keys=(REL,)), NOW, trust(), "0 valid signatures from operator keys"),  # a release key
    (cmd(), NOW, trust(ROOT_OLD), "delegates no operator keys"),
    (cmd(expires=NOW + 10), NOW + 400, trust(), "expired"),
    (cmd(), NOW, trust(gw="gw-b"), "does not target gateway 'gw-b'"),
    (cmd(issued=NOW + 3600, expires=NOW + 4000), NOW, trust(), "in the future"),
    (b"{", NOW, trust(), "command JSON refused"),
    (b"x" * 300_000, NOW, trust(), "exceeds the cap"),
])
def test_refusals_name_the_reason(blob: bytes, now: int, t: TrustedState, reason: str) -> None:
    v = verify_command(blob, t, now)
    assert v.code == REJECTED and reason in v.reason, v.reason
    assert not v.reason.startswith(FAULT)


def test_site_and_tag_targets() -> None:
    assert verify_command(cmd(sites=["north"]), trust(), NOW).code == ACCEPTED
    assert verify_command(cmd(tags=["lamps"]), trust(), NOW).code == ACCEPTED
    assert verify_command(cmd(tags=["pumps"]), trust(), NOW).code == REJECTED


def test_a_tampered_argument_breaks_the_signature() -> None:
    doc = json.loads(cmd())
    doc["signed"]["args"]["level_pct"] = 100
    v = verify_command(json.dumps(doc).encode(), trust(), NOW)
    assert v.code == REJECTED and "signatures" in v.reason and v.claimed_id == "c1"


def test_arguments_outside_the_schema_are_refused() -> None:
    doc = json.loads(cmd())
    doc["signed"]["args"]["level_pct"] = 140
    assert "level_pct" in verify_command(json.dumps(doc).encode(), trust(), NOW).reason
    doc["signed"]["args"] = {"lamps": ["a"], "level_pct": 4, "extra": 1}
    assert "unknown field" in verify_command(json.dumps(doc).encode(), trust(), NOW).reason


def test_an_old_root_stays_valid_and_a_rotation_delegates_operators() -> None:
    # The pinned root predates commands; a command carrying root v2 (operator role, signed by
    # the old root key) is verified against it.
    v2 = root(2, [OP])
    assert update_root(ROOT_OLD, [v2])["signed"]["version"] == 2
    assert verify_command(cmd(roots=(v2,)), trust(ROOT_OLD), NOW).code == ACCEPTED
    forged = root(2, [EVIL], signers=[EVIL])
    v = verify_command(cmd(keys=(EVIL,), roots=(forged,)), trust(ROOT_OLD), NOW)
    assert v.code == REJECTED and "signatures from root v1" in v.reason


SITE = b"""
[gateway]
id = "gw-a"
site = "north"
[mqtt]
url = "mqtt://127.0.0.1:1"
[buses.lan]
type = "tcp"
host = "127.0.0.1"
port = 1502
[devices.lamp-1]
bus = "lan"
unit_id = 1
profile = "streetlight"
poll_interval_s = 1
[devices.signal-1]
bus = "lan"
unit_id = 2
profile = "signal_cabinet"
poll_interval_s = 1
[devices.signal-2]
bus = "lan"
unit_id = 3
profile = "signal_cabinet"
poll_interval_s = 1
[interlocks.signal-1]
plans = [1, 2, 3]
min_plan_change_s = 300
flash_from_modes = [2, 3]
"""


def site(tmp_path: Path) -> Any:
    return load_config_bytes(SITE, source="site", base_dir=tmp_path)


def planned(tmp_path: Path, action: str, args: dict[str, Any], last: float | None = None,
            groups: dict[str, list[str]] | None = None) -> CommandPlan | Refusal:
    v = verify_command(cmd(action, args), trust(), NOW)
    assert v.command is not None, v.reason
    return plan_command(v.command, site(tmp_path), groups or {},
                        last_plan_change_s=lambda _d: last, now_s=NOW)


def test_dim_plans_one_write_per_lamp_and_an_override(tmp_path: Path) -> None:
    p = planned(tmp_path, "dim", {"lamps": ["group:north", "lamp-1"], "level_pct": 40,
                                  "for_s": 7200}, groups={"north": ["lamp-1"]})
    assert isinstance(p, CommandPlan)
    assert [(w.device, w.point, w.value) for w in p.writes] == [("lamp-1", "dim_command", 40)]
    assert p.override_level == 40 and p.override_s == 7200
    assert p.targets == ("group:north", "lamp-1")


@pytest.mark.parametrize(("action", "args", "last", "interlock", "text"), [
    ("dim", {"lamps": ["lamp-9"], "level_pct": 4}, None, "target", "no device 'lamp-9'"),
    ("dim", {"lamps": ["group:south"], "level_pct": 4}, None, "target", "no lamp group"),
    ("dim", {"lamps": ["signal-1"], "level_pct": 4}, None, "writable", "no writable point"),
    ("plan", {"device": "signal-1", "plan": 9}, None, "limits", "plan_command"),
    ("plan", {"device": "signal-1", "plan": 4}, None, "plans", "not in the allow-list"),
    ("plan", {"device": "signal-1", "plan": 2}, NOW - 100, "min_plan_change_s", "100 s ago"),
    ("plan", {"device": "signal-2", "plan": 2}, None, "interlocks", "no [interlocks.signal-2]"),
])
def test_refused_before_the_bus(tmp_path: Path, action: str, args: dict[str, Any],
                                last: float | None, interlock: str, text: str) -> None:
    p = planned(tmp_path, action, args, last)
    assert isinstance(p, Refusal) and p.interlock == interlock and text in p.reason, p


def test_a_plan_change_goes_with_the_cabinet_guard(tmp_path: Path) -> None:
    p = planned(tmp_path, "plan", {"device": "signal-1", "plan": 2}, NOW - 400)
    assert isinstance(p, CommandPlan) and p.writes[0].guard is not None
    assert set(p.writes[0].guard.points) == {"controller_mode", "lamp_faults", "detector_faults",
                                             "door_open", "mains_power"}


LOCKS = Interlocks("signal-1", (1, 2, 3), 300.0, (2, 3), (4,), ("lamp_faults", "detector_faults"))
CALM = {"controller_mode": 2, "lamp_faults": 0, "detector_faults": 0, "door_open": False,
        "mains_power": True}


@pytest.mark.parametrize(("seen", "text"), [
    ({"controller_mode": 4}, "interlock manual: signal-1 is under manual control "
                             "(controller_mode = 4)"),
    ({"lamp_faults": 3}, "interlock fault: signal-1 reports lamp_faults = 3"),
    ({"detector_faults": 1}, "interlock fault: signal-1 reports detector_faults = 1"),
    ({"door_open": True}, "interlock door_open"),
    ({"mains_power": False}, "interlock mains_power"),
])
def test_each_cabinet_interlock_names_the_value_seen(seen: dict[str, Any], text: str) -> None:
    assert cabinet_refusal(LOCKS, CALM) is None
    refusal = cabinet_refusal(LOCKS, {**CALM, **seen})
    assert refusal is not None and text in refusal


def test_flashing_only_from_the_listed_modes() -> None:
    assert flash_refusal(LOCKS, {"controller_mode": 3}) is None
    refusal = flash_refusal(LOCKS, {"controller_mode": 0})
    assert refusal is not None and "controller_mode 0" in refusal and "[2, 3]" in refusal


def test_the_verifier_is_total_under_mutation() -> None:
    """Flipped, dropped and inserted bytes and retyped fields: each ends in a verdict, never in
    the backstop (which would be a verifier bug)."""
    rng = random.Random(SEED)
    good = cmd(roots=(ROOT_OP,))
    doc = json.loads(good)
    variants: list[bytes] = []
    for _ in range(400):
        b = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            op = rng.randrange(3)
            if op == 0:
                b[i] = rng.randrange(256)
            elif op == 1:
                del b[i]
            else:
                b.insert(i, rng.choice(b'{}[]",:0-9aeflnrstu\\'))
        variants.append(bytes(b))
    for path in (("signed", "args"), ("signed", "targets"), ("signed", "issued"),
                 ("signatures",), ("roots",), ("signed", "id"), ("signed", "action")):
        values: list[Any] = [None, 1, -1, 2**60, "x", [], {}, [[]], {"a": {}}, True, "\ud800"]
        for value in values:
            mutated = json.loads(good)
            target = mutated
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
            variants.append(json.dumps(mutated).encode("utf-8", "surrogatepass"))
    assert doc["signed"]["id"] == "c1"
    for blob in variants:
        v = verify_command(blob, trust(), NOW)
        assert not v.reason.startswith(FAULT), (blob[:200], v.reason)


@pytest.mark.parametrize("value", ['["nope"]', "[]", '[{a = 1}]', '"lamp_faults"'])
def test_fault_points_must_name_points_of_the_cabinet(tmp_path: Path, value: str) -> None:
    bad = SITE + f"fault_points = {value}\n".encode()
    with pytest.raises(ConfigError) as err:
        load_config_bytes(bad, source="site", base_dir=tmp_path)
    assert "interlocks.signal-1.fault_points" in str(err.value)


def test_fault_points_default_to_the_cabinet_fault_counters(tmp_path: Path) -> None:
    assert site(tmp_path).interlocks["signal-1"].fault_points == ("lamp_faults",
                                                                  "detector_faults")

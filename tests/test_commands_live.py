"""Signed commands on the real agent (issue 12): a real broker, ``edge-agent run`` on an enrolled
gateway, the simulator, and ``edge-fleet cmd send`` / ``cmd log``.

Proven here: a dim round trip with the read-back value; a repeated id executed once (also
across a restart: the audit log survives it); a bad signature, an expired command, one for
another gateway and one outside the profile's limits refused with nothing written; each signal
cabinet interlock refusing with the value it saw (fault, manual, door, mains, allow-list,
minimum time between plan changes, flashing only from listed modes); a plan change and
flashing done with their read-back. "Nothing written" is the simulator's own write counter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.fleet import actions as ops
from edge_agent.fleet.registry import Registry
from edge_agent.protocol.command import command_signed, encode_command
from edge_agent.protocol.keys import PrivateKey, write_private
from edge_agent.tools.devbroker import Mosquitto
from tests.support.fleetkit import Pki, enrol_direct
from tests.support.sitekit import Collector, agent, control, simulator, write_site

pytestmark = [pytest.mark.integration, pytest.mark.serial]
GW = "gw-test"
SEED = 1212
INTERLOCKS = """
[interlocks.signal]
plans = [1, 2, 3]
min_plan_change_s = 600
flash_from_modes = [2, 3]
"""


class Results:
    """Publishes commands and collects the gateway's answers on cmd-result/+."""

    def __init__(self, port: int) -> None:
        self.items: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.subscribe(f"edge/{GW}/cmd-result/+", qos=1)
        self.c.loop_start()

    def _on(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.items.append(json.loads(msg.payload))

    def send(self, cid: str, blob: bytes) -> None:
        self.c.publish(f"edge/{GW}/cmd/{cid}", blob, qos=1).wait_for_publish(10)

    def outcome(self, cid: str, n: int = 1, timeout_s: float = 30) -> dict[str, Any]:
        """The ``n``-th final answer (done, refused, failed) of ``cid``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                final = [r for r in self.items if r.get("id") == cid
                         and r.get("status") in ("done", "refused", "failed")]
            if len(final) >= n:
                return final[n - 1]
            time.sleep(0.05)
        raise AssertionError(f"no answer {n} for {cid}: {self.items}")

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _writes(sock: Path, device: str) -> int:
    return int(control(sock, {"cmd": "stats", "device": device})["writes"])


def _value(sock: Path, device: str, point: str) -> Any:
    return control(sock, {"cmd": "registers", "device": device})["values"][point]


def test_commands_round_trip_refusals_and_interlocks(tmp_path: Path,
                                                     own_broker: Mosquitto) -> None:
    print("key seed", SEED)
    reg = Registry(f"sqlite:///{tmp_path / 'fleet.db'}")
    pki = Pki.from_seed(SEED)
    op = Pki.key(SEED, "operator")
    ops.init_root(reg, [k.public for k in pki.roots], 2, [k.public for k in pki.releases], 2,
                  list(pki.roots), operator_keys=[op.public])
    write_private(tmp_path / "operator.key", op)
    enrol_direct(reg, tmp_path / "gw", [GW], "test-site", own_broker.url)
    state = tmp_path / "gw" / GW
    site = write_site(tmp_path, [("lamp", "rs485", 3, "streetlight"),
                                 ("signal", "lan", 1, "signal_cabinet")], extra=INTERLOCKS,
                      health_s=1.0)
    site.write_text(site.read_text().replace(f'state_dir = "{tmp_path / "state"}"',
                                             f'state_dir = "{state}"'))
    roots = reg.roots()

    def signed(cid: str, action: str, args: dict[str, Any], *, key: PrivateKey = op,
               ttl: int = 600, issued_ago: int = 0, gateways: tuple[str, ...] = (GW,)) -> bytes:
        now = int(time.time()) - issued_ago
        doc = command_signed(cid, action, args, issued=now, expires=now + ttl,
                             gateways=gateways)
        return encode_command(doc, [key], roots)

    results = Results(own_broker.port)
    data = Collector(own_broker.port)
    try:
        with simulator(site, tmp_path) as sock:
            with agent(site, own_broker.url, tmp_path):
                assert data.wait_for(lambda c: any(r.device == "signal" for r in c.readings))
                # 1. The dim round trip through the operator's CLI, with the read-back value.
                cli = subprocess.run(
                    [sys.executable, "-m", "edge_agent.fleet.cli", "cmd", "send", "--db",
                     f"sqlite:///{tmp_path / 'fleet.db'}", "--gateway", GW, "dim", "40",
                     "--lamps", "lamp", "--key", str(tmp_path / "operator.key"), "--broker",
                     own_broker.url, "--id", "dim-1", "--wait-s", "30"],
                    capture_output=True, text=True, timeout=60)
                print(cli.stdout, cli.stderr)
                assert cli.returncode == 0, cli.stderr
                assert "gw-test accepted" in cli.stdout and "gw-test done" in cli.stdout
                assert "lamp.dim_command = 40: read back 40" in cli.stdout
                assert _value(sock, "lamp", "dim_command") == 40
                lamp_writes = _writes(sock, "lamp")
                assert lamp_writes == 1
                # 2. The same id again: answered from the journal, not executed twice.
                results.send("dim-1", signed("dim-1", "dim", {"lamps": ["lamp"],
                                                               "level_pct": 40}))
                assert results.outcome("dim-1").get("replayed") is None  # the CLI's own run
                again = results.outcome("dim-1", n=2)
                assert again["status"] == "done" and again["replayed"] is True
                # 3. Refused, nothing written: bad signature, expired, another gateway,
                # outside the profile's limits.
                refusals = {
                    "bad-sig": (signed("bad-sig", "dim", {"lamps": ["lamp"], "level_pct": 10},
                                       key=pki.releases[0]), "valid signatures from operator"),
                    "expired": (signed("expired", "dim", {"lamps": ["lamp"], "level_pct": 10},
                                       ttl=10, issued_ago=1000), "expired"),
                    "other-gw": (signed("other-gw", "dim", {"lamps": ["lamp"], "level_pct": 10},
                                        gateways=("gw-other",)), "does not target"),
                    "limits": (signed("limits", "plan", {"device": "signal", "plan": 9}),
                               "plan_command"),
                    "junk": (b"\xff{\"signed\"", "command JSON refused"),
                    "id-swap": (signed("other-id", "dim", {"lamps": ["lamp"], "level_pct": 9}),
                                "published on the topic of id"),
                }
                results.send("..", b"{}")  # an id no command can have: counted, not answered
                for cid, (blob, _) in refusals.items():
                    results.send(cid, blob)
                for cid, (_, reason) in refusals.items():
                    answer = results.outcome(cid)
                    assert answer["status"] == "refused" and reason in answer["reason"], answer
                # 4. Each interlock of the cabinet, read fresh before the write.
                for n, (point, value, words) in enumerate([
                        ("lamp_faults", 2, "interlock fault: signal reports lamp_faults = 2"),
                        ("controller_mode", 4, "interlock manual"),
                        ("door_open", True, "interlock door_open"),
                        ("mains_power", False, "interlock mains_power")]):
                    control(sock, {"cmd": "set", "device": "signal", "point": point,
                                   "value": value})
                    cid = f"lock-{n}"
                    results.send(cid, signed(cid, "plan", {"device": "signal", "plan": 2}))
                    answer = results.outcome(cid)
                    control(sock, {"cmd": "set", "device": "signal", "point": point,
                                   "value": None})
                    assert answer["status"] == "refused" and words in answer["reason"], answer
                results.send("allow", signed("allow", "plan", {"device": "signal", "plan": 4}))
                assert "not in the allow-list" in results.outcome("allow")["reason"]
                control(sock, {"cmd": "set", "device": "signal", "point": "controller_mode",
                               "value": 0})
                results.send("fl-0", signed("fl-0", "flash", {"device": "signal", "on": True}))
                answer = results.outcome("fl-0")
                control(sock, {"cmd": "set", "device": "signal", "point": "controller_mode",
                               "value": None})
                assert "flash_from_modes" in answer["reason"] and "mode 0" in answer["reason"]
                assert _writes(sock, "signal") == 0, "a refused command wrote to the cabinet"
                # 5. A plan change done and read back; the next one too soon.
                results.send("plan-2", signed("plan-2", "plan", {"device": "signal",
                                                                 "plan": 2}))
                done = results.outcome("plan-2")
                assert done["status"] == "done", done
                assert done["writes"][0]["readback"] == 2
                results.send("plan-3", signed("plan-3", "plan", {"device": "signal",
                                                                 "plan": 3}))
                soon = results.outcome("plan-3")
                assert soon["status"] == "refused" and "min_plan_change_s" in soon["reason"]
                results.send("fl-1", signed("fl-1", "flash", {"device": "signal", "on": True}))
                assert results.outcome("fl-1")["status"] == "done"
                assert _writes(sock, "signal") == 2 and _writes(sock, "lamp") == lamp_writes
                # 6. A device answering with a Modbus exception: failed, with the code.
                control(sock, {"device": "lamp", "fault": "exception", "code": 4})
                results.send("exc", signed("exc", "dim", {"lamps": ["lamp"], "level_pct": 20}))
                failed = results.outcome("exc")
                control(sock, {"device": "lamp", "fault": "none"})
                assert failed["status"] == "failed" and failed["exception_code"] == 4, failed
                assert "exception 4" in failed["reason"]
                # A lamp held for a duration: the lighting override store keeps its end time
                # (refused, with nothing written, by a build without the store).
                results.send("hold", signed("hold", "dim", {"lamps": ["lamp"], "level_pct": 30,
                                                            "for_s": 7200}))
                held = results.outcome("hold")
                store = state / "lighting-overrides.json"
                if held["status"] == "refused":
                    assert "no lighting override store" in held["reason"], held
                else:
                    assert held["status"] == "done" and "held at 30 % for 7200 s" in \
                        held["reason"], held
                    kept = json.loads(store.read_text())["overrides"]
                    assert kept[0]["target"] == "lamp" and kept[0]["command_id"] == "hold"
                    assert abs(kept[0]["until_s"] - (time.time() + 7200)) < 60
                    results.send("free", signed("free", "override-clear", {"lamps": ["lamp"]}))
                    assert results.outcome("free")["status"] == "done"
                    assert json.loads(store.read_text())["overrides"] == []
                lamp_writes = _writes(sock, "lamp")
                # 7. Health counts what the intake did (the audit's records by status).
                n_health = len(data.health)
                assert data.wait_for(lambda c: len(c.health) > n_health + 1)
                section: Any = data.health[-1]["commands"]
                done_n = 3 if held["status"] == "refused" else 5  # dim, plan, flash (hold, free)
                assert section["audit"]["by_status"]["done"] == done_n, section
                assert section["rejected_by_reason"]["unverified"] == 4, section
                assert section["rejected_by_reason"]["topic"] == 1, section
            # 8. After a restart the audit log still answers the old id, and nothing runs.
            with agent(site, own_broker.url, tmp_path):
                assert data.wait_for(lambda c: len(c.readings) > 0)
                n_before = len(data.readings)
                assert data.wait_for(lambda c: len(c.readings) > n_before)
                results.send("dim-1", signed("dim-1", "dim", {"lamps": ["lamp"],
                                                               "level_pct": 40}))
                again = results.outcome("dim-1", n=3)
                assert again["status"] == "done" and again["replayed"] is True
                assert _writes(sock, "lamp") == lamp_writes
        log = subprocess.run(
            [sys.executable, "-m", "edge_agent.fleet.cli", "cmd", "log", "--db",
             f"sqlite:///{tmp_path / 'fleet.db'}", "--id", "dim-1"],
            capture_output=True, text=True, timeout=60)
        assert log.returncode == 0 and "dim-1 gw-test done" in log.stdout, log
        audit = (state / "commands.log").read_text().splitlines()
        assert sum(1 for line in audit if '"dim-1"' in line and '"accepted"' in line) == 1
    finally:
        results.close()
        data.close()
        reg.close()

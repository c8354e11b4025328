"""The fleet's side of commands (issue 12): the service takes cmd-result answers in as a total
intake and stores each once; ``edge-fleet cmd send`` options become the signed arguments."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest

from edge_agent.fleet import actions as ops
from edge_agent.fleet import cmdstore
from edge_agent.fleet.cmdcli import build_command, command_args, describe, parse_duration
from edge_agent.fleet.registry import Registry
from edge_agent.fleet.service import FleetService
from edge_agent.protocol.clock import FakeClock
from edge_agent.protocol.errors import CommandError
from edge_agent.protocol.keys import write_private
from tests.support.fleetkit import Pki

T0 = 1_700_000_000_000
DONE = {"id": "c-1", "gateway": "gw-good", "status": "done", "reason": "1 writes done",
        "writes": [{"device": "lamp", "point": "dim_command", "value": 40, "ok": True,
                    "readback": 40, "error": None, "exception_code": None}]}


class Msg:
    """What the handler reads of an aiomqtt message."""

    def __init__(self, topic: str, payload: object) -> None:
        self.topic = topic
        self.payload = payload


def test_the_service_stores_answers_once_and_counts_what_it_refuses(tmp_path: Path) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'fleet.db'}")
    reg.add_gateway("gw-good", "north", [], T0)
    svc = FleetService(reg, "mqtt://127.0.0.1:1", clock=FakeClock())
    good = json.dumps(DONE).encode()
    poison = [
        ("edge/gw-good/cmd-result/c-2", good),                          # id of another topic
        ("edge/gw-good/cmd-result/c-1", b'{"id": "c-1", "status": "maybe"}'),
        ("edge/gw-good/cmd-result/c-1", b'{"id": "c-1", "status": "done", "reason": 5}'),
        ("edge/gw-good/cmd-result/c-1", b"[" * 10_000),
        ("edge/gw-good/cmd-result/c-1", json.dumps({**DONE, "pad": "x" * 200_000}).encode()),
        ("edge/gw-nobody/cmd-result/c-1", good),
    ]

    async def main() -> None:
        for topic, payload in poison:
            await svc._handle(Msg(topic, payload))  # type: ignore[arg-type]
        for _ in range(2):  # a QoS 1 redelivery is stored once
            await svc._handle(Msg("edge/gw-good/cmd-result/c-1", good))  # type: ignore[arg-type]

    asyncio.run(main())
    consumer = svc.health()["consumer"]
    assert consumer["rejected"] == {
        "cmd-result:bad_reason": 1, "cmd-result:bad_status": 1,
        "cmd-result:id_mismatch": 1, "cmd-result:too_large": 1, "cmd-result:too_many_containers": 1,
        "cmd-result:unknown_gateway": 1}, consumer["rejected"]
    rows = cmdstore.results(reg, "c-1")
    assert [(r[1], r[2], r[5]) for r in rows] == [("gw-good", "done", DONE)]
    reg.close()


def _args(action: str, value: str | None = None, **kw: object) -> argparse.Namespace:
    return argparse.Namespace(action=action, value=value, lamps=kw.get("lamps"),
                              device=kw.get("device"), for_=kw.get("for_"))


def test_options_become_the_signed_arguments() -> None:
    assert command_args(_args("dim", "40", lamps="lamp-101, group:north", for_="2h")) == {
        "lamps": ["lamp-101", "group:north"], "level_pct": 40, "for_s": 7200}
    assert command_args(_args("switch", "off", lamps="a")) == {"lamps": ["a"], "on": False}
    assert command_args(_args("plan", "2", device="signal-1")) == {"device": "signal-1",
                                                                  "plan": 2}
    assert command_args(_args("flash", "on", device="s")) == {"device": "s", "on": True}
    assert [parse_duration(d) for d in ("90s", "30m", "2h", "1d", "45")] == [
        90, 1800, 7200, 86400, 45]


@pytest.mark.parametrize(("args", "text"), [
    (_args("dim", "140", lamps="a"), "level 0-100"),
    (_args("dim", "40"), "needs --lamps"),
    (_args("plan", "2"), "needs --device"),
    (_args("flash", "maybe", device="s"), "on or off"),
    (_args("dim", "4", lamps="a", for_="2 weeks"), "a duration"),
])
def test_incomplete_options_are_refused_before_signing(args: argparse.Namespace,
                                                       text: str) -> None:
    with pytest.raises(CommandError, match=text):
        command_args(args)


def test_an_answer_reads_as_one_line_per_write() -> None:
    assert describe("gw-good", DONE) == ("gw-good done: 1 writes done\n"
                                         "  lamp.dim_command = 40: read back 40")


def test_send_refuses_a_key_the_root_does_not_delegate(tmp_path: Path) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'fleet.db'}")
    pki = Pki.from_seed(7)
    op, other = Pki.key(7, "operator"), Pki.key(7, "other")
    ops.init_root(reg, [k.public for k in pki.roots], 2, [k.public for k in pki.releases], 2,
                  list(pki.roots), operator_keys=[op.public])
    reg.add_gateway("gw-a", "north", [], T0)
    for name, key in (("op.key", op), ("other.key", other)):
        write_private(tmp_path / name, key)
    args = argparse.Namespace(gateway=["gw-a"], site=[], tag=[], expires_s=600, id="c-9",
                              action="dim", value="40", lamps="lamp-1", device=None, for_=None,
                              key=[tmp_path / "other.key"])
    with pytest.raises(CommandError, match="is not an operator key of root v1"):
        build_command(reg, args, 1_700_000_000)
    args.key = [tmp_path / "op.key"]
    cid, blob, gateways = build_command(reg, args, 1_700_000_000)
    assert cid == "c-9" and gateways == ["gw-a"] and b'"roots"' in blob
    reg.close()

"""``edge-fleet cmd send`` and ``edge-fleet cmd log``: the operator's side of commands.

``send`` builds a command (``edge_agent.protocol.command``), signs it with the operator key(s),
stores it in the registry, publishes it on ``{prefix}/{gateway}/cmd/{id}`` of every gateway the
targets select, and prints each gateway's answers (accepted, then done / refused / failed) as
they arrive, until every gateway gave its outcome or ``--wait-s`` passed. The answers are
stored in the registry too (as the fleet service stores them), so ``log`` shows them.
Examples (docs/commands.md)::

    edge-fleet cmd send --gateway demo-gw-01 dim 40 --lamps lamp-101,group:north --for 2h \\
        --key operator.key --broker mqtt://127.0.0.1:1883
    edge-fleet cmd send --site demo-block-7 plan 2 --device signal-1 --key operator.key ...
    edge-fleet cmd log --id ID
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import aiomqtt

from edge_agent.fleet import cmdstore
from edge_agent.fleet.registry import Registry
from edge_agent.protocol import topics
from edge_agent.protocol.broker import MqttConfig, client_options, no_delay, parse_broker_url
from edge_agent.protocol.command import (
    DEVICE,
    FOR_S,
    LAMPS,
    LEVEL,
    MAX_LIFETIME_S,
    ON,
    PLAN,
    command_signed,
    encode_command,
)
from edge_agent.protocol.errors import CommandError, VerificationError
from edge_agent.protocol.keys import PrivateKey, load_private
from edge_agent.protocol.shell import (
    add_broker_login,
    broker_password,
    check_broker_url,
    opened,
)
from edge_agent.protocol.verify import role_keys

FINAL = ("done", "refused", "failed")
_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


class CommandOptions(Protocol):
    """What a command is made of: ``cmd send``'s parsed options, or the console's form."""

    action: str
    value: str | None
    lamps: str | None
    device: str | None
    for_: str | None
    gateway: list[str]
    site: list[str]
    tag: list[str]
    id: str | None
    expires_s: int
    key: list[Path]        # key files, read when no keys are handed over


def add_operator_arguments(p: argparse.ArgumentParser) -> None:
    """``edge-fleet root init|rotate``'s options delegating the operator role."""
    p.add_argument("--operator-key", type=Path, action="append", default=[],
                   help="public key of an operator who may sign commands (repeatable)")
    p.add_argument("--operator-threshold", type=int, default=1)


def add_cmd_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``edge-fleet cmd send|log`` on the CLI's subparsers."""
    p = sub.add_parser("cmd", parents=[common], help="send signed commands, read their results")
    verbs = p.add_subparsers(dest="verb", required=True)
    s = verbs.add_parser("send", parents=[common], help="sign, publish, print the results")
    for flag in ("--gateway", "--site", "--tag"):
        s.add_argument(flag, action="append", default=[], help="a target (repeatable)")
    s.add_argument("action", choices=("dim", "switch", "override-clear", "plan", "flash"))
    s.add_argument("value", nargs="?", help="dim: 0-100; switch, flash: on|off; plan: number")
    s.add_argument("--lamps", help="lamps and groups, comma-separated: lamp-101,group:north")
    s.add_argument("--device", help="the signal cabinet of plan and flash")
    s.add_argument("--for", dest="for_", metavar="DURATION",
                   help="hold the lamps this long (90s, 30m, 2h, 1d), then the schedule resumes")
    s.add_argument("--key", type=Path, action="append", required=True, help="operator key")
    s.add_argument("--broker", required=True, help="broker URL; no credentials in it")
    add_broker_login(s)
    s.add_argument("--prefix", default="edge")
    s.add_argument("--id", help="command id (default: a fresh one)")
    s.add_argument("--expires-s", type=int, default=600, help="the command's lifetime")
    s.add_argument("--wait-s", type=float, default=30.0, help="how long to wait for results")
    s.set_defaults(fn=cmd_send)
    lg = verbs.add_parser("log", parents=[common], help="results stored in the registry")
    lg.add_argument("--id", help="one command's results")
    lg.add_argument("--limit", type=int, default=50)
    lg.add_argument("--json", action="store_true", help="the answers as JSON lines")
    lg.set_defaults(fn=cmd_log)


def parse_duration(text: str) -> int:
    """'90s', '30m', '2h', '1d' or plain seconds -> seconds; CommandError otherwise."""
    m = _DURATION.fullmatch(text.strip())
    if m is None or int(m.group(1)) == 0:
        raise CommandError(f"--for {text!r}: expected a duration such as 90s, 30m, 2h or 1d")
    return int(m.group(1)) * _UNIT_S[m.group(2)]


def _on_off(action: str, value: str | None) -> bool:
    if value not in ("on", "off"):
        raise CommandError(f"{action} takes on or off, got {value!r}")
    return value == "on"


def command_args(args: CommandOptions) -> dict[str, Any]:
    """The signed ``args`` of the command the options describe; CommandError if incomplete."""
    action, value = args.action, args.value
    out: dict[str, Any] = {}
    if action in ("dim", "switch", "override-clear"):
        if not args.lamps:
            raise CommandError(f"{action} needs --lamps lamp-101,group:north")
        out[LAMPS] = [n.strip() for n in args.lamps.split(",") if n.strip()]
        if action == "dim":
            if not (value and value.isascii() and value.isdigit() and 0 <= int(value) <= 100):
                raise CommandError(f"dim takes a level 0-100, got {value!r}")
            out[LEVEL] = int(value)
        elif action == "switch":
            out[ON] = _on_off(action, value)
        if args.for_ and action != "override-clear":
            out[FOR_S] = parse_duration(args.for_)
        return out
    if not args.device:
        raise CommandError(f"{action} needs --device (the signal cabinet)")
    out[DEVICE] = args.device
    if action == "plan":
        if value is None or not (value.isascii() and value.isdigit()):
            raise CommandError(f"plan takes a plan number, got {value!r}")
        out[PLAN] = int(value)
    else:
        out[ON] = _on_off(action, value)
    return out


def build_command(registry: Registry, args: CommandOptions, now: int,
                  keys: Sequence[PrivateKey] | None = None) -> tuple[str, bytes, list[str]]:
    """(id, signed wire bytes, gateways to publish to) of the command the options describe,
    signed with ``keys`` (default: the options' ``--key`` files)."""
    selectors = ([f"gw:{g}" for g in args.gateway] + [f"site:{s}" for s in args.site]
                 + [f"tag:{t}" for t in args.tag])
    if not selectors:
        raise CommandError("name a target: --gateway ID, --site NAME or --tag NAME")
    gateways = registry.select_gateways(selectors)
    if not gateways:
        raise CommandError(f"targets {selectors} match no enrolled gateway")
    if not 0 < args.expires_s <= MAX_LIFETIME_S:
        raise CommandError(f"--expires-s {args.expires_s}: expected 1..{MAX_LIFETIME_S}")
    cid = args.id or f"c{now}-{secrets.token_hex(4)}"
    if keys is None:
        keys = [load_private(k) for k in args.key]
    root = registry.latest_root()
    try:
        operators, _ = role_keys(root["signed"], "operator")
    except VerificationError as exc:
        raise CommandError(f"{exc}: delegate operator keys first (edge-fleet root rotate ... "
                           "--operator-key operator.pub)") from exc
    strangers = [k.public.keyid[:12] for k in keys if k.public.keyid not in operators]
    if strangers:  # gateways would refuse it: say so here, before anything is published
        raise CommandError(f"key {', '.join(strangers)} is not an operator key of root "
                           f"v{root['signed']['version']}")
    try:
        signed = command_signed(cid, args.action, command_args(args), issued=now,
                                expires=now + args.expires_s, gateways=args.gateway,
                                sites=args.site, tags=args.tag)
        blob = encode_command(signed, keys, registry.roots())
    except (ValueError, VerificationError) as exc:
        raise CommandError(f"cannot sign this command: {exc}") from exc
    return cid, blob, gateways


def prepare(registry: Registry, args: CommandOptions, now: int,
            keys: Sequence[PrivateKey] | None = None) -> tuple[str, bytes, list[str]]:
    """Build and sign the command, and store it in the registry as about to be published:
    the one way both ``cmd send`` and the web console issue a command."""
    cid, blob, gateways = build_command(registry, args, now, keys)
    cmdstore.record_command(registry, cid, args.action, blob, gateways, now * 1000)
    return cid, blob, gateways


async def publish_to(client: aiomqtt.Client, prefix: str, cid: str, blob: bytes,
                     gateways: Sequence[str]) -> None:
    """Publish the signed command on ``{prefix}/{gw}/cmd/{id}`` of every gateway (QoS 1)."""
    for gw in gateways:
        await client.publish(f"{prefix}/{gw}/{topics.CMD}/{cid}", blob, qos=1)


async def publish_and_wait(mqtt: MqttConfig, prefix: str, cid: str, blob: bytes,
                           gateways: Sequence[str], wait_s: float,
                           on_answer: Callable[[str, dict[str, Any]], None]) -> set[str]:
    """Publish to every gateway, hand each answer to ``on_answer``; the gateways that gave
    their outcome (done, refused, failed) within ``wait_s``."""
    final: set[str] = set()
    opts = client_options(mqtt)
    async with aiomqtt.Client(identifier=f"fleet-cmd-{secrets.token_hex(4)}", **opts) as client:
        no_delay(client)
        await client.subscribe(f"{prefix}/+/{topics.CMD_RESULT}/{cid}", qos=1)
        await publish_to(client, prefix, cid, blob, gateways)
        try:
            async with asyncio.timeout(wait_s):
                async for msg in client.messages:
                    ref = topics.parse_topic(str(msg.topic), prefix)
                    if ref is None or ref.gateway not in gateways:
                        continue
                    try:
                        doc = json.loads(bytes(msg.payload))
                    except (TypeError, ValueError):
                        continue
                    if not isinstance(doc, dict):
                        continue
                    on_answer(ref.gateway, doc)
                    if doc.get("status") in FINAL:
                        final.add(ref.gateway)
                    if final >= set(gateways):
                        break
        except TimeoutError:
            pass
    return final


def describe(gateway: str, doc: dict[str, Any]) -> str:
    """One line of an answer: gateway, status, reason, and each write's read-back value."""
    line = f"{gateway} {doc.get('status')}: {doc.get('reason', '')}"
    for w in doc.get("writes") or ():
        if isinstance(w, dict):
            back = f"read back {w.get('readback')!r}" if w.get("ok") else w.get("error")
            line += f"\n  {w.get('device')}.{w.get('point')} = {w.get('value')!r}: {back}"
    return line + (" (answered from the journal)" if doc.get("replayed") else "")


def cmd_send(args: argparse.Namespace) -> int:
    """Sign, store and publish one command; print the answers; 0 if every gateway did it."""
    registry = opened("--db", args.db, lambda: Registry(args.db))
    mqtt = parse_broker_url(check_broker_url(args.broker), username=args.username,
                            password=broker_password(args.username, args.password_file),
                            topic_prefix=topics.check_prefix(args.prefix))
    now = int(time.time())
    cid, blob, gateways = prepare(registry, args, now)
    print(f"command {cid}: {args.action} to {len(gateways)} gateways: {', '.join(gateways)}")
    outcomes: dict[str, str] = {}

    def on_answer(gw: str, doc: dict[str, Any]) -> None:
        print(describe(gw, doc), flush=True)
        if doc.get("status") in FINAL:
            outcomes[gw] = str(doc["status"])
        try:  # as the fleet service does: `cmd log` shows it even if no service runs
            cmdstore.record_result(registry, gw, cid, doc, int(time.time() * 1000))
        except Exception as exc:  # an answer the intake refuses is shown, not stored
            print(f"{gw}: answer not stored: {exc}", file=sys.stderr)

    asyncio.run(publish_and_wait(mqtt, args.prefix, cid, blob, gateways, args.wait_s,
                                 on_answer))
    missing = [gw for gw in gateways if gw not in outcomes]
    if missing:
        print(f"no outcome within {args.wait_s:g} s from: {', '.join(missing)}")
    done = sum(1 for s in outcomes.values() if s == "done")
    print(f"{done} of {len(gateways)} gateways done")
    return 0 if done == len(gateways) else 1


def cmd_log(args: argparse.Namespace) -> int:
    """Print stored answers, newest first."""
    registry = opened("--db", args.db, lambda: Registry(args.db))
    for cid, gw, status, reason, ms, doc in cmdstore.results(registry, args.id, args.limit):
        if args.json:
            print(json.dumps({"id": cid, "gateway": gw, "received_ms": ms, "answer": doc}))
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))
        print(f"{when} {cid} " + (describe(gw, doc) if doc else f"{gw} {status}: {reason}"))
    return 0

"""`edge-agent spb-tail`: watch the Sparkplug B namespace on a broker, readably.

What a Sparkplug host would see of the gateways: births with every metric's name, datatype,
alias and value, data by metric name (aliases resolved through the last birth), deaths, and the
primary host's STATE. ``SparkplugView.render`` is pure and never raises (an undecodable payload
is a warning line); ``spb_tail`` is the thin shell. Decoding uses the gateway's own Sparkplug
decoder under its intake limits. Times in UTC.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from typing import TextIO

import aiomqtt

from edge_agent.protocol.broker import client_options, parse_broker_url
from edge_agent.protocol.errors import CommandError, EdgeError, SparkplugError
from edge_agent.protocol.shell import (
    add_broker_login,
    broker_password,
    check_broker_url,
    cli_command,
    error_lines,
    shown_url,
)
from edge_agent.runtime.sparkplug.decode import decode_payload
from edge_agent.runtime.sparkplug.metrics import REBIRTH
from edge_agent.runtime.sparkplug.payload import DataType, Limits, Metric, Payload, encode_payload
from edge_agent.tools.precision import format_number
from edge_agent.tools.tail import hms

# A host reads births of any size: wider than the node's intake limits for commands.
VIEW_LIMITS = Limits(max_bytes=16 * 1024 * 1024, max_metrics=100_000, max_string_bytes=65536)


def _shown(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_number(value)  # a float32 at its digits, a double at all of its own
    return repr(value) if isinstance(value, str | bytes) else str(value)


def _value(m: Metric) -> str:
    return "null" if m.is_null else _shown(m.value)


class SparkplugView:
    """Renders Sparkplug messages, keeping each birth's aliases and datatypes."""

    def __init__(self) -> None:
        # (group, node, device or "") -> alias -> (name, datatype)
        self.births: dict[tuple[str, str, str], dict[int, tuple[str, DataType]]] = {}

    def unborn_node(self, topic: str) -> tuple[str, str] | None:
        """(group, node) of a DATA or DEATH message from a node whose NBIRTH was not seen."""
        levels = topic.split("/")
        if len(levels) in (4, 5) and levels[0] == "spBv1.0" and levels[2] in (
                "NDATA", "DDATA", "DBIRTH", "DDEATH") \
                and (levels[1], levels[3], "") not in self.births:
            return levels[1], levels[3]
        return None

    def render(self, topic: str, payload: bytes) -> list[str]:
        """Lines to print for one message; never raises."""
        levels = topic.split("/")
        if len(levels) == 3 and levels[1] == "STATE":
            text = payload.decode("utf-8", "replace")[:200]
            return [f"{hms(None)}  STATE   host {levels[2]}  {text or '(cleared)'}"]
        if len(levels) not in (4, 5) or levels[0] != "spBv1.0":
            return [f"{hms(None)}  ?       message on unexpected topic {topic[:200]}"]
        group, kind, node = levels[1], levels[2], levels[3]
        device = levels[4] if len(levels) == 5 else ""
        key = (group, node, device)
        where = f"{group}/{node}" + (f"/{device}" if device else "")
        try:
            p = decode_payload(payload, VIEW_LIMITS, kind)
        except SparkplugError as exc:
            return [f"{hms(None)}  {kind:<7} {where}  undecodable ({len(payload)} bytes): {exc}"]
        seq = "" if p.seq is None else f"  seq {p.seq}"
        lines = [f"{hms(p.timestamp)}  {kind:<7} {where}{seq}  {len(p.metrics)} metrics"]
        if kind in ("NBIRTH", "DBIRTH"):
            if kind == "NBIRTH":  # a new birth sequence: the node's devices are born again
                for k in [k for k in self.births if k[:2] == (group, node)]:
                    del self.births[k]
                self.births[(group, node, "")] = {}
            aliases = self.births.setdefault(key, {})
            for m in p.metrics:
                if m.alias is not None and m.name is not None:
                    aliases[m.alias] = (m.name, m.datatype)
        known = self.births.get(key, {})
        for m in p.metrics:
            name, dtype = m.name, m.datatype
            if name is None and m.alias is not None and m.alias in known:
                name, dtype = known[m.alias]
            props = " ".join(f"{pr.key}={_shown(pr.value)}" for pr in m.properties)
            lines.append(f"{hms(m.timestamp)}  {'':<7} {where}  {name or f'alias {m.alias}'}"
                         f"  {dtype.name.lower()}  {_value(m)}" + (f"  [{props}]" if props else ""))
        return lines


def rebirth_request(now_ms: int) -> bytes:
    """An NCMD payload asking for a rebirth, as a Sparkplug host sends it (Sparkplug 3.0, 5.17)."""
    return encode_payload(Payload(timestamp=now_ms, metrics=(
        Metric(name=REBIRTH, datatype=DataType.BOOLEAN, value=True),)))


async def spb_tail(broker_url: str, *, group: str = "+", out: TextIO = sys.stdout,
                   count: int | None = None, username: str | None = None,
                   password: str | None = None, rebirth: bool = False) -> None:
    """Print every Sparkplug message of ``group`` (and STATE) as it arrives; stop after
    ``count`` messages if given. With ``rebirth``, ask each node seen without its NBIRTH for
    a rebirth once (NCMD), as a host joining late does, so its aliases can be named."""
    cfg = parse_broker_url(broker_url, username=username, password=password)
    view = SparkplugView()
    shown = 0
    asked: set[tuple[str, str]] = set()
    filters = [f"spBv1.0/{group}/#", "spBv1.0/STATE/+"]
    async with aiomqtt.Client(**client_options(cfg)) as client:
        for f in filters:
            await client.subscribe(f, qos=1)
        print(f"# spb-tail: {broker_url} {' '.join(filters)}", file=out, flush=True)
        async for message in client.messages:
            raw = message.payload
            blob = raw if isinstance(raw, bytes) else str(raw or "").encode()
            print("\n".join(view.render(message.topic.value, blob)), file=out, flush=True)
            node = view.unborn_node(message.topic.value) if rebirth else None
            if node is not None and node not in asked:
                asked.add(node)
                await client.publish(f"spBv1.0/{node[0]}/NCMD/{node[1]}",
                                     rebirth_request(int(time.time() * 1000)), qos=0)
                print(f"# spb-tail: asked {node[0]}/{node[1]} for a rebirth", file=out,
                      flush=True)
            shown += 1
            if count is not None and shown >= count:
                return


@cli_command("edge-agent spb-tail")
def spb_tail_main(argv: Sequence[str] | None = None) -> int:
    """CLI: edge-agent spb-tail --broker URL [--group G] [--count N] [login]."""
    parser = argparse.ArgumentParser(prog="edge-agent spb-tail",
                                     description="Watch the Sparkplug B namespace live.")
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                        help="mqtt://host[:port], mqtts://host[:port] or unix:///path")
    parser.add_argument("--group", default="+", help="Sparkplug group id, or + for all")
    parser.add_argument("--count", type=int, default=None, help="exit after N messages")
    parser.add_argument("--rebirth", action="store_true",
                        help="ask nodes whose NBIRTH was missed for a rebirth (NCMD)")
    add_broker_login(parser)
    args = parser.parse_args(argv)
    try:
        password = broker_password(args.username, args.password_file)
        asyncio.run(spb_tail(check_broker_url(args.broker), group=args.group, count=args.count,
                             username=args.username, password=password,
                             rebirth=args.rebirth))
    except KeyboardInterrupt:
        return 0
    except CommandError:
        raise
    except (aiomqtt.MqttError, EdgeError, ValueError, OSError) as exc:
        raise CommandError(f"{shown_url(args.broker)}: {error_lines(exc)[0]}",
                           status=1) from exc
    return 0


if __name__ == "__main__":
    sys.exit(spb_tail_main())

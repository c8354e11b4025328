"""`edge-agent tail`: watch gateways' state, data and health live on the broker, readably.

Formatting is pure (``format_*``); ``tail`` is the thin shell that subscribes and prints. Times are
shown in UTC (gateways of one fleet sit in several time zones). Version 3 batches decode with
their gateway's schema message: tail subscribes to the schema topics too (each gateway's
current schema is retained, so it comes first) and shows the units the schema names.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import aiomqtt

from edge_agent.codecs.batch import VERSION_SCHEMA, DataBatch, MissingSchema, decode_batch
from edge_agent.codecs.schema import HASH_BYTES, SchemaBook, SeriesDef
from edge_agent.protocol import topics
from edge_agent.protocol.broker import client_options, parse_broker_url
from edge_agent.protocol.errors import CommandError, EdgeError
from edge_agent.protocol.jsonsafe import loads_strict
from edge_agent.protocol.readings import Quality, Reading
from edge_agent.protocol.shell import (
    add_broker_login,
    broker_password,
    check_broker_url,
    cli_command,
    error_lines,
    shown_url,
)
from edge_agent.tools.precision import format_number

# State and health documents are JSON objects of a few levels: these bound what one may cost.
DOC_LIMITS: dict[str, Any] = {"max_bytes": 1024 * 1024, "max_depth": 16, "max_items": 100_000,
                              "max_str": 8192, "allow_float": True}

# Modbus exception codes, Modbus application protocol V1.1b3 section 7.
EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value",
    4: "server device failure", 5: "acknowledge", 6: "server device busy",
    8: "memory parity error", 10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
VALUE_WIDTH = 14


def hms(ts_ms: int | float | None) -> str:
    """HH:MM:SS (UTC) of a timestamp in ms, of now when None, ``??:??:??`` past the calendar."""
    try:
        when = (datetime.datetime.now(datetime.UTC) if ts_ms is None
                else datetime.datetime.fromtimestamp(ts_ms / 1000, datetime.UTC))
    except (OverflowError, ValueError, OSError):
        return "??:??:??"
    return when.strftime("%H:%M:%S")


def printable(line: str) -> str:
    """``line`` safe for a terminal: control characters and lone surrogates escaped, so a
    gateway's text can neither move the cursor nor stop the printing."""
    if line.isprintable():
        return line
    return "".join(c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF
                   else repr(c)[1:-1] for c in line)


def format_value(reading: Reading, unit: str = "", series: SeriesDef | None = None) -> str:
    """A reading's value right-aligned, at the precision its type and scale carry (from the
    schema's ``series`` when known: ``tools.precision``) and with its unit; bad ones as --
    and why."""
    if reading.quality is Quality.GOOD and reading.exception_code is None:
        v = reading.value
        if isinstance(v, bool):
            text = "true" if v else "false"
        elif isinstance(v, int | float):
            text = format_number(v, series)
        elif v is None:
            text = "-"
        else:
            text = str(v)
        return f"{text:>{VALUE_WIDTH}}" + (f" {unit}" if unit else "")
    bad = f"{'--':>{VALUE_WIDTH}}  !! {Quality(reading.quality).value}"
    if reading.exception_code is not None:
        name = EXCEPTION_NAMES.get(reading.exception_code, "unknown exception")
        bad += f" {reading.exception_code:02d} {name}"
    return bad


def format_batch(batch: DataBatch, units: dict[tuple[str, str], str] | None = None,
                 series: dict[tuple[str, str], SeriesDef] | None = None) -> list[str]:
    """One header line, then one aligned line per reading, device by device, in time order;
    units and types from ``series`` (the schema's) or ``units``."""
    series = series or {}
    units = {**{k: s.unit for k, s in series.items()}, **(units or {})}
    order = {d: i for i, d in enumerate(dict.fromkeys(r.device for r in batch.readings))}
    readings = sorted(batch.readings, key=lambda r: (order[r.device], r.ts_ms))  # stable
    first = readings[0].ts_ms if readings else None
    lines = [f"{hms(first)}  {batch.gateway}  data  epoch {batch.epoch} seq {batch.seq}, "
             f"{len(readings)} readings"]
    dev_w = max((len(r.device) for r in readings), default=0)
    pt_w = max((len(r.point) for r in readings), default=0)
    for r in readings:
        key = (r.device, r.point)
        value = format_value(r, units.get(key, ""), series.get(key))
        lines.append(f"{hms(r.ts_ms)}  {batch.gateway}  {r.device:<{dev_w}}  {r.point:<{pt_w}}  "
                     f"{value}")
    return lines


def format_state(gateway: str, doc: dict[str, Any]) -> str:
    """One line for a state change: ONLINE/OFFLINE, version, boot epoch, and why if offline."""
    status = str(doc.get("status", "?")).upper()
    reason = f" ({doc['reason']})" if doc.get("reason") else ""
    return (f"{hms(_ts(doc))}  {gateway}  state  {status}{reason}  "
            f"version {doc.get('version', '?')}  epoch {doc.get('epoch', '?')}")


def _flatten(doc: dict[str, Any], head: str = "") -> list[str]:
    out: list[str] = []
    for key, value in doc.items():
        if key == "ts" and not head:
            continue
        if isinstance(value, dict):
            out += _flatten(value, f"{head}{key}.")
        elif isinstance(value, float):
            out.append(f"{head}{key}={value:.4g}")
        else:
            out.append(f"{head}{key}={value}")
    return out


def format_health(gateway: str, doc: dict[str, Any]) -> str:
    """One line summarising a health document as key=value pairs (nested keys dotted)."""
    return f"{hms(_ts(doc))}  {gateway}  health  {' '.join(_flatten(doc))}"


def _ts(doc: dict[str, Any]) -> int | None:
    ts = doc.get("ts")
    return ts if isinstance(ts, int) and not isinstance(ts, bool) else None


def render(topic: str, payload: bytes, prefix: str,
           book: SchemaBook | None = None) -> tuple[list[str], int]:
    """Lines to print for one message and how many readings they show; never raises.

    Schema messages are kept in ``book`` (a new one if None) for the data batches after them.
    """
    lines, readings = _render(topic, payload, prefix, SchemaBook() if book is None else book)
    return [printable(line) for line in lines], readings


def _render(topic: str, payload: bytes, prefix: str,
            book: SchemaBook) -> tuple[list[str], int]:
    ref = topics.parse_topic(topic, prefix)
    if ref is None:
        return [f"{hms(None)}  ?  warning  message on unexpected topic {topic}"], 0
    try:
        if ref.kind == topics.SCHEMA and payload:
            schema = book.add(ref.gateway, payload)
            return [f"{hms(None)}  {ref.gateway}  schema  {schema.hash.hex()} epoch "
                    f"{schema.epoch}, {len(schema.series)} series, tick {schema.tick_ms} ms"], 0
        if ref.kind == topics.DATA:
            try:
                batch = decode_batch(payload, gateway=ref.gateway, schemas=book.lookup)
            except MissingSchema as exc:
                return [f"{hms(None)}  {ref.gateway}  warning  data batch seq {exc.seq} "
                        f"({len(payload)} bytes) needs schema {exc.schema_hash.hex()}, not "
                        "seen yet"], 0
            known = book.lookup(ref.gateway, payload[1:1 + HASH_BYTES]) \
                if batch.version == VERSION_SCHEMA else None
            series = {(s.device, s.point): s for s in known.series} if known else {}
            return format_batch(batch, series=series), len(batch.readings)
        if not payload:  # a retained message being cleared
            return [f"{hms(None)}  {ref.gateway}  {ref.kind}  (cleared)"], 0
        doc = loads_strict(payload, **DOC_LIMITS)
        if not isinstance(doc, dict):
            raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
        if ref.kind == topics.STATE:
            return [format_state(ref.gateway, doc)], 0
        return [format_health(ref.gateway, doc)], 0
    except Exception as exc:  # a display: whatever a message holds, the next one is shown
        what = "data batch" if ref.kind == topics.DATA else "schema message" \
            if ref.kind == topics.SCHEMA else f"{ref.kind} document"
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return [f"{hms(None)}  {ref.gateway}  warning  undecodable {what} "
                f"({len(payload)} bytes): {problem}"], 0


async def tail(broker_url: str, *, prefix: str = "edge", gateway: str = "+",
               out: TextIO = sys.stdout, count: int | None = None,
               username: str | None = None, password: str | None = None,
               ca_file: Path | None = None, cert_file: Path | None = None,
               key_file: Path | None = None) -> None:
    """Print state, data and health of matching gateways as they arrive; stop after ``count``
    readings if given."""
    cfg = parse_broker_url(broker_url, username=username, password=password, ca_file=ca_file,
                           cert_file=cert_file, key_file=key_file, topic_prefix=prefix)
    filters = [topics.subscription(prefix, kind, gateway)
               for kind in (topics.STATE, topics.SCHEMA, topics.DATA, topics.HEALTH)]
    shown = 0
    book = SchemaBook()
    async with aiomqtt.Client(**client_options(cfg)) as client:
        for topic_filter in filters:
            await client.subscribe(topic_filter, qos=1)
        print(f"# tail: {broker_url} {' '.join(filters)}", file=out, flush=True)
        async for message in client.messages:
            payload = message.payload
            blob = payload if isinstance(payload, bytes) else str(payload or "").encode()
            lines, readings = render(message.topic.value, blob, prefix, book)
            if count is not None and shown + readings > count:
                keep = count - shown  # lines[0] is the batch header
                lines, readings = lines[:1 + keep], keep
            print("\n".join(lines), file=out, flush=True)
            shown += readings
            if count is not None and shown >= count:
                return


@cli_command("edge-agent tail")
def tail_main(argv: Sequence[str] | None = None) -> int:
    """CLI: edge-agent tail --broker URL [--prefix P] [--gateway G] [--count N] [login, TLS]."""
    parser = argparse.ArgumentParser(prog="edge-agent tail",
                                     description="Watch gateways' state, data and health live.")
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                        help="mqtt://host[:port], mqtts://host[:port] or unix:///path")
    parser.add_argument("--prefix", default="edge", help="topic prefix (default: edge)")
    parser.add_argument("--gateway", default="+", help="gateway id, or + for all (default)")
    parser.add_argument("--count", type=int, default=None, help="exit after N readings")
    add_broker_login(parser)
    parser.add_argument("--ca-file", type=Path)
    parser.add_argument("--cert-file", type=Path)
    parser.add_argument("--key-file", type=Path)
    args = parser.parse_args(argv)
    try:
        password = broker_password(args.username, args.password_file)
        asyncio.run(tail(check_broker_url(args.broker), prefix=args.prefix, gateway=args.gateway,
                         count=args.count, username=args.username, password=password,
                         ca_file=args.ca_file, cert_file=args.cert_file,
                         key_file=args.key_file))
    except KeyboardInterrupt:
        return 0
    except CommandError:
        raise  # a login given wrongly: a usage error like any other command's
    except (aiomqtt.MqttError, EdgeError, ValueError, OSError) as exc:
        # tail has always ended with 1 when it cannot watch, a bad URL included; one line
        # naming the broker is all a watcher needs
        raise CommandError(f"{shown_url(args.broker)}: {error_lines(exc)[0]}",
                           status=1) from exc
    return 0


if __name__ == "__main__":
    sys.exit(tail_main())

"""The ``edge-agent`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from edge_agent import __version__
from edge_agent.protocol.shell import check_broker_url, run_cli, run_until_signal, setup_logging

USAGE = """edge-agent COMMAND [options]

commands:
  run SITE.toml [--broker URL]     poll the site's devices and report over MQTT
  check-config SITE.toml           validate a site config; print a summary or every error
  simulate SITE.toml               simulate every device a site config names
  tail [--broker URL]              print readings, state and health as they arrive
  spb-tail [--broker URL]          print the Sparkplug B messages ([sparkplug]) as they arrive
  decode FILE|- [--schema S.json]  decode a data batch (a file or standard input)
  ingest --broker URL --db URL     alias of `edge-fleet ingest` (the operations centre's
                                   ingest: every gateway's readings stored once, gaps noted)
  enroll --fleet URL --token-file F
                                   enrol this gateway with the fleet service
  scan PORT                        find the devices on a serial bus; write a draft config
  read -c SITE.toml DEVICE POINT   read one point now
  write -c SITE.toml DEVICE POINT V
                                   write one point (checks access and range, asks first)
  doctor -c SITE.toml              check port, broker, TLS, clock, disk, spool, config, budget
  install-service --config SITE.toml
                                   write a systemd unit (watchdog, restart, dialout user)
  supervise --root R --state-dir S -- run SITE.toml
                                   run the current release; health-gate, commit or roll back
                                   a new one by itself (docs/updates.md)
  update bootstrap|stage|status    install the first release, stage a signed one, the journal
"""


def cmd_run(argv: list[str]) -> int:
    """``edge-agent run``: the agent itself."""
    ap = argparse.ArgumentParser(prog="edge-agent run", description="Poll and report a site.")
    ap.add_argument("config", type=Path)
    ap.add_argument("--broker", help="broker URL overriding the config's [mqtt].url")
    ap.add_argument("--health-gate-s", type=float, default=30.0,
                    help="how long a config from the fleet must stay healthy before it is "
                         "committed (default 30)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    from edge_agent.config.loader import load_config
    from edge_agent.control.gateway import Gateway

    if args.broker is not None:
        check_broker_url(args.broker)  # the login comes from the config, never the URL
    load_config(args.config, broker_url=args.broker)  # fail before starting anything

    async def main(stop: asyncio.Event) -> None:
        # pymodbus clients bind to the running loop, so the agent is built inside it.
        gateway = Gateway(args.config, broker_url=args.broker, health_gate_s=args.health_gate_s)
        await gateway.run(stop)

    run_until_signal(main)
    return 0


def cmd_check_config(argv: list[str]) -> int:
    """``edge-agent check-config``."""
    ap = argparse.ArgumentParser(prog="edge-agent check-config")
    ap.add_argument("config")
    args = ap.parse_args(argv)
    from edge_agent.tools.checkconfig import check_config_main

    return check_config_main(args.config)


def cmd_simulate(argv: list[str]) -> int:
    """``edge-agent simulate``."""
    setup_logging(False)
    logging.getLogger("pymodbus").setLevel(logging.WARNING)  # its INFO lines are chatter
    from edge_agent.tools.simulate import simulate_main

    return simulate_main(argv)


def cmd_tail(argv: list[str]) -> int:
    """``edge-agent tail``."""
    from edge_agent.tools.tail import tail_main

    return tail_main(argv)


def cmd_decode(argv: list[str]) -> int:
    """``edge-agent decode``: print a data batch read from a file or stdin."""
    ap = argparse.ArgumentParser(prog="edge-agent decode")
    ap.add_argument("file", help="a file holding one data batch, or - for standard input")
    ap.add_argument("--schema", type=Path, action="append", default=[],
                    help="a schema message (a version 3 batch needs its gateway's; "
                    "state_dir/schemas/ keeps a gateway's); may be repeated")
    ap.add_argument("--gateway", help="the gateway of a version 3 batch (its topic's; "
                    "default: the gateway the schema names)")
    args = ap.parse_args(argv)
    from edge_agent.codecs.batch import decode_batch
    from edge_agent.codecs.schema import SchemaBook, parse_schema
    from edge_agent.protocol.errors import CodecError

    book = SchemaBook()
    gateway = args.gateway
    for path in args.schema:
        try:
            schema = parse_schema(path.read_bytes())
        except CodecError as exc:
            raise CodecError(f"{path}: {exc}") from exc
        book.put(schema)
        gateway = gateway or schema.gateway
    blob = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    try:
        batch = decode_batch(blob, gateway=gateway, schemas=book.lookup)
    except CodecError as exc:
        raise CodecError(f"{args.file}: {exc}") from exc
    print(f"gateway {batch.gateway} epoch {batch.epoch} seq {batch.seq}: "
          f"{len(batch.readings)} readings")
    for r in batch.readings:
        value = r.value if r.quality == "good" else f"<{r.quality}" + (
            f" {r.exception_code}>" if r.exception_code is not None else ">")
        print(f"{r.ts_ms}\t{r.device}\t{r.point}\t{value}")
    return 0


def cmd_ingest(argv: list[str]) -> int:
    """``edge-agent ingest``: an alias that becomes ``edge-fleet ingest`` (never returns).

    The ingest belongs to the operations centre, which the gateway never imports: the alias
    replaces this process with the fleet's command line, so scripts that call it keep working.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "edge_agent.fleet.cli", "ingest", *argv])


def _lazy(module: str, name: str) -> Callable[[list[str]], int]:
    """A command's entry point, imported only when that command runs."""
    import importlib

    entry: Callable[[list[str]], int] = getattr(importlib.import_module(module), name)
    return entry


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "simulate": cmd_simulate,
    "tail": cmd_tail,
    "spb-tail": lambda argv: _lazy("edge_agent.tools.spbtail", "spb_tail_main")(argv),
    "decode": cmd_decode,
    "ingest": cmd_ingest,
    "enroll": lambda argv: _lazy("edge_agent.tools.enroll", "enroll_main")(argv),
    "scan": lambda argv: _lazy("edge_agent.tools.scan", "scan_main")(argv),
    "read": lambda argv: _lazy("edge_agent.tools.commission", "read_main")(argv),
    "write": lambda argv: _lazy("edge_agent.tools.commission", "write_main")(argv),
    "doctor": lambda argv: _lazy("edge_agent.tools.doctor", "doctor_main")(argv),
    "install-service": lambda argv: _lazy("edge_agent.tools.service", "install_service_main")(argv),
    "supervise": lambda argv: _lazy("edge_agent.update.supervisor", "supervise_main")(argv),
    "update": lambda argv: _lazy("edge_agent.tools.update", "update_main")(argv),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``edge-agent`` console script."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] == "--version":
        print(__version__)
        return 0
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"edge-agent: unknown command {args[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return run_cli(f"edge-agent {args[0]}", command, args[1:])


if __name__ == "__main__":
    sys.exit(main())

"""Commissioning: ``edge-agent read DEVICE POINT`` and ``edge-agent write DEVICE POINT VALUE``.

Both talk to the bus directly through the same transport the agent uses, so the agent
must not hold the port: a serial port the agent (or anything else) has open is locked
(pymodbus opens ports with pyserial's exclusive flock), and the commands say who holds
it instead of failing obscurely. A write checks the profile first (the point must be
``read-write`` and the value must fit the point's type after scale and offset), shows
what will be sent, asks for confirmation, writes, and reads the point back.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from edge_agent.config.model import SiteConfig
from edge_agent.drivers.bus import DeviceConfig, SerialBus
from edge_agent.drivers.dlt645.transport import READ_ONLY
from edge_agent.drivers.modbus.decode import DecodeFailure, decode_point, encode_write
from edge_agent.drivers.modbus.transport import BusTransport, Reply
from edge_agent.drivers.model import Access, DataType, Point
from edge_agent.protocol.errors import CommandError, ConfigError, DeviceError
from edge_agent.protocol.readings import Value
from edge_agent.protocol.shell import cli_command
from edge_agent.tools.meter_read import read_meter_point
from edge_agent.tools.precision import format_number, point_series

DEFAULT_CONFIG = Path(os.environ.get("EDGE_AGENT_CONFIG", "/etc/edge-agent/site.toml"))

# Modbus application protocol V1.1b3, section 7: what an exception code means.
EXCEPTION_TEXT = {
    1: "illegal function (the device does not support this request)",
    2: "illegal data address (the device has no such register)",
    3: "illegal data value (the device refused the value)",
    4: "server device failure",
    5: "acknowledge (accepted, still processing)",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
TRUE_WORDS = {"1", "true", "on", "yes"}
FALSE_WORDS = {"0", "false", "off", "no"}


# ---- port checks (used by scan and doctor too) ----------------------------------------

def _holders(port: str) -> list[str]:
    """'pid (command)' of every process with ``port`` open, as far as /proc lets us see."""
    try:
        target = os.path.realpath(port)
    except OSError:
        return []
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        fd_dir = f"/proc/{pid}/fd"
        try:
            links = [os.readlink(f"{fd_dir}/{fd}") for fd in os.listdir(fd_dir)]
        except OSError:
            continue
        if target in links and int(pid) != os.getpid():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmd = "?"
            found.append(f"{pid} ({cmd[:80]})")
    return found


def port_in_use(port: str) -> str | None:
    """None if ``port`` can be opened exclusively now, else a message saying why not.

    URLs (socket://, rfc2217://) are not checked: they are not local ports.
    """
    if "://" in port:
        return None
    import serial  # pyserial: imported here so pure users of this module need no port

    try:
        s = serial.Serial(port, exclusive=True)
    except serial.SerialException as exc:
        if "lock" in str(exc).lower():
            who = _holders(port)
            return (f"serial port {port} is in use" + (f" by {', '.join(who)}" if who else "")
                    + ": stop the agent first (systemctl stop edge-agent); read, write and "
                    "scan talk to the bus directly")
        return f"cannot open serial port {port}: {exc}"
    s.close()
    return None


def serial_setting_error(port: str, bus: SerialBus) -> str | None:
    """None if the port accepts the bus's baud rate and framing, else why not.

    Linux pseudo-terminals refuse even and odd parity, sometimes with EINVAL and sometimes
    by silently clearing PARENB, so the setting is read back after opening.
    """
    if "://" in port:
        return None
    import termios

    import serial

    label = f"{bus.baudrate} 8{bus.parity.value}{bus.stopbits}"
    hint = " (pseudo-terminals refuse even and odd parity)" if "pts" in os.path.realpath(
        port) else ""
    try:
        s = serial.Serial(port, baudrate=bus.baudrate, parity=bus.parity.value,
                          stopbits=bus.stopbits, bytesize=bus.bytesize, exclusive=True)
    except Exception as exc:  # SerialException, OSError, ValueError and termios.error
        return f"port {port} refuses {label}: {exc}{hint}"
    try:
        has_parity = bool(termios.tcgetattr(s.fd)[2] & termios.PARENB)
    except termios.error:
        has_parity = bus.parity.value != "N"
    finally:
        s.close()
    if has_parity != (bus.parity.value != "N"):
        return f"port {port} silently ignores parity {bus.parity.value}{hint}"
    return None


# ---- pure parts ----------------------------------------------------------------------

def find_target(cfg: SiteConfig, device: str, point: str) -> tuple[DeviceConfig, Point]:
    """The device and point named on the command line; ConfigError lists what exists."""
    dev = next((d for d in cfg.devices if d.name == device), None)
    if dev is None:
        raise ConfigError(f"{cfg.source}: no device {device!r}; devices: "
                          + ", ".join(d.name for d in cfg.devices))
    pt = next((p for p in dev.points if p.name == point), None)
    if pt is None:
        raise ConfigError(f"device {device!r} (profile {dev.profile.name}) has no point "
                          f"{point!r}; points: " + ", ".join(p.name for p in dev.points))
    return dev, pt


def parse_value(point: Point, text: str) -> Value:
    """The command-line text as a value of the point's type; ValueError says what fits."""
    t = text.strip()
    if point.table.is_bit or point.type is DataType.BOOL:
        if t.lower() in TRUE_WORDS:
            return True
        if t.lower() in FALSE_WORDS:
            return False
        raise ValueError(f"{point.name}: {text!r} is not a switch value; expected on/off, "
                         "true/false or 1/0")
    if point.type is DataType.STRING:
        return text
    try:
        number = float(t)
    except ValueError:
        raise ValueError(f"{point.name}: {text!r} is not a number") from None
    return int(number) if number.is_integer() and "." not in t and "e" not in t.lower() \
        else number


def check_write(dev: DeviceConfig, point: Point, value: Value) -> list[int] | list[bool]:
    """What to send for ``value``: refuses read-only points and values the type cannot hold."""
    if point.access is not Access.READ_WRITE:
        raise ValueError(f"{dev.name}.{point.name} is read-only in profile {dev.profile.name!r} "
                         f"({point.table.value} {point.address}); only read-write points are "
                         "written")
    try:
        return encode_write(point, value)  # limits, the type's range, exactness
    except ValueError as exc:
        raise ValueError(f"{dev.name}.{exc}") from None


def describe_failure(reply: Reply, where: str) -> str:
    """A sentence for a reply that carried no data."""
    if reply.exception_code is not None:
        meaning = EXCEPTION_TEXT.get(reply.exception_code, "unknown exception code")
        return f"{where}: the device answered exception {reply.exception_code}: {meaning}"
    return f"{where}: no reply ({reply.error}); check unit id, wiring and line settings"


def show(point: Point, value: Value) -> str:
    """A value at the precision its type and scale carry (``tools.precision``), with its unit."""
    text = (format_number(value, point_series(point))
            if isinstance(value, int | float) and not isinstance(value, bool) else str(value))
    return f"{text}{' ' + point.unit if point.unit else ''}"


# ---- the commands ----------------------------------------------------------------------

def _load(path: Path, device: str, point: str) -> tuple[SiteConfig, DeviceConfig, Point]:
    from edge_agent.config.loader import load_config

    cfg = load_config(path)
    dev, pt = find_target(cfg, device, point)
    return cfg, dev, pt


def _meter(path: Path, device: str) -> tuple[SiteConfig, DeviceConfig] | None:
    """The config and the DL/T 645 meter called ``device``, if it is one."""
    from edge_agent.config.loader import load_config

    cfg = load_config(path)
    dev = next((d for d in cfg.devices if d.name == device and d.meter_points), None)
    return None if dev is None else (cfg, dev)


async def _read_point(transport: BusTransport, dev: DeviceConfig, pt: Point) -> Reply:
    return await transport.read(dev.unit_id, pt.table, pt.address, pt.count)


def _where(cfg: SiteConfig, dev: DeviceConfig, pt: Point) -> str:
    return (f"{dev.name}.{pt.name} (unit {dev.unit_id}, {pt.table.value} {pt.address}, "
            f"bus {dev.bus})")


def _claim_bus(cfg: SiteConfig, dev: DeviceConfig) -> None:
    """DeviceError naming who holds the device's serial port, if anyone does."""
    bus = cfg.buses[dev.bus]
    busy = port_in_use(bus.port) if isinstance(bus, SerialBus) else None
    if busy:
        raise DeviceError(busy)


def _decode(pt: Point, data: list[int] | list[bool]) -> Value:
    return decode_point(pt, data[:pt.count])


async def _read(cfg: SiteConfig, dev: DeviceConfig, pt: Point, out: TextIO) -> int:
    transport = BusTransport(cfg.buses[dev.bus])
    try:
        reply = await _read_point(transport, dev, pt)
    finally:
        await transport.close()
    where = _where(cfg, dev, pt)
    if reply.data is None:
        print(describe_failure(reply, where), file=out)
        return 1
    try:
        value = _decode(pt, reply.data)
    except DecodeFailure as exc:
        print(f"{where}: cannot decode {list(reply.data)}: {exc}", file=out)
        return 1
    print(f"{where} = {show(pt, value)}  (raw {list(reply.data)}, "
          f"{reply.latency_s * 1000:.0f} ms)", file=out)
    return 0


def _common(prog: str, extra: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog)
    ap.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG,
                    help="site config (default: %(default)s, or $EDGE_AGENT_CONFIG)")
    ap.add_argument("device")
    ap.add_argument("point")
    extra(ap)
    return ap


@cli_command("edge-agent read")
def read_main(argv: list[str], out: TextIO | None = None) -> int:
    """``edge-agent read DEVICE POINT``: 0 with the value printed, 1 device failure, 2 usage."""
    args = _common("edge-agent read", lambda ap: None).parse_args(argv)
    out = out or sys.stdout
    meter = _meter(args.config, args.device)
    if meter is not None:
        cfg, dev = meter
        _claim_bus(cfg, dev)
        return asyncio.run(read_meter_point(cfg, dev, args.point, out))
    cfg, dev, pt = _load(args.config, args.device, args.point)
    _claim_bus(cfg, dev)
    return asyncio.run(_read(cfg, dev, pt, out))


async def _write(cfg: SiteConfig, dev: DeviceConfig, pt: Point, value: Value,
                 words: list[int] | list[bool], confirm: Callable[[str], bool],
                 out: TextIO) -> int:
    where = _where(cfg, dev, pt)
    transport = BusTransport(cfg.buses[dev.bus])
    try:
        before = await _read_point(transport, dev, pt)
        now = _decode(pt, before.data) if before.data is not None else None
        current = show(pt, now) if now is not None else describe_failure(before, "unreadable")
        question = (f"write {show(pt, value)} to {where}? it is now {current}; "
                    f"sending {list(words)}")
        if not confirm(question):
            print("nothing written", file=out)
            return 1
        reply = await transport.write(dev.unit_id, pt.table, pt.address, words)
        if reply.data is None:  # an exception reply or no reply at all
            print(describe_failure(reply, where), file=out)
            return 1
        after = await _read_point(transport, dev, pt)
    finally:
        await transport.close()
    if after.data is None:
        print(f"written; {describe_failure(after, 'read back')}", file=out)
        return 1
    got = _decode(pt, after.data)
    if got != _decode(pt, words):
        print(f"written, but {where} reads back {show(pt, got)} (the device changed or "
              "limited the value)", file=out)
        return 1
    print(f"written: {where} = {show(pt, got)}", file=out)
    return 0


def _ask(question: str) -> bool:
    if not sys.stdin.isatty():
        print(f"{question}\nrefusing without a terminal to confirm: add --yes", file=sys.stderr)
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


@cli_command("edge-agent write")
def write_main(argv: list[str], out: TextIO | None = None,
               confirm: Callable[[str], bool] | None = None) -> int:
    """``edge-agent write DEVICE POINT VALUE``: asks first unless --yes; 0 when read back equal."""
    def extra(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("value")
        ap.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    args = _common("edge-agent write", extra).parse_args(argv)
    out = out or sys.stdout
    if _meter(args.config, args.device) is not None:
        raise CommandError(f"{args.device}: {READ_ONLY}", status=1)
    cfg, dev, pt = _load(args.config, args.device, args.point)
    value = parse_value(pt, args.value)  # a bad value or a read-only point: refused before
    words = check_write(dev, pt, value)  # the port is touched
    _claim_bus(cfg, dev)
    ask = (lambda _q: True) if args.yes else (confirm or _ask)
    return asyncio.run(_write(cfg, dev, pt, value, words, ask, out))

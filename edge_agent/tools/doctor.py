"""``edge-agent doctor``: is this gateway ready to run? Each check says pass, warn or fail.

The verdicts are pure functions of facts (file modes, group lists, dates, byte counts,
connection outcomes); ``gather`` collects the facts from the machine. Every warn or fail
carries a one-line remedy an installer can act on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import grp
import os
import shutil
import socket
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TextIO

from edge_agent.config.model import SiteConfig
from edge_agent.drivers.budget import line_budgets
from edge_agent.drivers.bus import SerialBus
from edge_agent.drivers.modbus.timing import BusBudget
from edge_agent.protocol.broker import MqttConfig
from edge_agent.protocol.errors import ConfigError
from edge_agent.protocol.shell import cli_command

MIN_FREE_BYTES = 50 * 2**20        # below this the spool cannot hold an outage: fail
LOW_FREE_BYTES = 500 * 2**20       # below this (or 10 % of the disk): warn
CERT_WARN_DAYS = 30
EARLIEST_SANE_YEAR = 2025          # a clock before this was never set (no RTC, no NTP yet)
SERIAL_GROUP = "dialout"


class Level(StrEnum):
    """A check's verdict."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Check:
    """One verdict: what was checked, the finding, and how to fix it."""

    name: str
    level: Level
    detail: str
    remedy: str = ""


# ---- pure verdicts -----------------------------------------------------------------

def check_port(port: str, exists: bool, can_rw: bool, group: str | None,
               in_group: bool) -> Check:
    """The serial port is there and this user may open it."""
    name = f"serial {port}"
    if not exists:
        return Check(name, Level.FAIL, "no such device",
                     "plug in the RS-485 adapter, or fix the port in the config "
                     "(ls /dev/serial/by-id/)")
    if can_rw:
        return Check(name, Level.PASS, "present and readable/writable")
    if group and not in_group:
        return Check(name, Level.FAIL, f"permission denied; the port belongs to group {group}",
                     f"add the user to it: sudo usermod -aG {group} $USER (log in again), or "
                     "run as the service (install-service puts it in dialout)")
    return Check(name, Level.FAIL, "permission denied", "check the port's owner and mode")


def check_stable_path(port: str, by_id: Sequence[str]) -> Check:
    """A USB adapter named by /dev/ttyUSBn can change name on reboot; suggest its by-id path."""
    name = f"stable path {port}"
    if port.startswith(("/dev/serial/by-id/", "/dev/serial/by-path/")) or "://" in port:
        return Check(name, Level.PASS, "stable name")
    if by_id:
        return Check(name, Level.WARN, "may be renamed when adapters are re-plugged or reboot "
                     "in another order", f"use port = \"{by_id[0]}\" in the config")
    if os.path.basename(port).startswith(("ttyUSB", "ttyACM")):
        return Check(name, Level.WARN, "USB adapter without a by-id link",
                     "check ls -l /dev/serial/by-id/ and use that path")
    return Check(name, Level.PASS, "not a hot-plugged adapter")


def check_certificate(label: str, not_before: dt.datetime, not_after: dt.datetime,
                      now: dt.datetime) -> Check:
    """A certificate is valid now and not about to expire."""
    name = f"certificate {label}"
    days = (not_after - now).total_seconds() / 86400
    if now < not_before:
        return Check(name, Level.FAIL, f"not valid before {not_before:%Y-%m-%d %H:%M} UTC",
                     "check the gateway's clock, or reissue the certificate")
    if days < 0:
        return Check(name, Level.FAIL, f"expired on {not_after:%Y-%m-%d}",
                     "request a new certificate from the operations centre")
    if days < CERT_WARN_DAYS:
        return Check(name, Level.WARN, f"expires on {not_after:%Y-%m-%d} ({days:.0f} days)",
                     "renew it before it expires (the uplink stops at expiry)")
    return Check(name, Level.PASS, f"valid until {not_after:%Y-%m-%d} ({days:.0f} days)")


def check_clock(now: dt.datetime, synced: bool | None) -> Check:
    """The clock is set (TLS and timestamps depend on it) and kept in step by NTP."""
    if now.year < EARLIEST_SANE_YEAR:
        return Check("clock", Level.FAIL, f"reads {now:%Y-%m-%d}: never set",
                     "enable NTP (timedatectl set-ntp true) and give the gateway network time")
    if synced is False:
        return Check("clock", Level.WARN, f"{now:%Y-%m-%d %H:%M} UTC, not synchronised",
                     "enable NTP: timedatectl set-ntp true; check UDP 123 is allowed")
    if synced is None:
        return Check("clock", Level.WARN, f"{now:%Y-%m-%d %H:%M} UTC, sync state unknown",
                     "check timedatectl status")
    return Check("clock", Level.PASS, f"{now:%Y-%m-%d %H:%M} UTC, NTP synchronised")


def check_disk(path: Path, free: int, total: int, spool_cap: int | None = None) -> Check:
    """Free space for the spool to hold readings through an uplink outage."""
    name = f"disk {path}"
    mb = free / 2**20
    if free < MIN_FREE_BYTES:
        return Check(name, Level.FAIL, f"{mb:.0f} MB free",
                     "free space (journalctl --vacuum-size=50M, old logs) or a larger card")
    if spool_cap is not None and free < spool_cap:
        return Check(name, Level.WARN, f"{mb:.0f} MB free, less than the spool's cap of "
                     f"{spool_cap / 2**20:.0f} MB", "free space, or lower [spool] max_bytes")
    if free < LOW_FREE_BYTES or free < total * 0.1:
        return Check(name, Level.WARN, f"{mb:.0f} MB free of {total / 2**20:.0f} MB",
                     "free space: a long outage fills the spool")
    return Check(name, Level.PASS, f"{mb:.0f} MB free")


def check_budget(b: BusBudget) -> Check:
    """The line carries the configured polls (timing model of Modbus RTU or DL/T 645)."""
    level = {"ok": Level.PASS, "warn": Level.WARN, "over": Level.FAIL}[b.status]
    remedy = "" if level is Level.PASS else (
        f"poll no faster than every {b.comfortable_interval_s:.2f} s, raise the baud rate, "
        "or split the devices over two lines")
    return Check(f"bus budget {b.bus}", level, f"utilisation {b.utilisation:.0%} at "
                 f"{b.baudrate} {b.framing}; fastest common poll {b.fastest_interval_s:.2f} s",
                 remedy)


# ---- fact gathering (I/O) -------------------------------------------------------------

def _port_checks(bus: SerialBus) -> list[Check]:
    port = bus.port
    if "://" in port:
        return [Check(f"serial {port}", Level.PASS, "network serial URL, not a local port")]
    exists = os.path.exists(port)
    can_rw = exists and os.access(port, os.R_OK | os.W_OK)
    group = None
    in_group = False
    if exists:
        gid = os.stat(port).st_gid
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            group = str(gid)
        in_group = gid in os.getgroups() or gid == os.getegid()
    checks = [check_port(port, exists, can_rw, group, in_group)]
    if exists:
        real = os.path.realpath(port)
        links = sorted(p for p in glob.glob("/dev/serial/by-id/*")
                       if os.path.realpath(p) == real)
        checks.append(check_stable_path(port, links))
        from edge_agent.tools.commission import port_in_use

        busy = port_in_use(port) if can_rw else None
        if busy:
            checks.append(Check(f"serial {port} lock", Level.WARN, busy.split(": stop")[0],
                                "expected while the agent runs; stop it to scan or commission"))
    return checks


def _broker_check(m: MqttConfig, timeout_s: float = 3.0) -> Check:
    name = f"broker {m.url}"
    try:
        if m.scheme == "unix":
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(timeout_s)
                s.connect(m.host)
            return Check(name, Level.PASS, "socket accepts connections")
        with socket.create_connection((m.host, m.port), timeout=timeout_s) as raw:
            if not m.tls:
                return Check(name, Level.PASS, "TCP connection accepted")
            ctx = ssl.create_default_context(cafile=str(m.ca_file) if m.ca_file else None)
            if m.cert_file and m.key_file:
                ctx.load_cert_chain(str(m.cert_file), str(m.key_file))
            with ctx.wrap_socket(raw, server_hostname=m.host) as tls:
                return Check(name, Level.PASS, f"TLS handshake done ({tls.version()}), "
                             "server certificate verified")
    except ssl.SSLCertVerificationError as exc:
        return Check(name, Level.FAIL, f"server certificate not trusted: {exc.verify_message}",
                     "set mqtt.ca_file to the operations centre's CA, or check the clock")
    except (OSError, ssl.SSLError) as exc:
        return Check(name, Level.FAIL, f"unreachable: {exc}",
                     "check the network (ip route, DNS), the firewall, and the URL and port")


def _cert_check(label: str, path: Path, now: dt.datetime) -> Check:
    try:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ImportError:
        return Check(f"certificate {label}", Level.WARN, "cannot check: the cryptography "
                     "package is missing", "pip install cryptography")
    except (OSError, ValueError) as exc:
        return Check(f"certificate {label}", Level.FAIL, f"{path}: not a PEM certificate ({exc})",
                     "copy the certificate file again")
    return check_certificate(f"{label} {path.name}", cert.not_valid_before_utc,
                             cert.not_valid_after_utc, now)


def _ntp_synced() -> bool | None:
    try:
        done = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = done.stdout.strip()
    return {"yes": True, "no": False}.get(value) if done.returncode == 0 else None


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _spool_check(state_dir: Path) -> Check:
    name = f"spool {state_dir}"
    if not state_dir.exists():
        return Check(name, Level.WARN, "state directory does not exist yet",
                     "the service creates it (StateDirectory=); or mkdir -p it for the agent's "
                     "user")
    if not os.access(state_dir, os.W_OK | os.X_OK):
        return Check(name, Level.FAIL, "not writable by this user",
                     "chown it to the service user (edge-agent)")
    bad = []
    dbs = sorted(state_dir.glob("*.db")) + sorted(state_dir.glob("*.sqlite"))
    for db in dbs:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2) as con:
                result = con.execute("PRAGMA quick_check").fetchone()
            if not result or result[0] != "ok":
                bad.append(f"{db.name}: {result[0] if result else 'no answer'}")
        except sqlite3.Error as exc:
            bad.append(f"{db.name}: {exc}")
    if bad:
        return Check(name, Level.FAIL, "damaged: " + "; ".join(bad),
                     "stop the agent, move the damaged file aside; unsent readings in it are "
                     "lost")
    return Check(name, Level.PASS, f"writable; {len(dbs)} database(s) pass quick_check")


def check_refusals(path: Path, now_s: float) -> Check:
    """The register holes the agent learned (its ``learned-holes.json``), device by device."""
    from edge_agent.runtime.holes import describe_ranges, read_holes

    name = "refused registers"
    holes, problem = read_holes(path)
    if problem:
        return Check(name, Level.WARN, f"cannot read them: {problem}",
                     "the agent starts without them and learns them again; delete the file")
    if not holes:
        return Check(name, Level.PASS, "no device refuses a configured register")
    lines = [f"{dev} (unit {h.unit_id} on {h.bus}): {describe_ranges(h.ranges)} refused "
             f"(exception 2), learned {max(0.0, now_s - h.learned_at) / 3600:.1f} h ago"
             for dev, h in sorted(holes.items())]
    return Check(name, Level.WARN, "; ".join(lines),
                 "the agent asks them again 30 s after start, then at most every 15 min; a "
                 "device refuses registers while booting or locked, but a refusal that stays "
                 "means the profile maps registers this device lacks: check its register map")


def gather(config: Path, *, broker: bool = True, now: dt.datetime | None = None) -> list[Check]:
    """Run every check against this machine and ``config``."""
    from edge_agent.config.loader import load_config

    now = now or dt.datetime.now(dt.UTC)
    checks = [check_clock(now, _ntp_synced())]
    try:
        cfg: SiteConfig | None = load_config(config)
    except ConfigError as exc:
        cfg = None
        n = len(exc.problems)
        checks.append(Check(f"config {config}", Level.FAIL, f"{n} problem(s): {exc.problems[0]}",
                            f"run edge-agent check-config {config} for all of them"))
    if cfg is None:
        usage = shutil.disk_usage(_existing(Path("/var/lib")))
        checks.append(check_disk(_existing(Path("/var/lib")), usage.free, usage.total))
        return checks
    checks.append(Check(f"config {config}", Level.PASS,
                        f"valid: {len(cfg.buses)} buses, {len(cfg.devices)} devices"))
    for bus in cfg.buses.values():
        if isinstance(bus, SerialBus):
            checks += _port_checks(bus)
    checks += [check_budget(b) for b in line_budgets(cfg).values()]
    if broker:
        checks.append(_broker_check(cfg.mqtt))
    for label, path in (("CA", cfg.mqtt.ca_file), ("client", cfg.mqtt.cert_file)):
        if path is not None:
            checks.append(_cert_check(label, path, now))
    where = _existing(cfg.state_dir)
    usage = shutil.disk_usage(where)
    spool = getattr(cfg, "spool", None)
    cap = getattr(spool, "max_bytes", None)
    checks.append(check_disk(where, usage.free, usage.total, cap))
    checks.append(_spool_check(cfg.state_dir))
    from edge_agent.runtime.holes import HOLES_FILE

    checks.append(check_refusals(cfg.state_dir / HOLES_FILE, now.timestamp()))
    return checks


def render(checks: Sequence[Check]) -> str:
    """The report: one line per check, a remedy under each warn and fail, then a total."""
    lines = []
    for c in checks:
        lines.append(f"{c.level.value.upper():4}  {c.name}: {c.detail}")
        if c.remedy and c.level is not Level.PASS:
            lines.append(f"      -> {c.remedy}")
    counts = {lv: sum(c.level is lv for c in checks) for lv in Level}
    lines.append(f"{counts[Level.PASS]} pass, {counts[Level.WARN]} warn, "
                 f"{counts[Level.FAIL]} fail")
    return "\n".join(lines)


@cli_command("edge-agent doctor")
def doctor_main(argv: list[str], out: TextIO | None = None) -> int:
    """``edge-agent doctor``: 0 when nothing fails (warnings allowed), 1 otherwise."""
    from edge_agent.tools.commission import DEFAULT_CONFIG

    ap = argparse.ArgumentParser(prog="edge-agent doctor",
                                 description="Check that this gateway is ready to run.")
    ap.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("--no-broker", action="store_true", help="skip the broker connection test")
    args = ap.parse_args(argv)
    checks = gather(args.config, broker=not args.no_broker)
    print(render(checks), file=out or sys.stdout)
    return 1 if any(c.level is Level.FAIL for c in checks) else 0

"""Site config: read a TOML file into a SiteConfig, reporting every problem at once.

Loading is pure: it reads the config, its profiles and its TLS/password files and writes
nothing, so a rejected config changes nothing. docs/config.md is the reference of every key.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge_agent.config.model import BatchConfig, SiteConfig, SpoolConfig, SpoolPolicy, SpoolSync
from edge_agent.drivers.bus import Bus, DeviceConfig, Parity, SerialBus, TcpBus, TcpFraming
from edge_agent.drivers.model import DataType, Point
from edge_agent.drivers.profile import DeviceProfile, parse_point, parse_profile, shipped_profiles
from edge_agent.protocol import topics
from edge_agent.protocol.broker import URL_TEXT, MqttConfig, split_broker_url
from edge_agent.protocol.errors import ConfigError
from edge_agent.protocol.tomlcheck import Checker, load_toml

SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
SAFE_ID_TEXT = "1-64 letters, digits, '-' or '_' (a safe MQTT topic segment)"
STANDARD_BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
MIN_POLL_S = 0.05
# The Modbus over serial line V1.02 2.2 address space: 0 is broadcast, 248-255 reserved.
UNIT_TEXT = "a unit id from 1 to 247 (0 is broadcast, 248-255 reserved: serial line V1.02, 2.2)"

TOP_KEYS = ("gateway", "mqtt", "batch", "planner", "spool", "buses", "devices")
SPOOL_KEYS = ("max_bytes", "policy", "synchronous", "group_commit_ms", "replay_msgs_per_s",
              "replay_bytes_per_s", "live_first")
# Below this the spool's own SQLite files (WAL index, WAL reserve, schema) leave no room for data.
MIN_SPOOL_BYTES = 256 * 1024
GATEWAY_KEYS = ("id", "site", "state_dir", "health_interval_s")
MQTT_KEYS = ("url", "username", "password", "password_file", "ca_file", "cert_file", "key_file",
             "client_id", "topic_prefix", "keepalive_s")
SERIAL_KEYS = ("type", "port", "baudrate", "parity", "stopbits", "inter_frame_gap_ms",
               "timeout_ms", "retries")
TCP_KEYS = ("type", "host", "port", "framing", "timeout_ms", "retries")
DEVICE_KEYS = ("bus", "unit_id", "profile", "poll_interval_s", "points", "extra_points")
OVERRIDE_KEYS = ("interval_s", "deadband", "scale", "offset", "unit", "enabled")
NON_NUMERIC = (DataType.BOOL, DataType.STRING)


class _Hidden:
    """Stands in for a secret in an error message."""

    def __repr__(self) -> str:
        return "<hidden>"


def load_config(path: Path, *, broker_url: str | None = None) -> SiteConfig:
    """Read and validate a site config; ConfigError lists every problem found."""
    raw = load_toml(path)
    chk = Checker(str(path))
    base = path.absolute().parent
    chk.keys(raw, "", TOP_KEYS)
    gateway = chk.get(raw, "", "gateway", dict, {})
    gateway_id, site, state_dir, health_s = _gateway(chk, gateway, base)
    mqtt = _mqtt(chk, chk.get(raw, "", "mqtt", dict, {}), base, gateway_id, broker_url)
    batch = _batch(chk, chk.get(raw, "", "batch", dict, {}))
    spool = _spool(chk, chk.get(raw, "", "spool", dict, {}))
    planner = chk.get(raw, "", "planner", dict, {})
    chk.keys(planner, "planner", ("max_gap",))
    # A hole wider than one read could span is meaningless (spec 6.3: at most 125 registers).
    max_gap = chk.get(planner, "planner", "max_gap", int, 16, check=lambda v: 0 <= v <= 123,
                      expected="an integer from 0 to 123 registers")
    buses_raw = chk.get(raw, "", "buses", dict, {})
    buses = _buses(chk, buses_raw)
    devices_raw = chk.get(raw, "", "devices", dict, {})
    if not devices_raw:
        chk.note("devices", "no devices; expected at least one [devices.NAME] table")
    devices = _devices(chk, devices_raw, buses, set(buses_raw), base)
    chk.raise_if_any()
    assert mqtt is not None  # raise_if_any passed, so every required part was built
    return SiteConfig(source=path, gateway_id=gateway_id, site=site, mqtt=mqtt, buses=buses,
                      devices=tuple(devices), batch=batch, state_dir=state_dir,
                      health_interval_s=health_s, max_gap=max_gap, spool=spool)


def _gateway(chk: Checker, raw: dict[str, Any], base: Path) -> tuple[str, str, Path, float]:
    chk.keys(raw, "gateway", GATEWAY_KEYS)
    gid = chk.get(raw, "gateway", "id", str, check=lambda v: bool(SAFE_ID.fullmatch(v)),
                  expected=SAFE_ID_TEXT)
    site = chk.get(raw, "gateway", "site", str, "")
    state = chk.get(raw, "gateway", "state_dir", str, "/var/lib/edge-agent",
                    check=bool, expected="a directory path")
    health = chk.get(raw, "gateway", "health_interval_s", float, 60.0, check=lambda v: v >= 1,
                     expected="a number of seconds >= 1")
    return gid, site, base / state, health


def _topic_prefix_ok(prefix: str) -> bool:
    try:
        topics.check_prefix(prefix)
    except ValueError:
        return False
    return True


def _file(chk: Checker, raw: dict[str, Any], path: str, key: str, base: Path) -> Path | None:
    """A file named relative to the config; it must exist and be readable."""
    name = chk.get(raw, path, key, str, None, check=bool, expected="a file path")
    if name is None:
        return None
    full = base / name
    try:
        with full.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        chk.problem(f"{path}.{key}", name, f"a readable file ({exc.strerror}: {full})")
        return None
    return full


def _mqtt(chk: Checker, raw: dict[str, Any], base: Path, gateway_id: str | None,
          broker_url: str | None) -> MqttConfig | None:
    p = "mqtt"
    chk.keys(raw, p, MQTT_KEYS)
    url_key = "mqtt.url" if broker_url is None else "mqtt.url (from --broker)"
    url = broker_url if broker_url is not None else chk.get(raw, p, "url", str, expected=URL_TEXT)
    parsed = None
    if url is not None:
        try:
            parsed = split_broker_url(url)
        except ConfigError:
            chk.problem(url_key, url, URL_TEXT)
    username = chk.get(raw, p, "username", str, None, check=bool, expected="a non-empty string")
    password = _password(chk, raw, base)
    if password is not None and username is None and "username" not in raw:
        # MQTT 3.1.1, 3.1.2.9: the password flag may only be set with the user name flag.
        chk.note("mqtt.password", "given without mqtt.username; expected both (MQTT 3.1.1 3.1.2.9)")
    ca = _file(chk, raw, p, "ca_file", base)
    cert = _file(chk, raw, p, "cert_file", base)
    key = _file(chk, raw, p, "key_file", base)
    for given, missing in (("cert_file", "key_file"), ("key_file", "cert_file")):
        if given in raw and missing not in raw:
            chk.note(f"mqtt.{missing}", f"missing; expected one with mqtt.{given} "
                     "(a client certificate and its private key go together)")
    tls_keys = [k for k in ("ca_file", "cert_file", "key_file") if k in raw]
    if parsed is not None and tls_keys and parsed[0] != "mqtts":
        chk.problem(url_key, url, f"an mqtts:// URL, since {', '.join(tls_keys)} ask for TLS")
    _check_tls_material(chk, ca, cert, key)
    client_id = chk.get(raw, p, "client_id", str, None, check=lambda v: 0 < len(v) <= 128,
                        expected="a string of 1 to 128 characters")
    prefix = chk.get(raw, p, "topic_prefix", str, "edge", check=_topic_prefix_ok,
                     expected="topic levels separated by '/', none empty, no '+', '#' or "
                     "leading '$'")
    keepalive = chk.get(raw, p, "keepalive_s", int, 30, check=lambda v: 1 <= v <= 65535,
                        expected="an integer from 1 to 65535 (0, no keepalive, would stop the "
                        "broker ever publishing the offline will)")
    if parsed is None:
        return None
    return MqttConfig(url=url, scheme=parsed[0], host=parsed[1], port=parsed[2],
                      username=username, password=password, ca_file=ca, cert_file=cert,
                      key_file=key, client_id=client_id or gateway_id, topic_prefix=prefix,
                      keepalive_s=keepalive)


def _password(chk: Checker, raw: dict[str, Any], base: Path) -> str | None:
    if "password" in raw and "password_file" in raw:
        chk.note("mqtt.password_file", "given with mqtt.password; expected one of the two")
    if "password" in raw:
        if isinstance(raw["password"], str) and raw["password"]:
            return raw["password"]
        chk.problem("mqtt.password", _Hidden(), "a non-empty string")
        return None
    path = _file(chk, raw, "mqtt", "password_file", base)
    if path is None:
        return None
    try:
        # One trailing newline is what editors and `echo` add; it is not part of the secret.
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        chk.problem("mqtt.password_file", str(path), f"a readable UTF-8 text file ({exc})")
        return None
    if not secret:
        chk.problem("mqtt.password_file", str(path), "a file holding the password (it is empty)")
        return None
    return secret


def _check_tls_material(chk: Checker, ca: Path | None, cert: Path | None,
                        key: Path | None) -> None:
    """Load the CA bundle and the client key pair the way the uplink will, to fail early."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError) as exc:
            chk.problem("mqtt.ca_file", str(ca), f"a PEM file of CA certificates ({exc})")
    if cert is not None and key is not None:
        try:
            # A password callback that gives nothing stops OpenSSL prompting on a terminal
            # for an encrypted key; the agent has no key passphrase setting.
            ctx.load_cert_chain(str(cert), str(key), password=lambda: b"")
        except (ssl.SSLError, OSError) as exc:
            chk.note("mqtt.key_file", f"{key} with {cert}: expected a PEM certificate and its "
                     f"unencrypted private key ({exc})")


def _batch(chk: Checker, raw: dict[str, Any]) -> BatchConfig:
    p = "batch"
    chk.keys(raw, p, ("window_s", "max_readings", "max_silence_s"))
    d = BatchConfig()
    return BatchConfig(
        window_s=chk.get(raw, p, "window_s", float, d.window_s, check=lambda v: v > 0,
                         expected="a positive number of seconds"),
        max_readings=chk.get(raw, p, "max_readings", int, d.max_readings,
                             check=lambda v: v >= 1, expected="an integer >= 1"),
        max_silence_s=chk.get(raw, p, "max_silence_s", float, d.max_silence_s,
                              check=lambda v: v > 0, expected="a positive number of seconds"))


def _spool(chk: Checker, raw: dict[str, Any]) -> SpoolConfig:
    p = "spool"
    chk.keys(raw, p, SPOOL_KEYS)
    d = SpoolConfig()
    rate = "a number >= 0 (0: no limit)"
    return SpoolConfig(
        max_bytes=chk.get(raw, p, "max_bytes", int, d.max_bytes,
                          check=lambda v: v >= MIN_SPOOL_BYTES,
                          expected=f"an integer number of bytes >= {MIN_SPOOL_BYTES}"),
        policy=chk.choice(raw, p, "policy", SpoolPolicy, [v.value for v in SpoolPolicy],
                          default=d.policy),
        synchronous=chk.choice(raw, p, "synchronous", SpoolSync, [v.value for v in SpoolSync],
                               default=d.synchronous),
        group_commit_ms=chk.get(raw, p, "group_commit_ms", float, d.group_commit_ms,
                                check=lambda v: 0 <= v <= 1000,
                                expected="a number of milliseconds from 0 to 1000"),
        replay_msgs_per_s=chk.get(raw, p, "replay_msgs_per_s", float, d.replay_msgs_per_s,
                                  check=lambda v: v >= 0, expected=rate),
        replay_bytes_per_s=chk.get(raw, p, "replay_bytes_per_s", float, d.replay_bytes_per_s,
                                   check=lambda v: v >= 0, expected=rate),
        live_first=chk.get(raw, p, "live_first", bool, d.live_first))


def _serial_endpoint(port: str) -> str | None:
    """A key naming the physical line a pyserial URL opens, or None if it is not one."""
    if (port.startswith("/") and len(port) > 1) or re.fullmatch(r"COM[0-9]+", port):
        return f"serial {port}"
    try:
        parts = urlsplit(port)
        if parts.scheme in ("socket", "rfc2217") and parts.hostname and parts.port:
            return f"tcp {parts.hostname.lower()}:{parts.port}"
    except ValueError:
        return None
    ok = parts.scheme in ("hwgrep", "spy") and bool(parts.netloc or parts.path)
    return f"serial {port}" if ok else None


def _ms(chk: Checker, raw: dict[str, Any], path: str, key: str, low: float,
        high: float) -> float | None:
    ms = chk.get(raw, path, key, float, None, check=lambda v: low <= v <= high,
                 expected=f"a number of milliseconds from {low:g} to {high:g}")
    return None if ms is None else ms / 1000.0


def _retries(chk: Checker, raw: dict[str, Any], path: str) -> int:
    return chk.get(raw, path, "retries", int, 1, check=lambda v: 0 <= v <= 3,
                   expected="an integer from 0 to 3")


def _buses(chk: Checker, raw: dict[str, Any]) -> dict[str, Bus]:
    buses: dict[str, Bus] = {}
    endpoints: dict[str, str] = {}  # physical line -> the bus that claimed it first
    for name, b in raw.items():
        p = f"buses.{name}"
        if not SAFE_ID.fullmatch(name):
            chk.problem(p, name, f"a bus name of {SAFE_ID_TEXT}")
        if not isinstance(b, dict):
            chk.problem(p, b, "a table with type = 'serial' or 'tcp'")
            continue
        kind = chk.get(b, p, "type", str, expected="'serial' or 'tcp'")
        bus: Bus | None
        if kind == "serial":
            bus, endpoint = _serial_bus(chk, name, b, p)
        elif kind == "tcp":
            bus, endpoint = _tcp_bus(chk, name, b, p)
        else:
            if kind is not None:
                chk.problem(f"{p}.type", kind, "'serial' or 'tcp'")
            continue
        if endpoint is not None and endpoint in endpoints:
            chk.note(p, f"{endpoint} is already buses.{endpoints[endpoint]}; expected each "
                     "physical line or host:port once (put all its devices on one bus)")
        elif endpoint is not None:
            endpoints[endpoint] = name
        if bus is not None:
            buses[name] = bus
    return buses


def _serial_bus(chk: Checker, name: str, raw: dict[str, Any],
                p: str) -> tuple[SerialBus | None, str | None]:
    chk.keys(raw, p, SERIAL_KEYS)
    before = len(chk.problems)
    port = chk.get(raw, p, "port", str, check=lambda v: _serial_endpoint(v) is not None,
                   expected="a device path such as /dev/serial/by-id/... or a pyserial URL "
                   "socket://host:port or rfc2217://host:port")
    baud = chk.get(raw, p, "baudrate", int, 9600, check=lambda v: v in STANDARD_BAUDS,
                   expected="one of " + ", ".join(map(str, STANDARD_BAUDS)))
    # Modbus over serial line V1.02 2.5.1: even parity is the default; 8N2 and 8N1 are common.
    parity = chk.choice(raw, p, "parity", Parity, ["N", "E", "O"], default=Parity.EVEN)
    stopbits = chk.get(raw, p, "stopbits", int, 1, check=lambda v: v in (1, 2),
                       expected="1 or 2")
    gap = _ms(chk, raw, p, "inter_frame_gap_ms", 0, 1000)
    timeout = _ms(chk, raw, p, "timeout_ms", 1, 60000)
    retries = _retries(chk, raw, p)
    if len(chk.problems) > before:
        return None, _serial_endpoint(port) if port else None
    return (SerialBus(name=name, port=port, baudrate=baud, parity=parity, stopbits=stopbits,
                      inter_frame_gap_s=gap, timeout_s=timeout, retries=retries),
            _serial_endpoint(port))


def _tcp_bus(chk: Checker, name: str, raw: dict[str, Any],
             p: str) -> tuple[TcpBus | None, str | None]:
    chk.keys(raw, p, TCP_KEYS)
    before = len(chk.problems)
    host = chk.get(raw, p, "host", str,
                   check=lambda v: bool(re.fullmatch(r"[A-Za-z0-9_.:-]+|\[[0-9A-Fa-f:.]+\]", v)),
                   expected="a host name or IP address (not a URL)")
    port = chk.get(raw, p, "port", int, 502, check=lambda v: 1 <= v <= 65535,
                   expected="a TCP port from 1 to 65535")
    framing = chk.choice(raw, p, "framing", TcpFraming, [f.value for f in TcpFraming],
                         default=TcpFraming.SOCKET)
    timeout = _ms(chk, raw, p, "timeout_ms", 1, 60000)
    retries = _retries(chk, raw, p)
    endpoint = f"tcp {host.strip('[]').lower()}:{port}" if host else None
    if len(chk.problems) > before:
        return None, endpoint
    return (TcpBus(name=name, host=host, port=port, framing=framing, timeout_s=timeout,
                   retries=retries), endpoint)


def _devices(chk: Checker, raw: dict[str, Any], buses: dict[str, Bus], declared: set[str],
             base: Path) -> list[DeviceConfig]:
    devices: list[DeviceConfig] = []
    units: dict[tuple[str, int], str] = {}  # (bus, unit id) -> device that has it
    profiles: dict[str, DeviceProfile | None] = {}  # profile file -> parsed (None: bad)
    for name, d in raw.items():
        p = f"devices.{name}"
        if not SAFE_ID.fullmatch(name):
            chk.problem(p, name, f"a device name of {SAFE_ID_TEXT}")
        if not isinstance(d, dict):
            chk.problem(p, d, "a table with bus, unit_id, profile and poll_interval_s")
            continue
        before = len(chk.problems)
        chk.keys(d, p, DEVICE_KEYS)
        bus = chk.get(d, p, "bus", str)
        if bus is not None and bus not in declared:
            chk.problem(f"{p}.bus", bus, "the name of a bus under [buses] ("
                        + (", ".join(sorted(declared)) or "none is defined") + ")")
        unit = chk.get(d, p, "unit_id", int, check=lambda v: 1 <= v <= 247, expected=UNIT_TEXT)
        if bus is not None and unit is not None:
            if (bus, unit) in units:
                chk.problem(f"{p}.unit_id", unit, f"a unit id not already used on bus {bus!r} "
                            f"(devices.{units[bus, unit]} has it)")
            units.setdefault((bus, unit), name)
        poll = chk.get(d, p, "poll_interval_s", float, check=lambda v: v >= MIN_POLL_S,
                       expected=f"a number of seconds >= {MIN_POLL_S}")
        profile = _profile(chk, d, p, base, profiles)
        points = _points(chk, d, p, profile)
        if len(chk.problems) == before and profile is not None and bus in buses:
            devices.append(DeviceConfig(name=name, bus=bus, unit_id=unit, profile=profile,
                                        poll_interval_s=poll, points=tuple(points)))
    return devices


def _profile(chk: Checker, raw: dict[str, Any], p: str, base: Path,
             cache: dict[str, DeviceProfile | None]) -> DeviceProfile | None:
    ref = chk.get(raw, p, "profile", str, check=bool,
                  expected="a shipped profile name or a profile file path")
    if ref is None:
        return None
    shipped = shipped_profiles()
    path = shipped[ref] if ref in shipped else base / ref
    key = str(path)
    if key in cache:
        return cache[key]
    cache[key] = None
    if not path.is_file():
        chk.problem(f"{p}.profile", ref, "a shipped profile (" + (", ".join(shipped) or "none")
                    + f") or a profile file; there is no file at {path}")
        return None
    try:
        cache[key] = parse_profile(load_toml(path), str(path))
    except ConfigError as exc:
        for problem in exc.problems:
            chk.note(f"{p}.profile", f"profile {ref!r} is invalid: {problem}")
    return cache[key]


def _points(chk: Checker, raw: dict[str, Any], p: str,
            profile: DeviceProfile | None) -> list[Point]:
    """The profile's points with this device's overrides applied, then its extra points."""
    overrides = chk.get(raw, p, "points", dict, {})
    extras = chk.get(raw, p, "extra_points", dict, {})
    known = {pt.name: pt for pt in profile.points} if profile is not None else {}
    changed: dict[str, Point | None] = {}  # None: disabled
    for pname, o in overrides.items():
        op = f"{p}.points.{pname}"
        if not isinstance(o, dict):
            chk.problem(op, o, "a table of point overrides")
            continue
        target = known.get(pname)
        if profile is not None and target is None:
            chk.note(op, f"profile {profile.name!r} has no point {pname!r}; expected one of: "
                     + ", ".join(known) + " (define new points under extra_points)")
        changed[pname] = _override(chk, o, op, target)
    points = [changed.get(pt.name, pt) for pt in known.values()]
    result = [pt for pt in points if pt is not None]
    for xname, x in extras.items():
        xp = f"{p}.extra_points.{xname}"
        if xname in known:
            chk.note(xp, f"the profile already has a point {xname!r}; expected a new name "
                     "(change profile points under points.NAME)")
        point = parse_point(chk, xname, x, xp)
        if point is not None and point.interval_s is not None and point.interval_s < MIN_POLL_S:
            chk.problem(f"{xp}.interval_s", point.interval_s,
                        f"a number of seconds >= {MIN_POLL_S}")
        elif point is not None:
            result.append(point)
    if profile is not None and not result:
        chk.note(p, "every point is disabled; expected at least one point to poll")
    return result


def _override(chk: Checker, o: dict[str, Any], op: str, target: Point | None) -> Point | None:
    """Apply one point's overrides; None when the point is disabled."""
    chk.keys(o, op, OVERRIDE_KEYS)
    changes: dict[str, Any] = {}
    for key, kind, check, expected in (
        ("interval_s", float, lambda v: v >= MIN_POLL_S, f"a number of seconds >= {MIN_POLL_S}"),
        ("deadband", float, lambda v: v >= 0, "a number >= 0"),
        ("scale", float, lambda v: v != 0, "a non-zero number"),
        ("offset", float, None, "a number"),
        ("unit", str, None, "a string"),
    ):
        value = chk.get(o, op, key, kind, None, check=check, expected=expected)
        if value is None:
            continue
        if target is not None and key in ("deadband", "scale", "offset") \
                and target.type in NON_NUMERIC:
            chk.problem(f"{op}.{key}", value,
                        f"no {key} on a {target.type.value} point (only numbers take one)")
        changes[key] = value
    enabled = chk.get(o, op, "enabled", bool, True)
    if target is None or not enabled:
        return None
    return replace(target, **changes)

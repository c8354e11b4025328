"""Site config: read a TOML file into a SiteConfig, reporting every problem at once.

Loading is pure: it reads the config, its profiles and its TLS/password files and writes
nothing, so a rejected config changes nothing. ``load_config_bytes`` parses a config from
bytes (a signed config from the fleet: validating it needs no write access anywhere), and
``load_config`` reads the operator's file through it. Files the config names are confined to
its directory and the state dir (``config.paths``). The gateway, mqtt, batch, planner and
spool sections are read here; the buses and devices in ``config.fieldbus``, the sparkplug
section in ``config.sparkplug``, the lighting section in ``config.lighting``.
docs/config.md is the reference of every key.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from edge_agent.config.fieldbus import parse_buses, parse_devices
from edge_agent.config.interlocks import parse_interlocks
from edge_agent.config.lighting import parse_lighting
from edge_agent.config.model import (
    BatchConfig,
    ReceiptMode,
    SiteConfig,
    SpoolConfig,
    SpoolPolicy,
    SpoolSync,
)
from edge_agent.config.paths import FileRoots, resolved
from edge_agent.config.sparkplug import parse_sparkplug
from edge_agent.protocol import topics
from edge_agent.protocol.broker import URL_TEXT, MqttConfig, split_broker_url
from edge_agent.protocol.errors import ConfigError
from edge_agent.protocol.ids import ID_RULE, check_gateway_id
from edge_agent.protocol.tomlcheck import Checker, parse_toml, read_regular_file, read_toml_file

TOP_KEYS = ("gateway", "mqtt", "batch", "planner", "spool", "sparkplug", "buses", "devices",
            "interlocks", "lighting")
SPOOL_KEYS = ("max_bytes", "policy", "synchronous", "group_commit_ms", "replay_msgs_per_s",
              "replay_bytes_per_s", "live_first", "receipts", "confirm_retention_s",
              "resend_grace_s")
# Below this the spool's own SQLite files (WAL index, WAL reserve, schema) leave no room for data.
MIN_SPOOL_BYTES = 256 * 1024
GATEWAY_KEYS = ("id", "site", "state_dir", "health_interval_s")
MQTT_KEYS = ("url", "username", "password", "password_file", "ca_file", "cert_file", "key_file",
             "client_id", "topic_prefix", "keepalive_s")
HOUR_S = 3600.0
DAY_S = 86_400.0
DEFAULT_STATE_DIR = "/var/lib/edge-agent"
GATEWAY_ID_TEXT = f"a gateway id: {ID_RULE}"
# `edge-agent scan` writes this into its draft config until the operator names the gateway.
DRAFT_PLACEHOLDER = "change-me"
# A password is one line of at most a few hundred bytes; the cap and the one-line rule also
# keep password_file from carrying a key, a certificate or a config (many lines) to a broker.
MAX_PASSWORD_FILE_BYTES = 4096
# TLS material is a few kilobytes of PEM; the loader reads at most this much of any file.
MAX_NAMED_FILE_BYTES = 1024 * 1024


class _Hidden:
    """Stands in for a secret in an error message."""

    def __repr__(self) -> str:
        return "<hidden>"


def load_config(path: Path, *, broker_url: str | None = None) -> SiteConfig:
    """Read and validate a site config file; ConfigError lists every problem found."""
    return load_config_bytes(read_toml_file(path), source=str(path),
                             base_dir=path.absolute().parent, broker_url=broker_url)


def load_config_bytes(data: bytes, *, source: str, base_dir: Path, state_dir: Path | None = None,
                      broker_url: str | None = None) -> SiteConfig:
    """Validate a site config given as bytes; ConfigError lists every problem found.

    ``source`` names the config in messages; relative paths resolve against ``base_dir``.
    ``state_dir`` given (a config from the fleet) fixes the state dir: the config may leave
    ``gateway.state_dir`` out or name that same directory, and files it names must be in
    ``base_dir`` or ``state_dir`` (the operator's local config's directories). Writes nothing.
    """
    raw = parse_toml(data, source)
    chk = Checker(source)
    base = base_dir.absolute()
    chk.keys(raw, "", TOP_KEYS)
    gateway = chk.get(raw, "", "gateway", dict, {})
    gateway_id, site, state, health_s = _gateway(chk, gateway, base, state_dir)
    roots = FileRoots.of(base, state)
    mqtt = _mqtt(chk, chk.get(raw, "", "mqtt", dict, {}), base, roots, gateway_id, broker_url)
    batch = _batch(chk, chk.get(raw, "", "batch", dict, {}))
    spool = _spool(chk, chk.get(raw, "", "spool", dict, {}))
    sparkplug = parse_sparkplug(chk, chk.get(raw, "", "sparkplug", dict, {}), gateway_id,
                                mqtt.client_id if mqtt is not None else None)
    planner = chk.get(raw, "", "planner", dict, {})
    chk.keys(planner, "planner", ("max_gap",))
    # A hole wider than one read could span is meaningless (spec 6.3: at most 125 registers).
    max_gap = chk.get(planner, "planner", "max_gap", int, 16, check=lambda v: 0 <= v <= 123,
                      expected="an integer from 0 to 123 registers")
    buses_raw = chk.get(raw, "", "buses", dict, {})
    buses = parse_buses(chk, buses_raw)
    devices_raw = chk.get(raw, "", "devices", dict, {})
    if not devices_raw:
        chk.note("devices", "no devices; expected at least one [devices.NAME] table")
    devices = parse_devices(chk, devices_raw, buses, set(buses_raw), base, roots)
    interlocks = parse_interlocks(chk, chk.get(raw, "", "interlocks", dict, {}), devices,
                                  set(devices_raw))
    lighting = parse_lighting(chk, chk.get(raw, "", "lighting", dict, None), devices)
    chk.raise_if_any()
    assert mqtt is not None  # raise_if_any passed, so every required part was built
    return SiteConfig(source=Path(source), gateway_id=gateway_id, site=site, mqtt=mqtt,
                      buses=buses, devices=tuple(devices), batch=batch, state_dir=state,
                      health_interval_s=health_s, max_gap=max_gap, spool=spool,
                      sparkplug=sparkplug, interlocks=interlocks, lighting=lighting)


def _gateway_id(chk: Checker, raw: dict[str, Any]) -> str:
    """``gateway.id`` by protocol.ids' one rule (the draft's placeholder named as such)."""
    gid = chk.get(raw, "gateway", "id", str, expected=GATEWAY_ID_TEXT)
    if gid is None:
        return gid
    if gid.lower() == DRAFT_PLACEHOLDER:
        chk.problem("gateway.id", gid, f"this gateway's own id, not the placeholder of a draft "
                    f"config (edge-agent scan): {ID_RULE}")
        return gid
    try:
        check_gateway_id(gid)
    except ValueError as exc:
        chk.note("gateway.id", str(exc))
    return gid


def _gateway(chk: Checker, raw: dict[str, Any], base: Path,
             fixed_state: Path | None) -> tuple[str, str, Path, float]:
    chk.keys(raw, "gateway", GATEWAY_KEYS)
    gid = _gateway_id(chk, raw)
    site = chk.get(raw, "gateway", "site", str, "")  # free text, never an identifier
    state_name = chk.get(raw, "gateway", "state_dir", str, None,
                         check=lambda v: bool(v) and "\0" not in v, expected="a directory path")
    health = chk.get(raw, "gateway", "health_interval_s", float, 60.0,
                     check=lambda v: 1 <= v <= DAY_S,
                     expected="a number of seconds from 1 to 86400")
    if fixed_state is None:
        return gid, site, base / (state_name or DEFAULT_STATE_DIR), health
    # A config from the fleet runs with the local config's state dir: the trust state, the
    # journal and the spool live there, and it is the one directory the unit lets us write.
    if state_name is not None and resolved(base / state_name) != resolved(fixed_state):
        chk.problem("gateway.state_dir", state_name,
                    f"this gateway's state dir {fixed_state} or no state_dir (a config from "
                    "the fleet cannot move it)")
    return gid, site, fixed_state, health


def _topic_prefix_ok(prefix: str) -> bool:
    try:
        topics.check_prefix(prefix)
    except ValueError:
        return False
    return True


def _file(chk: Checker, raw: dict[str, Any], path: str, key: str, base: Path,
          roots: FileRoots, limit: int = MAX_NAMED_FILE_BYTES) -> tuple[Path, bytes] | None:
    """A file named relative to the config, inside ``roots``: its resolved path and content."""
    name = chk.get(raw, path, key, str, None, check=bool, expected="a file path")
    if name is None:
        return None
    full, why = roots.place(base, name)
    if full is None:
        chk.problem(f"{path}.{key}", name, why)
        return None
    try:
        data = read_regular_file(full, limit)
    except OSError as exc:
        chk.problem(f"{path}.{key}", name, f"a readable file ({exc.strerror}: {base / name})")
        return None
    if len(data) > limit:
        chk.problem(f"{path}.{key}", name, f"a file of at most {limit} bytes")
        return None
    return full, data


def _mqtt(chk: Checker, raw: dict[str, Any], base: Path, roots: FileRoots,
          gateway_id: str | None, broker_url: str | None) -> MqttConfig | None:
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
    password = _password(chk, raw, base, roots)
    if password is not None and username is None and "username" not in raw:
        # MQTT 3.1.1, 3.1.2.9: the password flag may only be set with the user name flag.
        chk.note("mqtt.password", "given without mqtt.username; expected both (MQTT 3.1.1 3.1.2.9)")
    ca = _path_of(_file(chk, raw, p, "ca_file", base, roots))
    cert = _path_of(_file(chk, raw, p, "cert_file", base, roots))
    key = _path_of(_file(chk, raw, p, "key_file", base, roots))
    for given, missing in (("cert_file", "key_file"), ("key_file", "cert_file")):
        if given in raw and missing not in raw:
            chk.note(f"mqtt.{missing}", f"missing; expected one with mqtt.{given} "
                     "(a client certificate and its private key go together)")
    tls_keys = [k for k in ("ca_file", "cert_file", "key_file") if k in raw]
    if parsed is not None and tls_keys and parsed[0] != "mqtts":
        chk.problem(url_key, url, f"an mqtts:// URL, since {', '.join(tls_keys)} ask for TLS")
    _check_tls_material(chk, raw, ca, cert, key)
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


def _path_of(found: tuple[Path, bytes] | None) -> Path | None:
    return None if found is None else found[0]


def _password(chk: Checker, raw: dict[str, Any], base: Path, roots: FileRoots) -> str | None:
    if "password" in raw and "password_file" in raw:
        chk.note("mqtt.password_file", "given with mqtt.password; expected one of the two")
    if "password" in raw:
        if isinstance(raw["password"], str) and raw["password"]:
            return raw["password"]
        chk.problem("mqtt.password", _Hidden(), "a non-empty string")
        return None
    found = _file(chk, raw, "mqtt", "password_file", base, roots, MAX_PASSWORD_FILE_BYTES)
    if found is None:
        return None
    path, data = found
    try:
        # One trailing newline is what editors and `echo` add; it is not part of the secret.
        secret = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        chk.problem("mqtt.password_file", str(path), f"a readable UTF-8 text file ({exc})")
        return None
    if not secret:
        chk.problem("mqtt.password_file", str(path), "a file holding the password (it is empty)")
        return None
    if "\n" in secret or "\r" in secret:
        # Never the content: the message may go to the fleet in a report.
        chk.problem("mqtt.password_file", str(path),
                    "a file holding the password on one line (it has several lines)")
        return None
    return secret


def _check_tls_material(chk: Checker, raw: dict[str, Any], ca: Path | None, cert: Path | None,
                        key: Path | None) -> None:
    """Load the CA bundle and the client key pair the way the uplink will, to fail early."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError) as exc:
            chk.problem("mqtt.ca_file", raw["ca_file"], f"a PEM file of CA certificates ({exc})")
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
        window_s=chk.get(raw, p, "window_s", float, d.window_s, check=lambda v: 0 < v <= HOUR_S,
                         expected="a number of seconds above 0, at most 3600"),
        max_readings=chk.get(raw, p, "max_readings", int, d.max_readings,
                             check=lambda v: v >= 1, expected="an integer >= 1"),
        max_silence_s=chk.get(raw, p, "max_silence_s", float, d.max_silence_s,
                              check=lambda v: 0 < v <= 7 * DAY_S,
                              expected="a number of seconds above 0, at most a week (604800)"))


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
        live_first=chk.get(raw, p, "live_first", bool, d.live_first),
        receipts=chk.choice(raw, p, "receipts", ReceiptMode, [v.value for v in ReceiptMode],
                            default=d.receipts),
        confirm_retention_s=chk.get(raw, p, "confirm_retention_s", float,
                                    d.confirm_retention_s, check=lambda v: v > 0,
                                    expected="a number of seconds above 0"),
        resend_grace_s=chk.get(raw, p, "resend_grace_s", float, d.resend_grace_s,
                               check=lambda v: 0 <= v <= 3600,
                               expected="a number of seconds from 0 to 3600"))

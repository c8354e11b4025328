"""Where a broker is and how to reach it: the one broker-URL parser and aiomqtt's options for it.

Credentials never travel in the URL (it shows in ``ps``, shell history and logs): a user name
and password come from the config, a password file or the environment, and a URL holding them
is refused.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt

from edge_agent.protocol.errors import ConfigError

DEFAULT_MQTT_PORTS = {"mqtt": 1883, "mqtts": 8883}
URL_TEXT = "mqtt://host[:port], mqtts://host[:port] or unix:///path/to/socket"


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """Where and how the uplink connects."""

    url: str
    scheme: str                 # "mqtt", "mqtts" or "unix"
    host: str                   # hostname, or the socket path for unix://
    port: int                   # 0 for unix://
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # kept out of logs and tracebacks
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_id: str | None = None
    topic_prefix: str = "edge"
    keepalive_s: int = 30

    @property
    def tls(self) -> bool:
        """True when the connection is TLS (mqtts://)."""
        return self.scheme == "mqtts"


def parse_broker_url(url: str, *, username: str | None = None, password: str | None = None,
                     ca_file: Path | None = None, cert_file: Path | None = None,
                     key_file: Path | None = None, topic_prefix: str = "edge",
                     client_id: str | None = None, keepalive_s: int = 30) -> MqttConfig:
    """An MqttConfig from a broker URL; ConfigError saying what is wrong with it."""
    scheme, host, port = split_broker_url(url)
    return MqttConfig(url, scheme, host, port, username, password, ca_file, cert_file,
                      key_file, client_id=client_id, topic_prefix=topic_prefix,
                      keepalive_s=keepalive_s)


def url_has_credentials(url: str) -> bool:
    """True if ``url`` carries a user name or password (which never belong in a broker URL)."""
    try:
        parts = urlsplit(url)
        return parts.username is not None or parts.password is not None
    except ValueError:
        return False  # not a URL at all: split_broker_url says what is wrong with it


def split_broker_url(url: str) -> tuple[str, str, int]:
    """(scheme, host or socket path, port) of a broker URL; ConfigError if it is not one."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"broker URL {url!r}: {why}; expected {URL_TEXT}")

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise bad("the port is not a number in 1..65535") from None
    if parts.query or parts.fragment:
        raise bad("a query or fragment has no meaning here")
    if url_has_credentials(url):
        raise bad("credentials do not go in the URL (use a user name and a password file)")
    if parts.scheme == "unix":
        if parts.netloc or not parts.path.startswith("/") or len(parts.path) < 2:
            raise bad("unix:// needs an absolute socket path (unix:///run/mosquitto.sock)")
        return "unix", unquote(parts.path), 0
    if parts.scheme not in DEFAULT_MQTT_PORTS:
        raise bad(f"scheme {parts.scheme!r} is not mqtt, mqtts or unix")
    if not parts.hostname:
        raise bad("no host name")
    if port == 0:
        raise bad("port 0 is not a port")
    if parts.path not in ("", "/"):
        raise bad(f"a path ({parts.path}) has no meaning here")
    return parts.scheme, parts.hostname, port or DEFAULT_MQTT_PORTS[parts.scheme]


def client_options(cfg: MqttConfig) -> dict[str, Any]:
    """aiomqtt.Client keyword arguments for this config (without will and identifier)."""
    opts: dict[str, Any] = {
        "hostname": cfg.host,
        # paho 2.2 checks port > 0 even for unix sockets, where it is not used
        "port": cfg.port if cfg.port > 0 else 1883,
        "username": cfg.username,
        "password": cfg.password,
        "keepalive": cfg.keepalive_s,
        "protocol": aiomqtt.ProtocolVersion.V5,
    }
    if cfg.scheme == "unix":
        opts["transport"] = "unix"
    if cfg.tls:
        opts["tls_params"] = aiomqtt.TLSParameters(
            ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
            certfile=str(cfg.cert_file) if cfg.cert_file else None,
            keyfile=str(cfg.key_file) if cfg.key_file else None)
    return opts


def no_delay(client: aiomqtt.Client) -> None:
    """Turn Nagle's algorithm off on a connected client's TCP socket.

    A QoS 1 exchange is small packets in both directions: a PUBACK written just before the
    next PUBLISH holds that PUBLISH back until the peer's delayed ACK (40 ms on Linux), per
    hop. Measured through mosquitto 2.0: a QoS 1 request and its QoS 1 answer took 88 ms
    without, 0.7 ms with this on both clients and ``set_tcp_nodelay true`` on the broker
    (docs/broker.md). Unix sockets have no such option and are left alone.
    """
    sock = client._client.socket()  # aiomqtt keeps paho's client there; paho exposes its socket
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # ssl.SSLSocket too

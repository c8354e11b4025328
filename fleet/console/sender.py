"""The console's command sender: the operator key(s) and the broker, used through the same
signed path as ``edge-fleet cmd send`` (``fleet/cmdcli.py``: ``prepare`` builds, signs and
stores the command, ``publish_to`` publishes it).

The console is the control room's signing host: it holds the operator key in this process,
refuses a key file other users can read, and publishes without waiting for the answers (the
fleet service stores every ``cmd-result`` in the registry, which the Commands page reads).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt

from edge_agent.fleet.cmdcli import prepare, publish_to
from edge_agent.fleet.registry import Registry
from edge_agent.protocol import topics
from edge_agent.protocol.broker import MqttConfig, client_options, no_delay, parse_broker_url
from edge_agent.protocol.errors import CommandError, ConfigError, VerificationError
from edge_agent.protocol.keys import PrivateKey, load_private
from edge_agent.protocol.shell import add_broker_login, broker_password, check_broker_url
from edge_agent.protocol.verify import role_keys

CONNECT_S = 10.0   # the broker must take the connection and every publish within this


@dataclass
class SendOptions:
    """A command as the console's form describes it (``fleet.cmdcli.CommandOptions``)."""

    action: str
    value: str | None
    lamps: str | None
    device: str | None
    for_: str | None
    gateway: list[str] = field(default_factory=list)
    site: list[str] = field(default_factory=list)
    tag: list[str] = field(default_factory=list)
    id: str | None = None
    expires_s: int = 600
    key: list[Path] = field(default_factory=list)  # the console hands its loaded keys over


@dataclass
class Sender:
    """Signs with the operator key(s) and publishes to the broker."""

    keys: list[PrivateKey]
    mqtt: MqttConfig
    prefix: str

    @property
    def keyids(self) -> list[str]:
        """Short ids of the keys, for the page."""
        return [k.public.keyid[:12] for k in self.keys]

    def key_problem(self, registry: Registry) -> str:
        """Why gateways would refuse commands signed here ('' when the root delegates every
        key): shown on the page, checked again for each command."""
        try:
            root = registry.latest_root()
            operators, _ = role_keys(root["signed"], "operator")
        except (ConfigError, VerificationError) as exc:
            return f"{exc}: delegate the operator key first (edge-fleet root rotate ... " \
                   "--operator-key operator.pub)"
        strangers = [k.public.keyid[:12] for k in self.keys if k.public.keyid not in operators]
        if strangers:
            return (f"key {', '.join(strangers)} is not an operator key of root "
                    f"v{root['signed']['version']}: gateways would refuse its commands")
        return ""

    async def send(self, registry: Registry, opts: SendOptions, now: int
                   ) -> tuple[str, list[str]]:
        """Connect, then build, sign and store the command (``cmdcli.prepare``, off the event
        loop) and publish it to every gateway; (id, gateways). CommandError for a command
        that cannot be made; OSError/MqttError when the broker fails (nothing is stored when
        it cannot be reached)."""
        async with asyncio.timeout(CONNECT_S):
            async with aiomqtt.Client(identifier=f"fleet-console-{secrets.token_hex(4)}",
                                      **client_options(self.mqtt)) as client:
                no_delay(client)
                cid, blob, gateways = await asyncio.to_thread(prepare, registry, opts, now,
                                                              self.keys)
                await publish_to(client, self.prefix, cid, blob, gateways)
        return cid, gateways


def add_sender_arguments(p: argparse.ArgumentParser) -> None:
    """``edge-fleet console``'s options for sending commands."""
    p.add_argument("--operator-key", type=Path, action="append", default=[], metavar="FILE",
                   help="operator key (0600) to sign commands from the Commands page "
                        "(repeatable for a threshold); without it the page only shows results")
    p.add_argument("--broker", help="broker URL commands are published to (with "
                   "--operator-key); no credentials in it")
    add_broker_login(p)
    p.add_argument("--prefix", default="edge", help="topic prefix (default edge)")


def load_operator_key(path: Path) -> PrivateKey:
    """The private key in ``path``; ConfigError if other users can read the file (a signing
    key shared with the machine's other accounts signs for anyone) or it is no key."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise ConfigError(f"--operator-key {path}: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise ConfigError(f"--operator-key {path}: mode {mode:04o} lets other users read the "
                          f"signing key: chmod 600 {path}")
    return load_private(path)


def sender_from_args(args: argparse.Namespace) -> Sender | None:
    """The Sender the options describe, or None without ``--operator-key``."""
    paths: Sequence[Path] = args.operator_key
    if not paths:
        return None
    if not args.broker:
        raise CommandError("--operator-key needs --broker URL: commands are published there")
    prefix = topics.check_prefix(args.prefix)
    mqtt = parse_broker_url(check_broker_url(args.broker), username=args.username,
                            password=broker_password(args.username, args.password_file),
                            topic_prefix=prefix)
    return Sender([load_operator_key(p) for p in paths], mqtt, prefix)

"""Broker isolation: mosquitto password, ACL and configuration files so each gateway uses only
its own topics and its own session.

The password hash is mosquitto 2.0's own format, ``$7$ITERATIONS$SALT$HASH`` (PBKDF2-HMAC-
SHA512, base64 salt of 12 bytes and base64 64-byte hash), what ``mosquitto_passwd`` writes.
Each gateway's username is its gateway id, and the ACL's ``pattern`` lines substitute it for
``%u``: a gateway may write only its own state, data, schema, health, reported (and
reported/software) and cmd-result topics and read only its own desired, cmd and schema-request
topics. The fleet user may read and write everything under the prefix. mosquitto re-reads the
password and ACL files on SIGHUP.

Topics alone do not isolate sessions: the MQTT session belongs to the client id, and by
default a client may pick any. Gateway A, logged in with its own credentials, could connect
with client id ``gw-b``: the broker throws B off and hands A B's session, with the messages
queued for B. ``use_username_as_clientid true`` makes the broker replace the client id with the
user name, so a gateway only ever gets its own session. In mosquitto 2.0 it is a *listener*
option: it applies to the ``listener`` declared before it.

The fleet's own clients (several ``edge-fleet serve`` instances, the ingest consumers) share
user names, so on a listener with that binding they would throw each other off: they get a
listener of their own. Client ids are global across listeners, so that listener must not take
gateway credentials at all, or a gateway could log in there as ``edge-ingest`` and take over
the ingest's session with every batch queued for it. Hence ``per_listener_settings true`` and
two sets of files: ``passwd``/``acl`` hold only gateways and serve only the gateways' listener
(declared by the operator just before the fragment, with its TLS options), and
``fleet-passwd``/``fleet-acl`` hold only the fleet's users and serve only the fleet's listener,
which the fragment declares itself (``--fleet-listener``: loopback, an internal address or a
unix socket). A gateway's password is refused on the fleet's listener, the fleet's on the
gateways' listener, and on the gateways' listener a client id is always a gateway id, which can
never be one of the fleet's (those names are reserved, ``edge_agent.protocol.ids``).
``per_listener_settings`` must come before any other security setting in mosquitto.conf
(mosquitto refuses to start otherwise), so the operator's own file sets none. docs/broker.md
has the layout and the EMQX equivalent.

File modes: ``passwd``, ``fleet-passwd`` (hashes), ``acl`` and ``fleet-acl`` are 0600.
mosquitto 2.0 drops to its ``user`` before it opens them (and re-reads them as that user on
SIGHUP), so when this runs as root the files get the owner and group of the directory they
are written into: create it once
with ``install -d -o mosquitto -g mosquitto -m 0700 /etc/mosquitto/edge``.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path

from edge_agent.protocol.fileio import atomic_write
from edge_agent.protocol.ids import FLEET_BROKER_USER, check_broker_user, check_gateway_id
from edge_agent.protocol.topics import check_prefix

ITERATIONS = 101  # mosquitto_passwd's default in 2.0
CONF_NAME = "mosquitto-auth.conf"
# The gateways' files, then the fleet's: each listener reads only its own pair.
GATEWAY_FILES = ("passwd", "acl")
FLEET_FILES = ("fleet-passwd", "fleet-acl")
DEFAULT_FLEET_LISTENER = "127.0.0.1:1884"
PERSISTENCE_DIR = Path("/var/lib/mosquitto")  # Debian's persistence_location, mosquitto-owned

# Queue sizing: a gateway publishes one data batch per batch window (5 s by default), and the
# ingest's persistent session must hold everything published while the ingest is down. Past
# max_queued_messages mosquitto drops messages it has already acknowledged to the gateway
# (which then deletes them from its spool), so the limit is an outage budget, not a nicety.
DEFAULT_OUTAGE_S = 24 * 3600
DEFAULT_WINDOW_S = 5.0
MIN_QUEUED = 100_000
# mosquitto saves its in-memory store every autosave_interval seconds (1800 by default): a
# kill -9 or power loss of the broker loses what it queued since. With receipts the gateways
# send that again (docs/spool.md); without, this is the broker's loss window.
DEFAULT_AUTOSAVE_S = 60


def mosquitto_hash(password: str, *, salt: bytes | None = None,
                   iterations: int = ITERATIONS) -> str:
    """A mosquitto 2.0 password hash of ``password``."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _fleet_users(fleet_user: str, extra: Sequence[str]) -> list[str]:
    users = [check_broker_user(u) for u in (fleet_user, *extra)]
    if len(set(users)) != len(users):
        raise ValueError(f"fleet users {users} name one user twice")
    return users


def acl_text(prefix: str = "edge") -> str:
    """The gateways' ACL: each gateway its own topics (its user name is its gateway id)."""
    check_prefix(prefix)
    return "\n".join([
        "# every user on this listener is a gateway whose username is its gateway id",
        f"pattern write {prefix}/%u/state",
        f"pattern write {prefix}/%u/data",
        f"pattern write {prefix}/%u/schema",
        f"pattern read {prefix}/%u/schema-request",
        f"pattern read {prefix}/%u/receipt",
        f"pattern write {prefix}/%u/health",
        f"pattern readwrite {prefix}/%u/reported",
        f"pattern readwrite {prefix}/%u/reported/software",
        f"pattern read {prefix}/%u/desired/#",
        f"pattern read {prefix}/%u/cmd/#",
        f"pattern write {prefix}/%u/cmd-result/#",
        "",
    ])


def fleet_acl_text(prefix: str = "edge", fleet_user: str = FLEET_BROKER_USER, *,
                   extra_fleet_users: Sequence[str] = ()) -> str:
    """The fleet listener's ACL: every fleet user everywhere under the prefix."""
    check_prefix(prefix)
    lines: list[str] = []
    for user in _fleet_users(fleet_user, extra_fleet_users):
        lines += [f"user {user}", f"topic readwrite {prefix}/#", ""]
    return "\n".join(lines)


def _check_hash(user: str, h: str) -> str:
    # A hash comes from the registry; a newline or ':' in it would forge a line or a field.
    if not h.startswith("$7$") or any(c in h for c in ":\n\r\0 ") or len(h) > 512:
        raise ValueError(f"broker password hash of {user!r} is not a mosquitto $7$ hash")
    return h


def passwd_text(entries: Sequence[tuple[str, str]], *,
                fleet_users: Sequence[str] = (FLEET_BROKER_USER,)) -> str:
    """The password file from (username, hash) pairs.

    Users named in ``fleet_users`` are the fleet's own; every other one is a gateway and must
    be a valid gateway id. A name may appear once: a gateway named like a fleet user would
    otherwise share its credentials' line.
    """
    seen: set[str] = set()
    for user, h in entries:
        if user in fleet_users:
            check_broker_user(user)
        else:
            check_gateway_id(user)
        if user in seen:
            raise ValueError(f"broker user {user!r} appears twice in the password entries")
        seen.add(user)
        _check_hash(user, h)
    return "".join(f"{user}:{h}\n" for user, h in entries)


def queue_limit(gateways: int, *, outage_s: float = DEFAULT_OUTAGE_S,
                window_s: float = DEFAULT_WINDOW_S) -> int:
    """max_queued_messages that holds ``outage_s`` of every gateway's batches for the ingest."""
    return max(MIN_QUEUED, math.ceil(gateways * outage_s / window_s))


def _conf_path(path: Path) -> Path:
    # mosquitto.conf splits values at spaces, and a newline would add a directive.
    if any(c.isspace() or ord(c) < 0x20 or c == "#" for c in str(path)):
        raise ValueError(f"{str(path)!r}: a path in mosquitto.conf must not contain spaces, "
                         "control characters or '#'")
    return path


def fleet_listener_line(spec: str) -> str:
    """The mosquitto ``listener`` line of ``HOST:PORT`` or ``unix:/path/to/socket``."""
    if spec.startswith("unix:"):
        path = Path(spec[len("unix:"):].removeprefix("//"))
        if not path.is_absolute():
            raise ValueError(f"fleet listener {spec!r}: unix: needs an absolute socket path")
        return f"listener 0 {_conf_path(path)}"
    host, sep, port = spec.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:1884
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"fleet listener {spec!r}: expected HOST:PORT (port 1-65535) or "
                         "unix:/path/to/socket")
    if any(c.isspace() or ord(c) < 0x20 or c in "#[]" for c in host):
        raise ValueError(f"fleet listener {spec!r}: the host must not contain spaces, "
                         "control characters, '#' or brackets")
    return f"listener {int(port)} {host}"


def conf_text(out_dir: Path, *, gateways: int, persistence_dir: Path = PERSISTENCE_DIR,
              outage_s: float = DEFAULT_OUTAGE_S,
              fleet_listener: str = DEFAULT_FLEET_LISTENER,
              autosave_s: int = DEFAULT_AUTOSAVE_S) -> str:
    """The mosquitto.conf fragment: per-listener authentication, persistence, the client-id
    binding on the gateways' listener, and the fleet's own listener."""
    _conf_path(out_dir)
    _conf_path(persistence_dir)
    listener = fleet_listener_line(fleet_listener)
    queued = queue_limit(gateways, outage_s=outage_s)
    if not 1 <= autosave_s <= 86400:
        raise ValueError(f"autosave interval {autosave_s} s: expected 1..86400")
    passwd, acl = (out_dir / name for name in GATEWAY_FILES)
    fleet_passwd, fleet_acl = (out_dir / name for name in FLEET_FILES)
    return f"""\
# Written by edge-fleet broker-config. Include it right AFTER the listener gateways connect
# to (with its TLS options), and set no security option (allow_anonymous, password_file,
# acl_file, auth_plugin...) anywhere else: each listener gets its own here (see
# docs/broker.md and edge_agent/fleet/brokerconf.py).

# Before any other security setting, or mosquitto refuses to start.
per_listener_settings true

# Sessions and queued messages survive a broker restart; saved every {autosave_s} s and on
# shutdown, so a crash of the broker itself loses at most that long of queue changes (the
# gateways' spools send those batches again when the ingest's receipts say they are missing).
persistence true
persistence_location {persistence_dir}/
autosave_interval {autosave_s}
autosave_on_changes false
# A session nobody resumes for a week (a gateway removed from service) is dropped.
persistent_client_expiration 7d
# QoS 1 is small packets both ways: without this each PUBACK-then-PUBLISH waits for the peer's
# delayed ACK (40 ms per hop; a command and its answer took 88 ms instead of under 1 ms).
set_tcp_nodelay true
# Per client: {outage_s / 3600:g} h of batches from {gateways} gateways (one each per \
{DEFAULT_WINDOW_S:g} s) for an
# offline ingest; past it the broker drops messages it has already acknowledged to gateways.
# Regenerated with the users. No byte limit beside it: the count decides.
max_queued_messages {queued}
max_queued_bytes 0

# The gateways' listener (declared just before this file): gateways only, and the client id
# is the user name, so no gateway can connect as another's client id (or as one of the
# fleet's) and take over its session. mosquitto reads use_username_as_clientid at start
# only: restart the broker (not SIGHUP) the first time.
allow_anonymous false
password_file {passwd}
acl_file {acl}
use_username_as_clientid true

# The fleet's listener: the fleet service and the ingest only (they share user names and
# pick their own client ids). A gateway's password is refused here.
{listener}
allow_anonymous false
password_file {fleet_passwd}
acl_file {fleet_acl}
"""


def _owned_like_dir(path: Path) -> None:
    # As root, give the file to the directory's owner (the broker's user, see the docstring):
    # mosquitto reads it after dropping privileges and could not open a root-only file.
    if os.geteuid() != 0:
        return
    st = path.parent.stat()
    os.chown(path, st.st_uid, st.st_gid)


def write_broker_config(out_dir: Path, entries: Sequence[tuple[str, str]], *,
                        prefix: str = "edge", fleet_user: str = FLEET_BROKER_USER,
                        extra_fleet_users: Sequence[str] = (),
                        persistence_dir: Path = PERSISTENCE_DIR,
                        outage_s: float = DEFAULT_OUTAGE_S,
                        fleet_listener: str = DEFAULT_FLEET_LISTENER,
                        autosave_s: int = DEFAULT_AUTOSAVE_S) -> Path:
    """Write the gateways' and the fleet's passwd and acl and a mosquitto.conf fragment using
    them; the fragment's path.

    ``entries`` holds (user, hash) pairs of gateways and fleet users alike; each goes to its
    own listener's file. Without any fleet user's entry an existing ``fleet-passwd`` is kept
    (regenerating after an enrolment needs no fleet password). Every text is built (and
    every name checked) before anything is written, so a bad registry row leaves the
    broker's current files as they were.
    """
    fleet = _fleet_users(fleet_user, extra_fleet_users)
    passwd_text(entries, fleet_users=fleet)  # checks every name once, across both files
    gateway_entries = [(u, h) for u, h in entries if u not in fleet]
    fleet_entries = [(u, h) for u, h in entries if u in fleet]
    texts = {
        GATEWAY_FILES[0]: passwd_text(gateway_entries, fleet_users=fleet),
        GATEWAY_FILES[1]: acl_text(prefix),
        FLEET_FILES[1]: fleet_acl_text(prefix, fleet_user, extra_fleet_users=extra_fleet_users),
    }
    if fleet_entries or not (out_dir / FLEET_FILES[0]).exists():
        texts[FLEET_FILES[0]] = passwd_text(fleet_entries, fleet_users=fleet)
    conf = conf_text(out_dir.absolute(), gateways=len(gateway_entries),
                     persistence_dir=persistence_dir, outage_s=outage_s,
                     fleet_listener=fleet_listener, autosave_s=autosave_s)
    for name, text in texts.items():
        atomic_write(out_dir / name, text.encode(), 0o600)
        _owned_like_dir(out_dir / name)
    # No secrets in it, and mosquitto re-reads it as its own user on SIGHUP.
    atomic_write(out_dir / CONF_NAME, conf.encode(), 0o644)
    return out_dir / CONF_NAME

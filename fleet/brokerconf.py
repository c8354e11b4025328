"""Broker isolation: mosquitto password, ACL and configuration files so each gateway uses only
its own topics and its own session.

The password hash is mosquitto 2.0's own format, ``$7$ITERATIONS$SALT$HASH`` (PBKDF2-HMAC-
SHA512, base64 salt of 12 bytes and base64 64-byte hash), what ``mosquitto_passwd`` writes.
Each gateway's username is its gateway id, and the ACL's ``pattern`` lines substitute it for
``%u``: a gateway may write only its own state, data, schema, health, reported and cmd-result
topics and read only its own desired, cmd and schema-request topics. The fleet user may read
and write everything under the prefix. mosquitto re-reads the password and ACL files on SIGHUP.

Topics alone do not isolate sessions: the MQTT session belongs to the client id, and by
default a client may pick any. Gateway A, logged in with its own credentials, could connect
with client id ``gw-b``: the broker throws B off and hands A B's session, with the messages
queued for B. ``use_username_as_clientid true`` makes the broker replace the client id with the
user name, so a gateway only ever gets its own session. In mosquitto 2.0 it is a *listener*
option: it applies to the ``listener`` declared before it (given before any listener, it makes
mosquitto open a default listener on port 1883). So ``mosquitto-auth.conf`` ends with it and
must be included right after the listener gateways connect to. Client ids are global across
listeners; gateway ids cannot take the fleet's client ids because those names are reserved
(``edge_agent.protocol.ids``).

The fleet's own clients (several ``edge-fleet serve`` instances, the ingest consumers) share
user names, so on a listener with the binding they would throw each other off. Give them a
listener of their own, declared after the include (an internal address or a unix socket) or
give each one its own user (``extra_fleet_users``).

EMQX does the same with ``mqtt.use_username_as_clientid = true`` (EMQX 5: ``mqtt {
use_username_as_clientid = true }`` in ``emqx.conf``, per zone, so again a zone of its own for
the fleet's listener) and file authorization rules on ``${username}``, e.g.
``{allow, all, publish, ["edge/${username}/data", "edge/${username}/state", ...]}.``,
``{allow, all, subscribe, ["edge/${username}/desired/#", "edge/${username}/cmd/#"]}.``,
``{allow, {user, "fleet"}, all, ["edge/#"]}.`` and a final ``{deny, all}.``.

File modes: ``passwd`` (hashes) and ``acl`` are 0600. mosquitto 2.0 drops to its ``user``
before it opens them (and re-reads them as that user on SIGHUP), so when this runs as root
both files get the owner and group of the directory they are written into: create it once
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
PERSISTENCE_DIR = Path("/var/lib/mosquitto")  # Debian's persistence_location, mosquitto-owned

# Queue sizing: a gateway publishes one data batch per batch window (5 s by default), and the
# ingest's persistent session must hold everything published while the ingest is down. Past
# max_queued_messages mosquitto drops messages it has already acknowledged to the gateway
# (which then deletes them from its spool), so the limit is an outage budget, not a nicety.
DEFAULT_OUTAGE_S = 24 * 3600
DEFAULT_WINDOW_S = 5.0
MIN_QUEUED = 100_000


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


def acl_text(prefix: str = "edge", fleet_user: str = FLEET_BROKER_USER, *,
             extra_fleet_users: Sequence[str] = ()) -> str:
    """The ACL file: the fleet users everywhere under the prefix, each gateway its own topics."""
    check_prefix(prefix)
    lines: list[str] = []
    for user in _fleet_users(fleet_user, extra_fleet_users):
        lines += [f"user {user}", f"topic readwrite {prefix}/#", ""]
    return "\n".join([
        *lines,
        "# every other user is a gateway whose username is its gateway id",
        f"pattern write {prefix}/%u/state",
        f"pattern write {prefix}/%u/data",
        f"pattern write {prefix}/%u/schema",
        f"pattern read {prefix}/%u/schema-request",
        f"pattern write {prefix}/%u/health",
        f"pattern readwrite {prefix}/%u/reported",
        f"pattern read {prefix}/%u/desired/#",
        f"pattern read {prefix}/%u/cmd/#",
        f"pattern write {prefix}/%u/cmd-result/#",
        "",
    ])


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


def conf_text(out_dir: Path, *, gateways: int, persistence_dir: Path = PERSISTENCE_DIR,
              outage_s: float = DEFAULT_OUTAGE_S) -> str:
    """The mosquitto.conf fragment: authentication, persistence, and the client-id binding."""
    _conf_path(out_dir)
    _conf_path(persistence_dir)
    queued = queue_limit(gateways, outage_s=outage_s)
    return f"""\
# Written by edge-fleet broker-config. Include it right AFTER the listener gateways connect
# to: its last line is a listener option (see edge_agent/fleet/brokerconf.py). Declare a
# separate listener for the fleet service and the ingest after the include.

# Global: one password file and one ACL for every listener.
per_listener_settings false
allow_anonymous false
password_file {out_dir / 'passwd'}
acl_file {out_dir / 'acl'}

# Sessions and queued messages survive a broker restart; saved every 60 s and on shutdown,
# so a crash of the broker itself loses at most the last minute of queue changes.
persistence true
persistence_location {persistence_dir}/
autosave_interval 60
autosave_on_changes false
# A session nobody resumes for a week (a gateway removed from service) is dropped.
persistent_client_expiration 7d
# Per client: {outage_s / 3600:g} h of batches from {gateways} gateways (one each per \
{DEFAULT_WINDOW_S:g} s) for an
# offline ingest; past it the broker drops messages it has already acknowledged to gateways.
# Regenerated with the users.
max_queued_messages {queued}

# Listener option, for the listener declared just before this file: the client id is the
# user name, so no gateway can connect as another's client id and take over its session.
# mosquitto reads it at start only: restart the broker (not SIGHUP) the first time.
use_username_as_clientid true
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
                        outage_s: float = DEFAULT_OUTAGE_S) -> Path:
    """Write passwd, acl and a mosquitto.conf fragment using them; the fragment's path.

    Every text is built (and every name checked) before anything is written, so a bad
    registry row leaves the broker's current files as they were.
    """
    fleet = _fleet_users(fleet_user, extra_fleet_users)
    passwd = passwd_text(entries, fleet_users=fleet)
    acl = acl_text(prefix, fleet_user, extra_fleet_users=extra_fleet_users)
    gateways = sum(1 for user, _ in entries if user not in fleet)
    conf = conf_text(out_dir.absolute(), gateways=gateways, persistence_dir=persistence_dir,
                     outage_s=outage_s)
    for name, text in (("passwd", passwd), ("acl", acl)):
        atomic_write(out_dir / name, text.encode(), 0o600)
        _owned_like_dir(out_dir / name)
    # No secrets in it, and mosquitto re-reads it as its own user on SIGHUP.
    atomic_write(out_dir / CONF_NAME, conf.encode(), 0o644)
    return out_dir / CONF_NAME

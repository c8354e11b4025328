"""Broker isolation: mosquitto password and ACL files so each gateway uses only its own topics.

The password hash is mosquitto 2.0's own format, ``$7$ITERATIONS$SALT$HASH`` (PBKDF2-HMAC-
SHA512, base64 salt of 12 bytes and base64 64-byte hash), what ``mosquitto_passwd`` writes.
Each gateway's username is its gateway id, and the ACL's ``pattern`` lines substitute it for
``%u``: a gateway may write only its own state, data, health, reported and cmd-result topics
and read only its own desired and cmd topics. The fleet user may read and write everything
under the prefix. mosquitto re-reads both files on SIGHUP.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from edge_agent.protocol.fileio import atomic_write
from edge_agent.protocol.topics import check_level, check_prefix

ITERATIONS = 101  # mosquitto_passwd's default in 2.0


def mosquitto_hash(password: str, *, salt: bytes | None = None,
                   iterations: int = ITERATIONS) -> str:
    """A mosquitto 2.0 password hash of ``password``."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def acl_text(prefix: str = "edge", fleet_user: str = "fleet") -> str:
    """The ACL file: the fleet user everywhere under the prefix, each gateway its own topics."""
    check_prefix(prefix)
    check_level("fleet user", fleet_user)
    return "\n".join([
        f"user {fleet_user}",
        f"topic readwrite {prefix}/#",
        "",
        "# every other user is a gateway whose username is its gateway id",
        f"pattern write {prefix}/%u/state",
        f"pattern write {prefix}/%u/data",
        f"pattern write {prefix}/%u/health",
        f"pattern readwrite {prefix}/%u/reported",
        f"pattern read {prefix}/%u/desired/#",
        f"pattern read {prefix}/%u/cmd/#",
        f"pattern write {prefix}/%u/cmd-result/#",
        "",
    ])


def passwd_text(entries: Sequence[tuple[str, str]]) -> str:
    """The password file from (username, hash) pairs."""
    for user, _ in entries:
        check_level("broker username", user)
    return "".join(f"{user}:{h}\n" for user, h in entries)


def write_broker_config(out_dir: Path, entries: Sequence[tuple[str, str]], *,
                        prefix: str = "edge", fleet_user: str = "fleet") -> Path:
    """Write passwd, acl and a mosquitto.conf snippet including them; the snippet's path."""
    atomic_write(out_dir / "passwd", passwd_text(entries).encode(), 0o600)
    atomic_write(out_dir / "acl", acl_text(prefix, fleet_user).encode(), 0o600)
    snippet = out_dir / "mosquitto-auth.conf"
    snippet.write_text(f"allow_anonymous false\npassword_file {out_dir / 'passwd'}\n"
                       f"acl_file {out_dir / 'acl'}\n")
    return snippet

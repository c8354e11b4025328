"""Names that identify things on the broker and in the registry: gateway ids, sites, tags.

A gateway id is at once an MQTT topic level, the gateway's broker user name, its MQTT client
id (the broker binds one to the other, see ``edge_agent.fleet.brokerconf``), a line in the
broker's password file, a registry key and, usually, a host name and a directory name. Every
place that takes one in (the site config, enrolment tokens, the registry, the broker files,
the topic builders) checks it here, with one rule:

    1-64 characters of lowercase a-z, digits 0-9, '-' and '_', starting with a letter or
    a digit; regular expression ``[a-z0-9][a-z0-9_-]{0,63}``.

Why each part:

- Lowercase only: mosquitto user names, topics and SQL keys compare case-sensitively, host
  names and some file systems do not. One spelling per gateway keeps ``GW-01`` and ``gw-01``
  from being two gateways to the broker and one to DNS. Every id in the shipped configs,
  docs, tests and benchmarks (``gw-0001``, ``cab-0117``, ``demo-gw-01``, ``gwtail``) is
  lowercase already.
- No ``/ + #`` (topic separators and wildcards), NUL (forbidden in MQTT strings), ``:``
  (the password file's field separator), spaces, newlines or other control characters
  (a newline would start a new line in the password or ACL file), no leading ``$``
  (broker topics) and no leading ``-`` (it reads as an option on command lines).
- At most 64 characters: a topic level, a user name and a file name of sane length.

Some ids are refused even though they match: the fleet's own broker users and client ids
(``fleet``, brokerconf's default fleet user; ``ingest``; ``edge-ingest``, the ingest's default
client id; ``fleet-*``, the fleet service's instance client ids) and conventional
administrator names. A gateway with one of those names would share a broker identity with
the operations centre: with client ids bound to user names, connecting as it would throw the
fleet's own client off the broker.

Sites and tags (enrolment, ``site:NAME`` and ``tag:NAME`` targets, bundle targets) follow the
same character rule, without the reserved names. The ``site`` key of a gateway's site config
is something else: free text describing the cabinet, never used as an identifier.
"""

from __future__ import annotations

import re

MAX_LEN = 64
ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
ID_RULE = ("1-64 characters of lowercase a-z, digits 0-9, '-' and '_', starting with a "
           "letter or a digit")

FLEET_BROKER_USER = "fleet"  # brokerconf's (and `edge-fleet broker-config`'s) default fleet user
RESERVED_NAMES = frozenset({
    FLEET_BROKER_USER, "ingest", "edge-ingest", "edge-fleet", "edge-agent",
    "admin", "administrator", "root", "mosquitto", "emqx", "broker", "system",
})
# The fleet service names its MQTT clients "fleet-<hex>" and the ingest "edge-ingest[...]".
RESERVED_PREFIXES = ("fleet-", "ingest-", "edge-ingest")

_SHOWN = 40  # characters of a bad value quoted in an error message


def _quote(value: str) -> str:
    # repr() escapes newlines and control characters, so the message is one safe log line.
    shown = value if len(value) <= _SHOWN else value[:_SHOWN] + "..."
    return repr(shown)


def _why(value: str) -> str:
    if not value:
        return "it is empty"
    if len(value) > MAX_LEN:
        return f"it has {len(value)} characters"
    if value.startswith("$"):
        return "it must not start with '$' (the broker's own topics and users)"
    bad = sorted({c for c in value if not ("a" <= c <= "z" or "0" <= c <= "9" or c in "-_")})
    if bad:
        if all("A" <= c <= "Z" for c in bad) and ID_RE.fullmatch(value.lower()):
            return f"it has uppercase letters (did you mean {value.lower()!r}?)"
        return "it must not contain " + " or ".join(repr(c) for c in bad[:5])
    return f"it must not start with {value[0]!r}"


def _check(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string of {ID_RULE}, got {type(value).__name__}")
    if not ID_RE.fullmatch(value):
        raise ValueError(f"{what} {_quote(value)} is not valid: {_why(value)}; "
                         f"expected {ID_RULE}")
    return value


def check_gateway_id(value: object) -> str:
    """Return ``value`` if it is a valid, unreserved gateway id, else raise ValueError why."""
    gid = _check("gateway id", value)
    if is_reserved(gid):
        raise ValueError(
            f"gateway id {gid!r} is reserved: the names {', '.join(sorted(RESERVED_NAMES))} "
            f"and those starting with {', '.join(RESERVED_PREFIXES)} belong to the operations "
            "centre's own broker users and clients; choose another id")
    return gid


def check_site(value: object) -> str:
    """Return ``value`` if it is a valid fleet site name (the id rule), else raise ValueError."""
    return _check("site", value)


def check_tag(value: object) -> str:
    """Return ``value`` if it is a valid tag name (the id rule), else raise ValueError."""
    return _check("tag", value)


def is_reserved(name: str) -> bool:
    """Whether ``name`` belongs to the operations centre (no gateway may take it)."""
    return name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES)


def check_broker_user(value: object) -> str:
    """Return ``value`` if it is a valid name for one of the fleet's own broker users.

    The id rule, and the name must be a reserved one (``fleet``, ``ingest``, ``fleet-north``,
    ``ingest-2``...): a name no gateway can take is a name no gateway can log in as.
    """
    user = _check("fleet broker user", value)
    if not is_reserved(user):
        raise ValueError(
            f"fleet broker user {user!r} could also be a gateway id: name the fleet's users "
            f"{', '.join(sorted(RESERVED_NAMES))} or start them with "
            f"{', '.join(RESERVED_PREFIXES)}")
    return user

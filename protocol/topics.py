"""The MQTT topic scheme: builders for every topic a gateway uses, and a parser back.

The scheme (docs/topics.md has the payloads)::

    {prefix}/{gateway}/state              retained JSON online/offline (offline is the will)
    {prefix}/{gateway}/data               QoS 1 data batches (edge_agent.codecs.batch)
    {prefix}/{gateway}/schema             retained QoS 1 schema message of the boot epoch
    {prefix}/{gateway}/schema-request     a consumer asks for a schema (its hash in hex)
    {prefix}/{gateway}/receipt            the ingest's receipt: what it has stored (JSON)
    {prefix}/{gateway}/health             JSON health, periodic
    {prefix}/{gateway}/desired/{kind}     retained signed bundle from the fleet
    {prefix}/{gateway}/reported           config apply results and current versions
    {prefix}/{gateway}/reported/software  software update reports (before, on ``reported``)
    {prefix}/{gateway}/cmd/{id}           a command to the gateway
    {prefix}/{gateway}/cmd-result/{id}    its result

The prefix may have several levels ("city/edge"); the gateway id is exactly one level and
follows the id rule of ``edge_agent.protocol.ids`` (checked by every builder here, and by
``parse_topic``, which does not recognise a topic whose gateway level breaks it).
"""

from __future__ import annotations

from typing import NamedTuple

from edge_agent.protocol.ids import check_gateway_id

STATE = "state"
DATA = "data"
SCHEMA = "schema"
SCHEMA_REQUEST = "schema-request"
RECEIPT = "receipt"
HEALTH = "health"
DESIRED = "desired"
REPORTED = "reported"
CMD = "cmd"
CMD_RESULT = "cmd-result"
SOFTWARE = "software"  # reported/software: retained apart, so neither kind hides the other

# kinds that take one more level (the bundle kind, the command id) after their name
KINDS_WITH_ARG = frozenset({DESIRED, CMD, CMD_RESULT})
KINDS_PLAIN = frozenset({STATE, DATA, SCHEMA, SCHEMA_REQUEST, RECEIPT, HEALTH,
                         REPORTED})

# MQTT 3.1.1 section 4.7: '+' and '#' are wildcards, '/' separates levels; NUL is forbidden.
_FORBIDDEN = ("/", "+", "#", "\x00")


class TopicRef(NamedTuple):
    """What a topic is about: the gateway, the kind, and the kind's argument ("" if none)."""

    gateway: str
    kind: str
    arg: str = ""


def check_level(what: str, name: str) -> str:
    """Return ``name`` if it is usable as one topic level, else raise ValueError saying why."""
    if not name:
        raise ValueError(f"{what} must not be empty")
    bad = [c for c in _FORBIDDEN if c in name]
    if bad:
        raise ValueError(f"{what} {name!r} must not contain {' or '.join(map(repr, bad))}")
    # MQTT 3.1.1, 1.5.3: no control characters. A newline would also start a new line in
    # the broker's ACL file, which quotes the prefix.
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in name):
        raise ValueError(f"{what} {name!r} must not contain control characters")
    return name


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if each of its '/'-separated levels is a valid level, else ValueError.

    Levels must be non-empty and free of wildcards and NUL (MQTT 3.1.1, 4.7.1); a leading '$'
    is reserved for the broker's own topics (4.7.2).
    """
    if prefix.startswith("$"):
        raise ValueError(f"topic prefix {prefix!r} must not start with '$' (broker topics)")
    for level in prefix.split("/"):
        check_level(f"topic prefix {prefix!r}: level", level)
    return prefix


def _topic(prefix: str, gateway: str, *levels: str) -> str:
    return "/".join((check_prefix(prefix), check_gateway_id(gateway), *levels))


def state_topic(prefix: str, gateway: str) -> str:
    """The retained online/offline state topic."""
    return _topic(prefix, gateway, STATE)


def data_topic(prefix: str, gateway: str) -> str:
    """The data batch topic (QoS 1)."""
    return _topic(prefix, gateway, DATA)


def schema_topic(prefix: str, gateway: str) -> str:
    """The retained schema topic: the stream dictionary data batches of version 3 refer to."""
    return _topic(prefix, gateway, SCHEMA)


def schema_request_topic(prefix: str, gateway: str) -> str:
    """Where a consumer asks the gateway to send a schema again (payload: its hash in hex)."""
    return _topic(prefix, gateway, SCHEMA_REQUEST)


def receipt_topic(prefix: str, gateway: str) -> str:
    """Where the ingest says what it has stored of the gateway's batches (protocol.receipts)."""
    return _topic(prefix, gateway, RECEIPT)


def health_topic(prefix: str, gateway: str) -> str:
    """The periodic health topic."""
    return _topic(prefix, gateway, HEALTH)


def desired_topic(prefix: str, gateway: str, kind: str) -> str:
    """The retained desired-state topic for one bundle kind (config, software)."""
    return _topic(prefix, gateway, DESIRED, check_level("desired kind", kind))


def reported_topic(prefix: str, gateway: str, kind: str = "") -> str:
    """The reported-state topic of a report of ``kind`` (``reported_suffix``)."""
    return _topic(prefix, gateway, reported_suffix(kind))


def reported_suffix(kind: object) -> str:
    """Where a report of ``kind`` goes: software reports on ``reported/software``, the rest
    (config) on ``reported``; each is retained, so neither kind's last report hides the
    other's on the broker."""
    return f"{REPORTED}/{SOFTWARE}" if kind == SOFTWARE else REPORTED


def subscription(prefix: str, kind: str, gateway: str = "+") -> str:
    """A topic filter for one kind on one gateway or, with gateway "+", on all of them.

    Kinds with an argument (desired, cmd, cmd-result) get a trailing "+" level; ``reported``
    ends in "#", which matches ``reported`` itself and ``reported/software`` (MQTT 3.1.1,
    4.7.1.2).
    """
    if gateway != "+":
        check_gateway_id(gateway)
    if kind in KINDS_WITH_ARG:
        return f"{check_prefix(prefix)}/{gateway}/{kind}/+"
    if kind == REPORTED:
        return f"{check_prefix(prefix)}/{gateway}/{kind}/#"
    if kind in KINDS_PLAIN:
        return f"{check_prefix(prefix)}/{gateway}/{kind}"
    raise ValueError(f"unknown topic kind {kind!r}: expected one of "
                     f"{sorted(KINDS_PLAIN | KINDS_WITH_ARG)}")


def parse_topic(topic: str, prefix: str = "edge") -> TopicRef | None:
    """Split a topic of this scheme into (gateway, kind, arg); None if it is not one.

    A gateway level that is not a valid gateway id makes it not one: no gateway can have
    published it, and callers would otherwise store rows under a name nothing else accepts.
    """
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    levels = topic[len(head):].split("/")
    if any(not level or level in ("+", "#") for level in levels):
        return None
    try:
        check_gateway_id(levels[0])
    except ValueError:
        return None
    if len(levels) == 2 and levels[1] in KINDS_PLAIN:
        return TopicRef(levels[0], levels[1])
    if len(levels) == 3 and levels[1] in KINDS_WITH_ARG:
        return TopicRef(levels[0], levels[1], levels[2])
    if len(levels) == 3 and levels[1] == REPORTED and levels[2] == SOFTWARE:
        return TopicRef(levels[0], REPORTED, SOFTWARE)
    return None

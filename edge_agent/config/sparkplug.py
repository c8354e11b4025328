"""The [sparkplug] section of a site config: the Sparkplug B view of the gateway (off by default).

Sparkplug identifiers become topic levels: a valid UTF-8 string without '+', '/' or '#'
(Sparkplug 3.0, 4.1.2-4.1.5 [tck-id-topic-structure-namespace-valid-group-id]
[tck-id-topic-structure-namespace-valid-edge-node-id]); we also refuse control characters and
NUL, as for every topic level (``protocol.topics.check_level``), and a leading '$'.
"""

from __future__ import annotations

from typing import Any

from edge_agent.config.model import SparkplugConfig
from edge_agent.protocol import topics
from edge_agent.protocol.tomlcheck import Checker

SPARKPLUG_KEYS = ("enabled", "group_id", "edge_node_id", "primary_host_id", "client_id")
MAX_ID_CHARS = 128
ID_TEXT = (f"1 to {MAX_ID_CHARS} characters, none of '+', '/', '#', NUL or a control "
           "character, not starting with '$' (a Sparkplug id is one MQTT topic level)")


def sparkplug_id_ok(value: str) -> bool:
    """True when ``value`` can be a Sparkplug group, edge node, device or host id here."""
    if not value or len(value) > MAX_ID_CHARS or value.startswith("$"):
        return False
    try:
        topics.check_level("id", value)
    except ValueError:
        return False
    return True


def parse_sparkplug(chk: Checker, raw: dict[str, Any], gateway_id: str | None,
                    client_id: str | None) -> SparkplugConfig:
    """The [sparkplug] table; problems go to ``chk``. Disabled (the default) needs nothing."""
    p = "sparkplug"
    chk.keys(raw, p, SPARKPLUG_KEYS)
    enabled = chk.get(raw, p, "enabled", bool, False)
    group = chk.get(raw, p, "group_id", str, None, check=sparkplug_id_ok,
                    expected=f"a Sparkplug group id: {ID_TEXT}")
    if enabled and group is None and "group_id" not in raw:
        chk.note(f"{p}.group_id", f"missing; expected a Sparkplug group id when enabled: {ID_TEXT}")
    node = chk.get(raw, p, "edge_node_id", str, None, check=sparkplug_id_ok,
                   expected=f"a Sparkplug edge node id: {ID_TEXT}")
    if enabled and node is None and gateway_id is not None and not sparkplug_id_ok(gateway_id):
        chk.note(f"{p}.edge_node_id", f"missing, and the gateway id {gateway_id!r} is no "
                 f"Sparkplug edge node id; expected {ID_TEXT}")
    host = chk.get(raw, p, "primary_host_id", str, None, check=sparkplug_id_ok,
                   expected=f"the Sparkplug host id of the primary host: {ID_TEXT}")
    client = chk.get(raw, p, "client_id", str, None, check=lambda v: 0 < len(v) <= 128,
                     expected="a string of 1 to 128 characters")
    if client is not None and client == client_id:
        chk.problem(f"{p}.client_id", client, "a client id other than mqtt.client_id (two "
                    "connections with one id take the session from each other)")
    return SparkplugConfig(
        enabled=enabled, group_id=group or "", edge_node_id=node or gateway_id or "",
        primary_host_id=host,
        client_id=client or f"{client_id or gateway_id or 'edge-agent'}-spb")

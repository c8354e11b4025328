"""Commands in the registry: what was sent, and every gateway's answers (docs/commands.md).

``commands`` holds each command as signed and published (``edge-fleet cmd send``);
``command_results`` every ``cmd-result/{id}`` answer the fleet service took in, one row per
(id, gateway, status), so an answer redelivered at QoS 1 is stored once. Answers are untrusted
gateway input and go through the service's intake (``parse_result``: limits, then each
field's type) before a statement runs; the row keeps the answer's JSON whole.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from edge_agent.fleet.intake import MAX_REASON, IntakeError, JsonLimits, quote
from edge_agent.fleet.registry import Registry
from edge_agent.protocol.command import check_command_id

# A real answer is under 2 KB; one with 256 lamps' read-backs about 40 KB.
RESULT_LIMITS = JsonLimits(max_bytes=128 * 1024, max_depth=6, max_items=1024, max_str=4096,
                           max_containers=2048)
STATUSES = ("accepted", "done", "refused", "failed")


def parse_result(command_id: str, doc: Mapping[str, Any]) -> tuple[str, str]:
    """(status, reason) of a ``cmd-result`` answer; IntakeError naming the field otherwise."""
    try:
        check_command_id(command_id)
    except ValueError as exc:
        raise IntakeError("bad_id", str(exc)) from None
    if doc.get("id") != command_id:
        raise IntakeError("id_mismatch", f"id {quote(str(doc.get('id')))} on the topic of "
                          f"{command_id}")
    status = doc.get("status")
    if status not in STATUSES:
        raise IntakeError("bad_status", f"status {quote(str(status))}: expected one of "
                          f"{STATUSES}")
    reason = doc.get("reason", "")
    if not isinstance(reason, str):
        raise IntakeError("bad_reason", f"reason is {type(reason).__name__}, expected text")
    return status, reason[:MAX_REASON]


def record_result(registry: Registry, gateway: str, command_id: str, doc: Mapping[str, Any],
                  now_ms: int) -> bool:
    """Store one answer (once per id, gateway and status); False if the gateway is unknown."""
    status, reason = parse_result(command_id, doc)
    if registry.fetchone("SELECT 1 FROM gateways WHERE id = ?", (gateway,)) is None:
        return False
    registry.execute(
        "INSERT INTO command_results (id, gateway, status, reason, doc, received_ms) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id, gateway, status) DO NOTHING",
        (command_id, gateway, status, reason, json.dumps(doc, sort_keys=True), now_ms))
    return True


def record_command(registry: Registry, command_id: str, action: str, envelope: bytes,
                   gateways: list[str], now_ms: int) -> None:
    """Store a command as published, with the gateways it was published to."""
    registry.execute(
        "INSERT INTO commands (id, action, envelope, targets, created_ms) VALUES (?, ?, ?, ?, ?)",
        (command_id, action, envelope.decode(), json.dumps(gateways), now_ms))


def results(registry: Registry, command_id: str | None = None,
            limit: int = 100) -> list[tuple[str, str, str, str, int, dict[str, Any] | None]]:
    """(id, gateway, status, reason, received ms, answer) newest first, of one id or all."""
    where, params = ("WHERE id = ?", (command_id,)) if command_id else ("", ())
    rows = registry.fetchall(
        f"SELECT id, gateway, status, reason, received_ms, doc FROM command_results {where} "
        "ORDER BY received_ms DESC, id, gateway LIMIT ?", (*params, limit))
    out = []
    for cid, gw, status, reason, ms, text in rows:
        try:
            doc = json.loads(text)
        except (TypeError, ValueError):
            doc = None
        out.append((cid, gw, status, reason or "", int(ms), doc if isinstance(doc, dict)
                    else None))
    return out

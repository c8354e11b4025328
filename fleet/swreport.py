"""Gateways' software state in the registry: strict intake of ``"kind":"software"`` reports,
the running version from the retained ``state``, and what ``edge-fleet`` shows of both.

A gateway's software reports (docs/updates.md) are kept apart from its config result (table
``gateway_software``, one row per gateway), so neither kind's latest report hides the other:
a config report after a software commit leaves the software state as it was, and a software
rollout reads only software reports. What is kept: the last report's result (downloading with
its bytes, switched, applied, rolled_back or refused with the reason and the failed release's
last log lines, failed, current, a verifier's refusal code), its release and release number,
when it came, and the version the gateway runs (from its ``state`` and from commits).

Every field is checked for its exact type and bounds before a statement runs; a report that
breaks them is an ``IntakeError`` (counted and logged by the service, nothing stored).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.fleet.intake import MAX_REASON, RESULT_NAME, IntakeError, quote
from edge_agent.protocol.errors import VerificationError
from edge_agent.protocol.ids import check_gateway_id
from edge_agent.protocol.jsonsafe import INT64_MAX, show
from edge_agent.protocol.release import version_number, version_text

MAX_LOG_LINES = 20      # the gateway sends the failed release's last 20 lines
MAX_LOG_LINE = 500      # characters kept of each
MAX_RUNNING = 64        # characters of a running version ("0.2.0", "0.2.0.dev3+g1234")
# Reports that leave the gateway running the release they name.
RUNS_RELEASE = frozenset({"applied", "current"})
# Optional fields a software report may carry, with the exact types each may have.
_OPTIONAL: dict[str, tuple[type, ...]] = {
    "step": (str,), "previous": (str,), "staged_s": (int, float), "status": (dict,),
    "sha256": (str,), "issued": (int,)}


@dataclass(frozen=True, slots=True)
class SoftwareReport:
    """One software report, checked."""

    result: str
    version: int | None          # the release number, on final outcomes only
    release: str | None          # "X.Y.Z"
    reason: str
    log_tail: tuple[str, ...]
    got: int | None              # bytes downloaded, of total
    total: int | None
    ts: int | None


@dataclass(frozen=True, slots=True)
class SoftwareState:
    """What the registry knows of one gateway's software."""

    running: str | None
    running_ms: int | None
    result: str | None
    version: int | None
    release: str | None
    reason: str
    log_tail: tuple[str, ...]
    got: int | None
    total: int | None
    result_ms: int | None

    def text(self) -> str:
        """The last report in a few words: 'applied 0.2.0', 'downloading 0.3.0 50%'."""
        if self.result is None:
            return "-"
        name = self.release or (version_text(self.version) if self.version else "")
        if self.result == "downloading" and self.got is not None and self.total:
            return f"downloading {name} {min(100, self.got * 100 // self.total)}%"
        return f"{self.result} {name}".strip()


def _check_type(doc: Mapping[str, Any], key: str, kinds: tuple[type, ...]) -> Any:
    value = doc.get(key)
    if value is not None and type(value) not in kinds:
        names = " or ".join(k.__name__ for k in kinds)
        raise IntakeError("field_type", f"$.{key} {show(value)} is {type(value).__name__}, "
                                        f"expected {names}")
    return value


def _count(doc: Mapping[str, Any], key: str) -> int | None:
    value = _check_type(doc, key, (int,))
    if value is not None and not 0 <= value <= INT64_MAX:
        raise IntakeError("int_range", f"$.{key} {show(value)} is outside 0..{INT64_MAX}")
    return None if value is None else int(value)


def _release(doc: Mapping[str, Any], key: str) -> tuple[str | None, int | None]:
    """A release named "X.Y.Z" (or, for ``version``, its number): (text, number)."""
    value = _check_type(doc, key, (str, int) if key == "version" else (str,))
    if value is None:
        return None, None
    if type(value) is int:
        if not 0 < value < 1_000_000_000:
            raise IntakeError("int_range", f"$.{key} {show(value)} is not a release number")
        return version_text(value), value
    try:
        return value, version_number(value)
    except VerificationError:
        raise IntakeError("field_value", f"$.{key} {show(value)} is not a release X.Y.Z") \
            from None


def parse_software_report(doc: Mapping[str, Any]) -> SoftwareReport:
    """The report in a ``"kind":"software"`` document; IntakeError naming the field."""
    result = doc.get("result")
    if type(result) is not str or not RESULT_NAME.fullmatch(result):
        raise IntakeError("field_value" if type(result) is str else "field_type",
                          f"$.result {show(result)} is not a result name")
    name, number = _release(doc, "version")
    release, _ = _release(doc, "release")
    if name is not None and release is not None and name != release:
        raise IntakeError("field_value", f"$.version {show(doc['version'])} and $.release "
                                         f"{show(release)} name different releases")
    reason = _check_type(doc, "reason", (str,)) or ""
    if len(reason) > MAX_REASON:
        reason = reason[:MAX_REASON] + f" [... {len(reason) - MAX_REASON} more characters]"
    lines = _check_type(doc, "log_tail", (list,)) or []
    if len(lines) > MAX_LOG_LINES or any(type(x) is not str for x in lines):
        raise IntakeError("field_value", f"$.log_tail: expected at most {MAX_LOG_LINES} "
                                         "strings")
    for key, kinds in _OPTIONAL.items():
        _check_type(doc, key, kinds)
    got, total, ts = _count(doc, "bytes"), _count(doc, "total"), _count(doc, "ts")
    if got is not None and total is not None and got > total:
        raise IntakeError("field_value", f"$.bytes {got} exceeds $.total {total}")
    # Only final outcomes carry "version" (a rollout counts those); progress names "release".
    return SoftwareReport(result, number, release or name, reason,
                          tuple(x[:MAX_LOG_LINE] for x in lines), got, total, ts)


def running_version(value: object) -> str | None:
    """The version a ``state`` document says the gateway runs; IntakeError if unusable."""
    if value is None:
        return None
    if (type(value) is not str or not 0 < len(value) <= MAX_RUNNING
            or not value.isprintable() or " " in value):
        raise IntakeError("field_value", f"$.version {quote(str(value), 80)} is not a "
                                         f"version (1-{MAX_RUNNING} printable characters)")
    return value


def _ensure_row(db: Any, gateway: str) -> bool:
    """Create the gateway's software row if it is enrolled; False if it is not."""
    if db.fetchone("SELECT 1 FROM gateways WHERE id = ?", (gateway,)) is None:
        return False
    db.execute("INSERT INTO gateway_software (gateway) VALUES (?) "
               "ON CONFLICT (gateway) DO NOTHING", (gateway,))
    return True


def record_running(db: Any, gateway: str, version: str, now_ms: int) -> None:
    """Note the version a gateway runs (from its state or a commit)."""
    db.execute("UPDATE gateway_software SET running = ?, running_ms = ? WHERE gateway = ?",
               (version, now_ms, gateway))


def record_software(db: Any, gateway: str, doc: Mapping[str, Any], now_ms: int,
                    awaiting: Sequence[str]) -> bool:
    """Store a gateway's software report; False if the gateway is unknown.

    A report with a gateway time older than the stored one's is not stored over it. Each
    software rollout waiting for this gateway's report (``awaiting``: its statuses) is told.
    """
    rep = parse_software_report(doc)
    gateway = check_gateway_id(gateway)
    with db.transaction():
        if not _ensure_row(db, gateway):
            return False
        db.execute("UPDATE gateways SET last_seen_ms = ? WHERE id = ?", (now_ms, gateway))
        # A release rolled back here is refused when offered again (the retained offer comes
        # back at the next start): that refusal repeats the rollback and must not hide its
        # reason and log lines.
        repeat, extra = ("", ()) if rep.result != "refused" or rep.version is None else (
            " AND NOT (result = 'rolled_back' AND version IS NOT NULL AND version = ?)",
            (rep.version,))
        stored = db.execute(
            "UPDATE gateway_software SET result = ?, version = ?, release = ?, reason = ?, "
            "log_tail = ?, got_bytes = ?, total_bytes = ?, result_ms = ?, result_ts = ? "
            "WHERE gateway = ? AND (CAST(? AS BIGINT) IS NULL OR result_ts IS NULL "
            f"OR result_ts <= ?){repeat}",
            (rep.result, rep.version, rep.release, rep.reason, json.dumps(list(rep.log_tail)),
             rep.got, rep.total, now_ms, rep.ts, gateway, rep.ts, rep.ts, *extra)) == 1
        if not stored:
            return True
        if rep.result in RUNS_RELEASE and rep.release:
            record_running(db, gateway, rep.release, now_ms)
        db.execute("UPDATE rollout_targets SET pending = pending + 1 WHERE gateway = ? "
                   f"AND status IN ({', '.join('?' * len(awaiting))}) AND rollout IN "
                   "(SELECT id FROM rollouts WHERE kind = 'software')", (gateway, *awaiting))
    return True


# The columns ``software_state`` reads, after a LEFT JOIN of gateway_software as s.
STATE_COLUMNS = ("s.running, s.running_ms, s.result, s.version, s.release, s.reason, "
                 "s.log_tail, s.got_bytes, s.total_bytes, s.result_ms")


def _int(value: object) -> int | None:
    return value if type(value) is int else None


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def software_state(cols: Sequence[Any]) -> SoftwareState | None:
    """The state from ``STATE_COLUMNS``; None if the gateway has no software row. Tolerant:
    a stored log tail that does not read back shows as none."""
    if all(c is None for c in cols):
        return None
    try:
        tail = json.loads(cols[6]) if isinstance(cols[6], str) else []
    except ValueError:
        tail = []
    lines = tuple(str(x) for x in tail) if isinstance(tail, list) else ()
    return SoftwareState(_text(cols[0]), _int(cols[1]), _text(cols[2]), _int(cols[3]),
                         _text(cols[4]), str(cols[5] or ""), lines, _int(cols[7]),
                         _int(cols[8]), _int(cols[9]))


def rollout_software(db: Any, rollout_id: str) -> list[tuple[str, str, SoftwareState | None]]:
    """(gateway, its status in the rollout, its software state) for every target, by id."""
    rows = db.fetchall(
        f"SELECT t.gateway, t.status, {STATE_COLUMNS} FROM rollout_targets t "
        "LEFT JOIN gateway_software s ON s.gateway = t.gateway WHERE t.rollout = ? "
        "ORDER BY t.gateway", (rollout_id,))
    return [(str(r[0]), str(r[1] or "-"), software_state(r[2:])) for r in rows]


def software_lines(db: Any, rollout_id: str, verbose: bool) -> list[str]:
    """What ``rollout status ID`` prints per gateway of a software rollout: its status in the
    rollout, its last software report, the version it runs; with ``verbose``, the reason and
    the failed release's last log lines."""
    out = []
    for gw, status, sw in rollout_software(db, rollout_id):
        running = (sw.running if sw else None) or "-"
        out.append(f"    {gw:<20} {status:<14} {(sw.text() if sw else '-'):<28} "
                   f"running {running}")
        if verbose and sw is not None and sw.reason:
            out.append(f"        reason: {plain(sw.reason[:500])}")
        if verbose and sw is not None:
            out.extend(f"        | {plain(line[:200])}" for line in sw.log_tail[-10:])
    return out


def plain(text: str) -> str:
    """A gateway's text fit for the operator's terminal: control characters (an escape
    sequence, a newline forging a line) shown escaped, never sent."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


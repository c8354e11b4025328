"""Intake of what gateways send the operations centre: strict parsing and counted rejections.

Every message a gateway publishes is untrusted input to a consumer that serves the whole
fleet: one that the consumer cannot take must cost that one message, never the consumer. So
each message is parsed here under explicit limits (``JsonLimits``: payload bytes, nesting,
items, string lengths, UTF-8 without lone surrogates, integers within SQLite's int64) and
then checked field by field for exact types, all before the database sees a value. Whatever
is refused is an ``IntakeError`` with a short, stable reason code (for counting) and a text
naming the field and the value (for the log), and ``Rejections`` (protocol/rejections.py, the
limiter every intake shares) counts the codes and logs the first of each, then a periodic
count (one hostile gateway must not flood the log).

Limits (why these numbers):

- reported: 64 KiB, nesting 8, 1000 items, strings 8192 characters. A real report is about
  300 bytes; its longest part is the reason text (stored cut at ``MAX_REASON``).
- health: 4 MiB, nesting 16, 16,384 items per object, 32,768 objects, strings 4096. A real
  document is about 2 KB, plus up to ~420 bytes per device (measured with long names and a
  full error text) and ~270 per bus, and two objects per device (itself and its latency).
  The limit is sized for the largest gateway the fleet serves, not a typical one: a limit
  below a gateway's document refuses its health at every interval for as long as it runs
  (256 KiB did so past ~650 devices). 4 MiB holds 10,000 devices, forty fully populated
  RS-485 buses (247 units each), far past what one cabinet gateway polls; the item and
  object limits allow the same 10,000 devices with room. It stays bounded because one
  consumer parses every gateway's health in turn: the checked parse of a 10,000-device
  document (4.0 MB) took 0.8 s on the shared 2-core test machine.
  It is stored whole or refused, never cut (a cut JSON document is not JSON).
- state: 4 KiB, nesting 4, 64 items, strings 1024 (about 100 bytes in practice).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_agent.protocol.errors import EdgeError
from edge_agent.protocol.jsonsafe import INT64_MAX, INT64_MIN, UnsafeJsonError, loads_strict, show

__all__ = ["HEALTH_DEVICE_BUDGET", "HEALTH_LIMITS", "MAX_REASON", "REPORT_LIMITS",
           "RESULT_NAME", "STATE_LIMITS", "IntakeError", "JsonLimits", "Report", "health_text",
           "parse_report", "parse_state", "quote", "read_json", "read_stored_json"]


@dataclass(frozen=True, slots=True)
class JsonLimits:
    """What one JSON message may hold at most (see the module docstring for the values)."""

    max_bytes: int
    max_depth: int
    max_items: int
    max_str: int
    max_containers: int


REPORT_LIMITS = JsonLimits(max_bytes=64 * 1024, max_depth=8, max_items=1000, max_str=8192,
                           max_containers=2000)
HEALTH_LIMITS = JsonLimits(max_bytes=4 * 1024 * 1024, max_depth=16, max_items=16_384,
                           max_str=4096, max_containers=32_768)
HEALTH_DEVICE_BUDGET = 10_000  # devices whose health fits HEALTH_LIMITS (see above)
STATE_LIMITS = JsonLimits(max_bytes=4096, max_depth=4, max_items=64, max_str=1024,
                          max_containers=64)

MAX_REASON = 2000  # characters of a report's reason kept (plain text, so cutting is harmless)
RESULT_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")  # applied, current, rejected, dry_run_failed...
STATES = {"online": True, "offline": False}


class IntakeError(EdgeError):
    """A message refused at intake: ``code`` is the reason counted, the text says what and why."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


# Reason codes of jsonsafe's refusals, by the words of its messages (anything else: "json").
_JSON_CODES = (("bytes exceed", "too_large"), ("not UTF-8", "not_utf8"),
               ("nesting", "too_deep"), ("arrays and objects", "too_many_containers"),
               ("surrogate", "lone_surrogate"), ("out of range", "int_range"),
               ("is outside", "int_range"), ("items, the limit", "too_many_items"),
               ("characters, the limit", "string_too_long"), ("repeats a key", "duplicate_key"),
               ("not an integer", "float"), ("binary64", "float"),
               ("too long", "number_too_long"), ("is not JSON", "not_json"),
               ("not valid JSON", "not_json"), ("expected bytes", "not_bytes"))


def quote(text: str, limit: int = 200) -> str:
    """``text`` fit for a log line or a stored reason: repr-escaped (one line), bounded."""
    shown = repr(text[:limit])
    return shown if len(text) <= limit else shown + "..."


def _json_code(problem: str) -> str:
    for words, code in _JSON_CODES:
        if words in problem:
            return code
    return "json"


def read_json(payload: object, limits: JsonLimits) -> dict[str, Any]:
    """The JSON object in ``payload`` within ``limits``; IntakeError naming the path otherwise."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise IntakeError("not_bytes", f"payload is {type(payload).__name__}, not bytes")
    if not payload:
        raise IntakeError("empty", "payload is empty")
    if len(payload) > limits.max_bytes:  # before anything else looks at it
        raise IntakeError("too_large", f"payload of {len(payload)} bytes exceeds the limit of "
                                       f"{limits.max_bytes}")
    try:
        doc = loads_strict(payload, max_bytes=limits.max_bytes, max_depth=limits.max_depth,
                           max_items=limits.max_items, max_str=limits.max_str,
                           int_min=INT64_MIN, int_max=INT64_MAX, allow_float=True,
                           max_containers=limits.max_containers)
    except UnsafeJsonError as exc:
        raise IntakeError(_json_code(exc.problem), str(exc)) from None
    if not isinstance(doc, dict):
        raise IntakeError("not_object", f"$: expected a JSON object, got {type(doc).__name__}")
    return doc


def read_stored_json(text: object, limits: JsonLimits) -> dict[str, Any]:
    """A JSON object read back from the database; IntakeError if the stored text is not one."""
    if not isinstance(text, str):
        raise IntakeError("not_text", f"stored value is {type(text).__name__}, not text")
    # A stored string cannot hold lone surrogates through UTF-8 storage, but be total anyway.
    return read_json(text.encode("utf-8", "backslashreplace"), limits)


def _field(doc: Mapping[str, Any], key: str, kinds: tuple[type, ...], *,
           required: bool = False) -> Any:
    """``doc[key]`` if it has exactly one of ``kinds`` (bool is not an int here)."""
    if key not in doc:
        if required:
            raise IntakeError("field_missing", f"$.{key} is missing")
        return None
    value = doc[key]
    if value is None and not required:
        return None
    if type(value) not in kinds:
        names = " or ".join(k.__name__ for k in kinds)
        raise IntakeError("field_type", f"$.{key} {show(value)} is {type(value).__name__}, "
                                        f"expected {names}")
    return value


def _count(doc: Mapping[str, Any], key: str) -> int | None:
    value = _field(doc, key, (int,))
    if value is not None and not 0 <= value <= INT64_MAX:
        raise IntakeError("int_range", f"$.{key} {show(value)} is outside 0..{INT64_MAX}")
    return None if value is None else int(value)


@dataclass(frozen=True, slots=True)
class Report:
    """A gateway's apply report, as the registry stores it."""

    result: str
    version: int | None
    committed: int | None
    reason: str
    ts: int | None = None  # the gateway's own time of the report (orders one gateway's reports)


def parse_report(doc: Mapping[str, Any]) -> Report:
    """The report in a ``reported`` document (docs/topics.md); IntakeError naming the field."""
    if not isinstance(doc, Mapping):
        raise IntakeError("not_object", f"$: expected an object, got {type(doc).__name__}")
    result = _field(doc, "result", (str,), required=True)
    if not RESULT_NAME.fullmatch(result):
        raise IntakeError("field_value", f"$.result {show(result)} is not a result name "
                                         "(1-32 of a-z, 0-9, '_', starting with a letter)")
    version = _count(doc, "version")
    committed = _count(doc, "committed")
    ts = _count(doc, "ts")
    _field(doc, "kind", (str,))
    _field(doc, "status", (dict,))
    reason = _field(doc, "reason", (str,)) or ""
    if len(reason) > MAX_REASON:
        reason = reason[:MAX_REASON] + f" [... {len(reason) - MAX_REASON} more characters]"
    return Report(result, version, committed, reason, ts)


def health_text(doc: Mapping[str, Any]) -> str:
    """The health document as stored: compact JSON, checked to read back within the limits."""
    if not isinstance(doc, Mapping):
        raise IntakeError("not_object", f"$: expected an object, got {type(doc).__name__}")
    try:
        text = json.dumps(doc, separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (ValueError, TypeError, RecursionError) as exc:
        raise IntakeError("not_json", f"$: cannot be written as JSON: {exc}") from None
    if len(text) > HEALTH_LIMITS.max_bytes:
        # Refused whole: a cut JSON document is not JSON, and would break every reader.
        raise IntakeError("too_large", f"health document of {len(text)} characters exceeds "
                                       f"the limit of {HEALTH_LIMITS.max_bytes}")
    # The same limits as on the wire, so what is stored always reads back (``gateways()``).
    read_json(text.encode("utf-8", "backslashreplace"), HEALTH_LIMITS)
    return text


def parse_state(doc: Mapping[str, Any]) -> bool:
    """Whether a ``state`` document says online (True) or offline; IntakeError otherwise."""
    if not isinstance(doc, Mapping):
        raise IntakeError("not_object", f"$: expected an object, got {type(doc).__name__}")
    status = _field(doc, "status", (str,), required=True)
    if status not in STATES:
        raise IntakeError("field_value", f"$.status {show(status)} is not 'online' or "
                                         "'offline'")
    _count(doc, "epoch")
    _count(doc, "ts")
    _field(doc, "version", (str,))
    _field(doc, "reason", (str,))
    return STATES[status]


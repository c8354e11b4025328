"""Canonical bytes for signed metadata: one JSON encoding, so signer and verifier hash the same.

The rules follow TUF's canonical JSON in spirit: object keys sorted, no insignificant
whitespace, UTF-8, and no floats (a float has several decimal spellings, so a value that
round-trips differently in another language would break a signature). Integers, strings,
booleans, null, lists and objects with string keys are allowed.
"""

from __future__ import annotations

import json
from typing import Any

from edge_agent.protocol.errors import VerificationError


def _check(value: Any, path: str) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return
    if isinstance(value, float):
        raise VerificationError(f"canonical JSON: float {value!r} at {path or '$'} is not allowed")
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise VerificationError(f"canonical JSON: key {key!r} at {path or '$'} "
                                        "is not a string")
            _check(item, f"{path}.{key}")
        return
    raise VerificationError(f"canonical JSON: {type(value).__name__} at {path or '$'} "
                            "is not a JSON value")


def canonical_bytes(value: Any) -> bytes:
    """The one byte encoding of ``value`` that signatures are made over."""
    _check(value, "")
    return json.dumps(value, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False).encode("utf-8")

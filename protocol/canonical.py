"""Canonical bytes for signed metadata: one JSON encoding, so signer and verifier hash the same.

The rules follow TUF's canonical JSON in spirit: object keys sorted, no insignificant
whitespace, UTF-8, and no floats (a float has several decimal spellings, so a value that
round-trips differently in another language would break a signature). Integers, strings,
booleans, null, lists and objects with string keys are allowed, within limits that make the
encoding total: integers within +-(2**53 - 1) (larger ones have no single meaning across JSON
implementations), strings that are Unicode text (a lone surrogate has no UTF-8 encoding),
nesting at most ``MAX_DEPTH`` deep (which also refuses a structure that contains itself).
Anything else is refused with VerificationError naming where it is, never another exception.
"""

from __future__ import annotations

import json
from typing import Any

from edge_agent.protocol.errors import VerificationError
from edge_agent.protocol.jsonsafe import SURROGATE, format_path, show

MAX_SAFE_INT = 2**53 - 1
MAX_DEPTH = 32  # signed metadata is at most 4 levels deep; a cycle is refused here too


def _fail(keys: list[str | int], problem: str) -> VerificationError:
    return VerificationError(f"canonical JSON: {problem} at {format_path(keys)}")


def check_canonical(value: Any) -> None:
    """Raise VerificationError naming the first part of ``value`` that has no canonical bytes."""
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        item, keys = stack.pop()
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, str):
            if SURROGATE.search(item):
                raise _fail(keys, f"string {show(item)} holds a lone surrogate (not UTF-8 text)")
        elif isinstance(item, int):
            if not -MAX_SAFE_INT <= item <= MAX_SAFE_INT:
                raise _fail(keys, f"integer {show(item)} is outside +-(2**53 - 1)")
        elif isinstance(item, float):
            raise _fail(keys, f"float {item!r} is not allowed")
        elif isinstance(item, list | tuple | dict):
            if len(keys) >= MAX_DEPTH:
                raise _fail(keys, f"nesting deeper than {MAX_DEPTH} levels (or a cycle)")
            if isinstance(item, dict):
                for key, sub in item.items():
                    if not isinstance(key, str):
                        raise _fail(keys, f"key {show(key)} is not a string")
                    if SURROGATE.search(key):
                        raise _fail(keys, f"key {show(key)} holds a lone surrogate")
                    stack.append((sub, [*keys, key]))
            else:
                stack.extend((sub, [*keys, i]) for i, sub in enumerate(item))
        else:
            raise _fail(keys, f"{type(item).__name__} is not a JSON value")


def canonical_bytes(value: Any) -> bytes:
    """The one byte encoding of ``value`` that signatures are made over."""
    check_canonical(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False).encode("utf-8")

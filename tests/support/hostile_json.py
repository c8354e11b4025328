"""Hostile JSON for property tests: values no well-behaved encoder writes, spliced into documents.

``hostile_values()`` draws values that break a reader which trusts JSON: lone surrogates,
integers far outside int64, floats where integers are meant, NaN and Infinity, strings and
arrays far longer than any field needs, wrong types, and raw text no ``json.dumps`` writes
(nesting thousands deep, repeated keys, 5000-digit literals, bytes that are not UTF-8).
``mutations(doc)`` replaces, deletes or adds one node of a genuine document with such a value;
``render`` writes the result as bytes with the raw pieces spliced in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st


@dataclass(frozen=True)
class Raw:
    """JSON text (bytes) spliced in verbatim where this value stands."""

    text: bytes


RAW_PIECES = [
    b"[" * 5000 + b"]" * 5000,                    # nesting far past any limit
    b"{\"a\":" * 300 + b"1" + b"}" * 300,
    b"{\"a\":1,\"a\":2}",                          # repeated key
    b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-0.0", b"1.0", b"7E0",
    b"1" * 5000,                                   # beyond int() digit limits
    b"9" * 30, b"-" + b"9" * 25,
    b"\"\\ud800\"", b"\"\\udfff\\ud800\"", b"\"a\\udc00b\"",  # lone surrogates
    b"{\"\\ud800\":1}",                            # ... as a key
    b"\"\xff\xfe\"", b"\"\xed\xa0\x80\"", b"\"\xc0\xaf\"",  # not UTF-8 / encoded surrogate
    b"\"" + b"x" * 70_000 + b"\"",
    b"[" + b"0," * 70_000 + b"0]",
    b"\"\\u0000\"", b"\"\\n\\u001b[2J\"",         # control characters
]

_INTS = st.sampled_from([0, -1, 1, 2**31, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64,
                         -(2**63) - 1, 10**30, -(10**30)])
_SURROGATES = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
_TEXT = st.one_of(st.text(max_size=8), _SURROGATES, st.just("x" * 300), st.just("\ud800ok"),
                  st.just("0" * 64), st.just("A" * 64), st.just("A" * 128))
_SCALARS = st.one_of(st.none(), st.booleans(), _INTS, st.integers(), st.floats(), _TEXT)


def hostile_values() -> st.SearchStrategy[Any]:
    """One hostile value: a scalar, a small container of them, or raw text."""
    return st.one_of(
        _SCALARS,
        st.lists(_SCALARS, max_size=3),
        st.dictionaries(_TEXT, _SCALARS, max_size=3),
        st.sampled_from(RAW_PIECES).map(Raw),
    )


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every node's path in a JSON document (the root is ``()``)."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, (*prefix, i))
    return out


def _replace(doc: Any, path: tuple[Any, ...], value: Any, op: str) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        new = dict(doc)
        if not rest and op == "delete":
            del new[head]
        elif not rest and op == "add":
            new[f"{head}_extra"] = value
        else:
            new[head] = _replace(doc[head], rest, value, op)
        return new
    new_list = list(doc)
    if not rest and op == "delete":
        del new_list[head]
    elif not rest and op == "add":
        new_list.insert(head, value)
    else:
        new_list[head] = _replace(doc[head], rest, value, op)
    return new_list


@st.composite
def mutations(draw: st.DrawFn, doc: Any) -> Any:
    """``doc`` with one node replaced, deleted, or a hostile sibling added."""
    path = draw(st.sampled_from(paths(doc)))
    op = draw(st.sampled_from(["replace", "replace", "delete", "add"])) if path else "replace"
    return _replace(doc, path, draw(hostile_values()), op)


def render(doc: Any) -> bytes:
    """``doc`` as JSON bytes, with every ``Raw`` spliced in and NaN written as NaN."""
    pieces: list[bytes] = []

    def placeholder(value: Any) -> Any:
        if isinstance(value, Raw):
            pieces.append(value.text)
            return f"\x00raw{len(pieces) - 1}\x00"
        if isinstance(value, dict):
            return {k: placeholder(v) for k, v in value.items()}
        if isinstance(value, list):
            return [placeholder(v) for v in value]
        return value

    text = json.dumps(placeholder(doc), separators=(",", ":")).encode()
    for i, piece in enumerate(pieces):
        text = text.replace(f'"\\u0000raw{i}\\u0000"'.encode(), piece)
    return text

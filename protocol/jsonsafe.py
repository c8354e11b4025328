"""Strict JSON reading for untrusted bytes: explicit limits, checked before and after parsing.

``json.loads`` alone accepts much that a hostile sender can use against the reader: input as
large as the sender likes, nesting deep enough to exhaust the stack, integer literals of
thousands of digits (quadratic to convert, and 10**30 where an int64 is meant), NaN and
Infinity, floats where integers are meant, repeated object keys (two readers may keep
different values), text that is not UTF-8 (``json.loads`` on bytes also guesses UTF-16 and
UTF-32) and strings holding lone surrogates (``"\\ud800"`` escapes parse, but no UTF-8 encoder
can write them back, so the first ``.encode()`` downstream raises). ``loads_strict`` refuses
all of these with one error, ``UnsafeJsonError``, naming the JSON path of the bad value.

Order of work, cheapest and least trusting first, so a hostile document costs no more than
reading its bytes: size; UTF-8 validity; a scan of the bracket skeleton (strings removed) for
nesting depth and number of arrays and objects, before anything is parsed; the parse itself,
whose hooks refuse long number literals, integers out of range, floats, NaN and repeated keys
as they are met; then one iterative walk of the tree for string lengths, lone surrogates and
container sizes, which reports what the hooks refused with its path.

The signed-bundle verifier (``edge_agent.protocol.bundle``) and the data-batch header
(``edge_agent.codecs.batch_v2``) read with it; the fleet's HTTP intake and the ingest can too.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate
from typing import Any, TypeAlias

from edge_agent.protocol.errors import EdgeError

__all__ = ["INT64_MAX", "INT64_MIN", "SURROGATE", "UnsafeJsonError", "format_path",
           "loads_strict", "show"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Any lone surrogate code point: these come only from \uD800-\uDFFF escapes, since the text
# itself was decoded as strict UTF-8 (which refuses encoded surrogates).
SURROGATE = re.compile("[\ud800-\udfff]")
# Longest integer literal parsed; int64's extremes have 19 digits and a sign. Anything longer
# is out of range anyway, and refusing it before int() keeps conversion linear.
MAX_INT_DIGITS = 20
# A float literal as Python's repr writes one is at most 24 characters (-2.2250738585072014e-308).
MAX_FLOAT_CHARS = 32
# Deeper limits would let json's recursive parser near the interpreter's recursion limit.
DEPTH_CEILING = 200

_SHOWN = 40  # characters of an untrusted value quoted in an error message
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,39}")
# A JSON string, or an unterminated one running to the end: the optional closing quote means
# a match never fails, so removing strings is one linear pass whatever the input.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))

# A path is kept as a linked chain (parent, key) and formatted only when an error names it.
_Path: TypeAlias = "tuple[_Path, str | int] | None"


class UnsafeJsonError(EdgeError):
    """Untrusted JSON broke a limit or a rule; ``path`` names the value (``$`` is the whole)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class _Refused:
    """What a parse hook returns for a value it refuses; the walk reports it with its path."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def show(value: object) -> str:
    """A bounded, printable rendering of an untrusted value for an error message."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"  # repr may refuse (4300 digits)
    try:
        text = repr(value)  # repr escapes control characters and surrogates: one safe line
    except Exception:  # a hostile object's own __repr__ must not decide whether we fail
        return f"a {type(value).__name__}"
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _parts(path: _Path) -> Iterator[str | int]:
    keys: list[str | int] = []
    while path is not None:
        path, key = path
        keys.append(key)
    return reversed(keys)


def format_path(keys: Iterable[str | int]) -> str:
    """``$.a.b[3]['odd key']`` for the keys from the root down."""
    out = ["$"]
    for key in keys:
        if isinstance(key, int):
            out.append(f"[{key}]")
        elif _PLAIN_KEY.fullmatch(key):
            out.append(f".{key}")
        else:
            out.append(f"[{show(key)}]")
    return "".join(out)


def _fail(path: _Path, problem: str) -> UnsafeJsonError:
    return UnsafeJsonError(format_path(_parts(path)), problem)


def _skeleton_scan(data: bytes, max_depth: int, max_containers: int | None) -> None:
    """Refuse too deep nesting or too many arrays and objects before anything is parsed."""
    skeleton = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    opened = skeleton.count(b"[") + skeleton.count(b"{")
    if max_containers is not None and opened > max_containers:
        raise UnsafeJsonError("$", f"{opened} arrays and objects, the limit is {max_containers}")
    if opened > max_depth and max(accumulate(map(_STEP.__getitem__, skeleton))) > max_depth:
        raise UnsafeJsonError("$", f"nesting deeper than {max_depth} levels")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any] | _Refused:
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return _Refused(f"object repeats a key: {show(key)}")
        seen.add(key)
    raise AssertionError("unreachable: fewer keys than pairs means one repeats")


def _int_parser(int_min: int, int_max: int) -> Callable[[str], int | _Refused]:
    def parse_int(literal: str) -> int | _Refused:
        if len(literal) > MAX_INT_DIGITS:  # refused before int(): conversion stays linear
            return _Refused(f"integer literal of {len(literal)} characters is out of range")
        value = int(literal)
        if not int_min <= value <= int_max:
            return _Refused(f"integer {value} is outside {int_min}..{int_max}")
        return value
    return parse_int


def _parse_float_refused(literal: str) -> _Refused:
    return _Refused(f"number {show(literal)} is not an integer (floats are not allowed here)")


def _parse_float(literal: str) -> float | _Refused:
    if len(literal) > MAX_FLOAT_CHARS:
        return _Refused(f"number literal of {len(literal)} characters is too long")
    value = float(literal)
    if not math.isfinite(value):
        return _Refused(f"number {show(literal)} is beyond binary64")
    return value


def _parse_constant(literal: str) -> _Refused:
    return _Refused(f"{literal} is not JSON")


def loads_strict(data: bytes | bytearray | memoryview, *, max_bytes: int, max_depth: int,
                 max_items: int, max_str: int, int_min: int = INT64_MIN,
                 int_max: int = INT64_MAX, allow_float: bool = False,
                 max_containers: int | None = None) -> Any:
    """Parse untrusted UTF-8 JSON within every limit, or raise UnsafeJsonError naming the path.

    ``max_items`` bounds each array and object, ``max_str`` each string and key (characters),
    ``max_depth`` the nesting of arrays and objects (1: a flat array), ``max_containers`` how
    many arrays and objects the document holds in all; integers must lie in
    ``int_min..int_max``; floats (finite only) are refused unless ``allow_float``.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise UnsafeJsonError("$", f"expected bytes, got {type(data).__name__}")
    if not 1 <= max_depth <= DEPTH_CEILING:
        raise ValueError(f"max_depth {max_depth} must be 1..{DEPTH_CEILING}")
    raw = bytes(data)
    if len(raw) > max_bytes:
        raise UnsafeJsonError("$", f"{len(raw)} bytes exceed the limit of {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnsafeJsonError("$", f"not UTF-8 at byte {exc.start} ({exc.reason})") from None
    _skeleton_scan(raw, max_depth, max_containers)
    try:
        doc = json.loads(text, object_pairs_hook=_pairs, parse_int=_int_parser(int_min, int_max),
                         parse_float=_parse_float if allow_float else _parse_float_refused,
                         parse_constant=_parse_constant)
    except json.JSONDecodeError as exc:
        raise UnsafeJsonError("$", f"not valid JSON: {exc.msg} at line {exc.lineno} "
                                   f"column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # the skeleton scan should make these unreachable
        raise UnsafeJsonError("$", f"not valid JSON: {type(exc).__name__}") from None
    _walk(doc, max_depth, max_items, max_str, check_surrogates=b"\\u" in raw)
    return doc


def _bad_str(what: str, value: str, max_str: int, check_surrogates: bool) -> str | None:
    if len(value) > max_str:
        return f"{what} of {len(value)} characters, the limit is {max_str}"
    if check_surrogates and SURROGATE.search(value):
        return f"{what} {show(value)} holds a lone surrogate (not Unicode text)"
    return None


def _walk(doc: Any, max_depth: int, max_items: int, max_str: int, *,
          check_surrogates: bool) -> None:
    """Check strings, containers and refused values of a parsed document (iterative).

    Integers and floats were checked by the parse hooks, which leave a ``_Refused`` in place
    of a bad one; bools and null need nothing. Scalars are checked in their container's loop,
    so only containers go on the stack.
    """
    kind = type(doc)
    if kind is not list and kind is not dict:
        problem = (_bad_str("string", doc, max_str, check_surrogates) if kind is str
                   else doc.problem if kind is _Refused else None)
        if problem is not None:
            raise _fail(None, problem)
        return
    stack: list[tuple[Any, _Path, int]] = [(doc, None, 1)]
    while stack:
        node, path, depth = stack.pop()
        if depth > max_depth:
            raise _fail(path, f"nesting deeper than {max_depth} levels")
        if len(node) > max_items:
            raise _fail(path, f"{len(node)} items, the limit is {max_items}")
        if type(node) is dict:
            for key in node:
                problem = _bad_str("key", key, max_str, check_surrogates)
                if problem is not None:
                    raise _fail(path, problem)
            items: Iterable[tuple[str | int, Any]] = node.items()
        else:
            items = enumerate(node)
        for key, item in items:
            kind = type(item)
            if kind is str:
                if len(item) > max_str or check_surrogates:
                    problem = _bad_str("string", item, max_str, check_surrogates)
                    if problem is not None:
                        raise _fail((path, key), problem)
            elif kind is list or kind is dict:
                stack.append((item, (path, key), depth + 1))
            elif kind is _Refused:
                raise _fail((path, key), item.problem)

"""Typed, collected reading of parsed TOML: every problem names file, key path, value, expectation.

Readers never stop at the first problem: they record it and carry on, so an operator
sees every mistake in one run. ``Checker.raise_if_any`` turns the collection into a
``ConfigError``.

Intake (``parse_toml``, ``load_toml``) is bounded, because configs also arrive from the fleet and
a file that cannot be read must be refused with a message, never crash the gateway: at most
``MAX_TOML_BYTES``, UTF-8 (the first bad byte named by offset, line and column), tables and
arrays nested at most ``MAX_TOML_DEPTH`` deep, and any failure of the parser itself reported as
a problem of the file.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

from edge_agent.protocol.errors import ConfigError

T = TypeVar("T")
_MISSING: Any = object()

# A site config is kilobytes; the fleet's bundle payload cap (protocol.verify) is the same MiB.
MAX_TOML_BYTES = 1024 * 1024
# A site config nests tables four deep ([devices.NAME.extra_points.X]); tomllib recurses once
# per level of inline arrays and tables, so an unbounded depth is a RecursionError.
MAX_TOML_DEPTH = 16

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               dict: "a table", list: "an array"}


def describe(value: object) -> str:
    """Short, quoted rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_regular_file(path: Path, limit: int) -> bytes:
    """Up to ``limit`` + 1 bytes of a regular file; OSError (with strerror) for anything else.

    Opened non-blocking and checked with fstat before reading, so a FIFO or a device named
    where a file is expected is refused instead of blocking or streaming forever.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "Not a regular file", str(path))
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_toml_file(path: Path) -> bytes:
    """The bytes of a TOML file (at most one past the cap); ConfigError naming it if unreadable."""
    try:
        return read_regular_file(path, MAX_TOML_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError:  # os.open refuses a path with a NUL in it
        raise ConfigError(f"{path!r}: cannot read: the path contains a NUL character") from None


def load_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning read and syntax failures into a ConfigError naming the file."""
    return parse_toml(read_toml_file(path), str(path))


def parse_toml(data: bytes, source: str) -> dict[str, Any]:
    """Parse TOML bytes (size, UTF-8, depth bounded); ConfigError naming ``source`` if not."""
    if len(data) > MAX_TOML_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_TOML_BYTES} bytes (1 MiB); expected a "
                          "config of at most that size")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: {_utf8_problem(data, exc.start)}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid TOML: arrays or inline tables nested too "
                          f"deeply; expected at most {MAX_TOML_DEPTH} levels") from None
    except Exception as exc:  # hostile input: any failure of the parser is the file's
        # tomllib raises plain ValueError for integers past Python's 4300-digit limit, and
        # nothing promises it raises only TOMLDecodeError on other input.
        raise ConfigError(f"{source}: not valid TOML: {type(exc).__name__}: "
                          f"{describe(str(exc))}") from None
    if _depth(doc) > MAX_TOML_DEPTH:
        # Dotted keys (a.b.c... = 1) nest without recursing in the parser; whatever walks the
        # document later (repr in a message, say) would.
        raise ConfigError(f"{source}: tables or arrays nested more than {MAX_TOML_DEPTH} "
                          "levels deep; expected a flatter config")
    return doc


def _utf8_problem(data: bytes, offset: int) -> str:
    """Where the first byte that is not UTF-8 is: byte offset, 1-based line and column."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    line = data.count(b"\n", 0, offset) + 1
    # Everything before the first bad byte decoded, so the column counts characters.
    column = len(data[line_start:offset].decode("utf-8")) + 1
    return (f"not UTF-8: byte 0x{data[offset]:02x} at offset {offset} (line {line}, column "
            f"{column}) is not valid UTF-8; expected a UTF-8 file (re-save it as UTF-8; "
            "Latin-1 and other 8-bit encodings are not read)")


def _depth(doc: object) -> int:
    """How deep tables and arrays nest in ``doc`` (iterative: the depth is unbounded here)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(doc, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Iterable[object] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_TOML_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


class Checker:
    """Collects problems found while reading one file."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def _where(self, path: str) -> str:
        # Key paths come from the file: a newline or escape in a key must not start a new
        # numbered line or rewrite the terminal, so control characters are shown escaped.
        safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in path)
        return f"{self.source}: {safe}" if path else self.source

    def problem(self, path: str, value: object, expected: str) -> None:
        """Record that ``path`` holds ``value`` where ``expected`` was wanted."""
        where = self._where(path)
        if value is _MISSING:
            self.problems.append(f"{where}: missing; expected {expected}")
        else:
            self.problems.append(f"{where} = {describe(value)}: expected {expected}")

    def note(self, path: str, message: str) -> None:
        """Record a problem that is not about one value (a clash between keys, say)."""
        where = self._where(path)
        self.problems.append(f"{where}: {message}")

    def raise_if_any(self) -> None:
        """Raise ConfigError listing every recorded problem."""
        if self.problems:
            raise ConfigError(self.problems)

    def keys(self, table: Mapping[str, Any], path: str, allowed: Iterable[str]) -> None:
        """Reject keys of ``table`` that are not in ``allowed``."""
        allowed_set = set(allowed)
        for key in table:
            if key not in allowed_set:
                full = f"{path}.{key}" if path else key
                self.note(full, f"unknown key; expected one of: {', '.join(sorted(allowed_set))}")

    def get(
        self,
        table: Mapping[str, Any],
        path: str,
        key: str,
        kind: type[T] | tuple[type, ...],
        default: T = _MISSING,
        *,
        check: Callable[[Any], bool] | None = None,
        expected: str = "",
    ) -> T:
        """Read ``table[key]`` as ``kind``; on a problem record it and return ``default``.

        Integers are accepted where a float is asked for; booleans never pass as numbers, and
        neither do TOML's ``inf`` and ``nan`` (no setting means them, and arithmetic on them
        fails far from here). A required key (no default) that is missing or bad returns None
        after recording.
        """
        full = f"{path}.{key}" if path else key
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if key not in table:
            if default is _MISSING:
                self.problem(full, _MISSING, expected or _kind_text(kinds))
                return None  # type: ignore[return-value]
            return default
        value = table[key]
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok and float in kinds and isinstance(value, int) and not isinstance(value, bool):
            try:
                value, ok = float(value), True
            except OverflowError:  # an integer past 1.8e308 is no number of seconds either
                ok = False
        if ok and isinstance(value, float) and not math.isfinite(value):
            self.problem(full, value, f"a finite number: {expected or _kind_text(kinds)}")
            return None if default is _MISSING else default  # type: ignore[return-value]
        if ok and check is not None and not check(value):
            ok = False
        if not ok:
            self.problem(full, value, expected or _kind_text(kinds))
            return None if default is _MISSING else default  # type: ignore[return-value]
        return cast(T, value)

    def choice(
        self,
        table: Mapping[str, Any],
        path: str,
        key: str,
        enum: Callable[[str], T],
        options: Iterable[str],
        default: T = _MISSING,
    ) -> T:
        """Read a string key that must be one of ``options`` and convert it with ``enum``."""
        opts = list(options)
        raw = self.get(table, path, key, str, _MISSING if default is _MISSING else None,
                       expected="one of " + ", ".join(repr(o) for o in opts))
        if raw is None:
            return None if default is _MISSING else default  # type: ignore[return-value]
        if raw not in opts:
            self.problem(f"{path}.{key}" if path else key, raw,
                         "one of " + ", ".join(repr(o) for o in opts))
            return None if default is _MISSING else default  # type: ignore[return-value]
        return enum(raw)


def _kind_text(kinds: tuple[type, ...]) -> str:
    return " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)

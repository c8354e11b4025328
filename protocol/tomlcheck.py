"""Typed, collected reading of parsed TOML: every problem names file, key path, value, expectation.

Readers never stop at the first problem: they record it and carry on, so an operator
sees every mistake in one run. ``Checker.raise_if_any`` turns the collection into a
``ConfigError``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from edge_agent.protocol.errors import ConfigError

T = TypeVar("T")
_MISSING: Any = object()

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               dict: "a table", list: "an array"}


def describe(value: object) -> str:
    """Short, quoted rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning read and syntax failures into a ConfigError naming the file."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


class Checker:
    """Collects problems found while reading one file."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def problem(self, path: str, value: object, expected: str) -> None:
        """Record that ``path`` holds ``value`` where ``expected`` was wanted."""
        where = f"{self.source}: {path}" if path else self.source
        if value is _MISSING:
            self.problems.append(f"{where}: missing; expected {expected}")
        else:
            self.problems.append(f"{where} = {describe(value)}: expected {expected}")

    def note(self, path: str, message: str) -> None:
        """Record a problem that is not about one value (a clash between keys, say)."""
        where = f"{self.source}: {path}" if path else self.source
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

        Integers are accepted where a float is asked for; booleans never pass as numbers.
        A required key (no default) that is missing or bad returns None after recording.
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
            value, ok = float(value), True
        if ok and check is not None and not check(value):
            ok = False
        if not ok:
            self.problem(full, value, expected or _kind_text(kinds))
            return None if default is _MISSING else default  # type: ignore[return-value]
        return value

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

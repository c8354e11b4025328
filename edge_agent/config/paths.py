"""Where the files a site config names may be: its own directory and the gateway's state dir.

A config names files the gateway reads (``mqtt.password_file``, ``ca_file``, ``cert_file``,
``key_file``, profile files). A config from the fleet is signed, but it must still not be able
to make the gateway read an arbitrary local file (and, with a broker URL of its choosing, send
it off the box), so every named file is confined:

- relative names resolve against the config's directory (for a fleet config, the directory of
  the operator's local config: the fleet's bytes have no directory of their own);
- after resolving symlinks and ``..`` the file must lie inside one of the allowed directories:
  the config's directory or the state dir (for a fleet config, both are the local config's);
- a NUL character is refused (no file name has one; ``open`` would raise).

docs/config.md states the rule for operators.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def resolved(path: Path) -> Path:
    """``path`` absolute, with every symlink and ``..`` resolved (it need not exist)."""
    # realpath resolves every symlink that exists and ".." in order, so a link inside an
    # allowed directory that points out of it is judged by where it points.
    return Path(os.path.realpath(path))


@dataclass(frozen=True, slots=True)
class FileRoots:
    """The directories a config may name files in (symlinks resolved)."""

    dirs: tuple[Path, ...]

    @classmethod
    def of(cls, *dirs: Path) -> FileRoots:
        """The resolved, de-duplicated ``dirs``, in order."""
        seen: list[Path] = []
        for d in dirs:
            real = resolved(d)
            if real not in seen:
                seen.append(real)
        return cls(tuple(seen))

    def text(self) -> str:
        """The directories for an error message."""
        return " or ".join(str(d) for d in self.dirs)

    def place(self, base: Path, name: str) -> tuple[Path | None, str]:
        """(resolved path, "") for ``name`` relative to ``base``, or (None, why it is refused)."""
        if "\0" in name:
            return None, "a file name has no NUL character"
        real = resolved(base / name)
        if not any(real == d or real.is_relative_to(d) for d in self.dirs):
            shown = "" if str(real) == name else f" ({name} resolves to {real})"
            return None, (f"a file in the config's directory or the state dir, {self.text()}"
                          f"{shown}; files elsewhere are not read")
        return real, ""

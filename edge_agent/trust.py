"""The gateway's persisted trusted state: pinned root, version floors, a lower bound on time.

Enrolment writes it first (the root keys pinned from the fleet); after that it changes only
when a verified bundle carries a newer root (rotation) or a bundle is committed (its version
becomes the floor for its kind). Files are replaced atomically (write a temp file in the same
directory, fsync, rename, fsync the directory) and created 0600: a crash leaves either the old
or the new file, never a torn one, and no other local user can read or change it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError

TRUST_FILE = "trust.json"


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically, the file created with ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fsync:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@dataclass(frozen=True, slots=True)
class TrustedState:
    """What a gateway trusts: who it is, the pinned root, and what it has committed."""

    gateway_id: str
    site: str
    tags: tuple[str, ...]
    root: dict[str, Any]                                  # the root envelope {signed, signatures}
    floors: dict[str, int] = field(default_factory=dict)  # kind -> committed version
    committed_sha256: dict[str, str] = field(default_factory=dict)  # kind -> payload hash
    time_floor: int = 0  # the latest "issued" time of anything verified: time never goes below

    @property
    def root_version(self) -> int:
        """Version of the pinned root."""
        return int(self.root["signed"]["version"])

    def floor(self, kind: str) -> int:
        """The committed version of ``kind`` (0 if none yet)."""
        return self.floors.get(kind, 0)

    def committed(self, kind: str, version: int, sha256: str, issued: int) -> TrustedState:
        """The state after committing ``kind`` at ``version``: the floor moves up, never down."""
        if version < self.floor(kind):
            raise ValueError(f"commit of {kind} v{version} below floor v{self.floor(kind)}")
        return replace(self, floors={**self.floors, kind: version},
                       committed_sha256={**self.committed_sha256, kind: sha256},
                       time_floor=max(self.time_floor, issued))

    def to_json(self) -> dict[str, Any]:
        """The state as stored on disk."""
        return {"gateway_id": self.gateway_id, "site": self.site, "tags": list(self.tags),
                "root": self.root, "floors": dict(self.floors),
                "committed_sha256": dict(self.committed_sha256), "time_floor": self.time_floor}

    @classmethod
    def from_json(cls, doc: Any, source: str = "trust state") -> TrustedState:
        """Parse a stored state; ConfigError naming what is wrong."""
        try:
            return cls(gateway_id=str(doc["gateway_id"]), site=str(doc["site"]),
                       tags=tuple(str(t) for t in doc["tags"]), root=dict(doc["root"]),
                       floors={str(k): int(v) for k, v in doc["floors"].items()},
                       committed_sha256={str(k): str(v)
                                         for k, v in doc["committed_sha256"].items()},
                       time_floor=int(doc["time_floor"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{source}: not a valid trust state ({exc!r})") from exc


def save_trust(state_dir: Path, state: TrustedState, *, fsync: bool = True) -> None:
    """Write the trusted state atomically, 0600."""
    data = json.dumps(state.to_json(), sort_keys=True, indent=1).encode()
    atomic_write(state_dir / TRUST_FILE, data, fsync=fsync)


def load_trust(state_dir: Path) -> TrustedState:
    """Read the trusted state; ConfigError if missing (not enrolled) or unreadable."""
    path = state_dir / TRUST_FILE
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no trusted state: enrol the gateway first "
                          "(edge-agent enroll --fleet URL --token T)") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read trusted state: {exc}") from exc
    return TrustedState.from_json(doc, str(path))

"""What a gateway trusts: its identity, the pinned root, version floors, a lower bound on time.

The verifier's input and output (pure values). Enrolment creates it (the root keys pinned from
the fleet); after that it changes only when a verified bundle carries a newer root (rotation) or
a bundle is committed (its version becomes the floor for its kind). The gateway persists it with
``edge_agent.control.truststore``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from edge_agent.protocol.errors import ConfigError


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

"""The gateway's trusted state on disk: ``trust.json`` in the state dir, replaced atomically, 0600.

Files are replaced atomically (write a temp file in the same directory, fsync, rename, fsync the
directory) and created 0600: a crash leaves either the old or the new file, never a torn one, and
no other local user can read or change it.
"""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.protocol.errors import ConfigError
from edge_agent.protocol.fileio import atomic_write
from edge_agent.protocol.trust import TrustedState

TRUST_FILE = "trust.json"


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
                          "(edge-agent enroll --fleet URL --token-file F)") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read trusted state: {exc}") from exc
    return TrustedState.from_json(doc, str(path))

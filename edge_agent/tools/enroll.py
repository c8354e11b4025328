"""``edge-agent enroll --fleet URL --token T``: exchange a single-use token for an identity.

The fleet's enrolment endpoint answers with the gateway id, site, tags, broker credentials and
the current root metadata. The root is checked to be self-consistent (a threshold of its own
root keys signed it) and, if ``--root-sha256`` is given (the fingerprint the operator printed
with ``edge-fleet root show``), to be exactly that root: over plain HTTP this out-of-band
fingerprint is what makes trust-on-first-use safe. Everything is written 0600, atomically:
``identity.json`` (id, site, tags, broker URL and credentials), ``mqtt.password`` (for a site
config's ``password_file``) and ``trust.json`` (the pinned root; version floors start at 0).
A gateway that is already enrolled is not re-enrolled without ``--force``: re-enrolling resets
its version floors, which must be a deliberate act.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from edge_agent.control.truststore import TRUST_FILE, save_trust
from edge_agent.protocol.bundle import root_fingerprint
from edge_agent.protocol.errors import ConfigError, EdgeError, VerificationError
from edge_agent.protocol.fileio import atomic_write
from edge_agent.protocol.trust import TrustedState
from edge_agent.protocol.verify import count_signatures, role_keys

IDENTITY_FILE = "identity.json"
PASSWORD_FILE = "mqtt.password"


def check_root(root: Any) -> dict[str, Any]:
    """A root envelope that a threshold of its own root keys signed; VerificationError if not."""
    if not isinstance(root, dict) or not isinstance(root.get("signed"), dict) \
            or root["signed"].get("_type") != "root":
        raise VerificationError("enrolment answer has no root metadata")
    keys, threshold = role_keys(root["signed"], "root")
    role_keys(root["signed"], "release")
    got = count_signatures(root, keys)
    if got < threshold:
        raise VerificationError(f"root v{root['signed'].get('version')} has {got} of "
                                f"{threshold} signatures from its own root keys")
    return root


def request_enrolment(fleet_url: str, token: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """POST the token to the fleet; the answer; EdgeError with the fleet's reason if refused."""
    url = fleet_url.rstrip("/") + "/v1/enroll"
    if not url.startswith(("http://", "https://")):
        raise EdgeError(f"--fleet {fleet_url!r}: expected an http:// or https:// URL")
    req = urllib.request.Request(url, data=json.dumps({"token": token}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            answer = json.loads(resp.read(1 << 20))
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read(4096)).get("error", "")
        except ValueError:
            reason = ""
        raise EdgeError(f"{url}: enrolment refused ({exc.code}): {reason}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise EdgeError(f"{url}: cannot reach the fleet: {exc}") from exc
    if not isinstance(answer, dict):
        raise EdgeError(f"{url}: answer is not a JSON object")
    return answer


def write_enrolment(state_dir: Path, answer: dict[str, Any], *,
                    root_sha256: str | None = None, force: bool = False) -> TrustedState:
    """Check the answer and write identity, password and trust files (0600)."""
    if (state_dir / TRUST_FILE).exists() and not force:
        raise ConfigError(f"{state_dir}: this gateway is already enrolled (use --force to "
                          "re-enrol; that resets its version floors)")
    root = check_root(answer.get("root"))
    if root_sha256 is not None and root_fingerprint(root) != root_sha256.lower():
        raise VerificationError(f"the fleet's root has fingerprint {root_fingerprint(root)}, "
                                f"expected {root_sha256}")
    try:
        mqtt = answer["mqtt"]
        trust = TrustedState(gateway_id=str(answer["gateway_id"]), site=str(answer["site"]),
                             tags=tuple(str(t) for t in answer["tags"]), root=root)
        identity: dict[str, Any] = {"gateway_id": trust.gateway_id, "site": trust.site,
                    "tags": list(trust.tags),
                    "mqtt": {k: str(mqtt[k]) for k in ("url", "username", "password",
                                                       "topic_prefix")}}
    except (KeyError, TypeError) as exc:
        raise EdgeError(f"enrolment answer is missing {exc}") from exc
    atomic_write(state_dir / PASSWORD_FILE, identity["mqtt"]["password"].encode() + b"\n")
    atomic_write(state_dir / IDENTITY_FILE, json.dumps(identity, indent=1).encode())
    save_trust(state_dir, trust)
    return trust


def enroll_main(argv: list[str]) -> int:
    """``edge-agent enroll``: 0 on success, 2 with a reason on stderr otherwise."""
    ap = argparse.ArgumentParser(prog="edge-agent enroll",
                                 description="Enrol this gateway with the fleet service.")
    ap.add_argument("--fleet", required=True, help="fleet enrolment URL (http://host:port)")
    ap.add_argument("--token", required=True, help="the single-use enrolment token")
    ap.add_argument("--state-dir", type=Path, default=Path("/var/lib/edge-agent"))
    ap.add_argument("--root-sha256", help="expected root fingerprint (edge-fleet root show)")
    ap.add_argument("--force", action="store_true", help="re-enrol an enrolled gateway")
    args = ap.parse_args(argv)
    try:
        answer = request_enrolment(args.fleet, args.token)
        trust = write_enrolment(args.state_dir, answer, root_sha256=args.root_sha256,
                                force=args.force)
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"enrolled as {trust.gateway_id} (site {trust.site}, tags {list(trust.tags)}); "
          f"root v{trust.root_version} pinned; files in {args.state_dir}")
    return 0

"""The gateway's bundle verifier: bytes and trusted state in, a verdict out. Pure, no I/O.

Checks, in the order they run (cheapest and least trusting first; fleet/BUNDLES.md explains each):

1. size: the whole message against envelope cap + payload cap, before parsing anything;
2. framing: magic, envelope length under its cap; the envelope JSON read strictly (size,
   depth, items, string lengths, UTF-8, no lone surrogates, integers only and in range, no
   repeated keys), then every field's name, type and range against the documents' schemas;
3. root chain: each newer root must be version+1, signed by a threshold of the previous root's
   root keys AND of its own (TUF specification 5.3.4), and the newest root must not be expired;
4. signatures: a threshold of the release role's distinct keys over the canonical bytes of
   "signed" (a key counts once however often it signed; an unknown or revoked key counts zero);
5. kind (type and spec: with the schema); 6. targets: this gateway's id, site or one of its tags;
7. expiry with a clock-skew allowance, against max(gateway clock, latest issued time verified);
8. version: above the floor (equal with the committed hash is "current": nothing to do);
9. payload: declared length under the cap before hashing, actual length, SHA-256.

Any failure returns the trusted state unchanged with the reason. The verifier is total: any
byte string ends in a Verdict, never in an exception, because no field is used before step 2
proved its type and range (``edge_agent.protocol.bundle``); a backstop turns anything that
would still escape into a rejection marked ``FAULT``, which tests and fuzzers count as a bug.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass, replace
from typing import Any

from edge_agent.protocol.bundle import (
    KINDS,
    MAX_ROOTS,
    OPTIONAL_ROLES,
    ROLES,
    check_root_envelope,
    check_root_signed,
    check_signatures,
    read_envelope,
    split_bundle,
)
from edge_agent.protocol.canonical import canonical_bytes
from edge_agent.protocol.errors import VerificationError
from edge_agent.protocol.jsonsafe import show
from edge_agent.protocol.keys import KEYTYPE, PublicKey, key_id
from edge_agent.protocol.trust import TrustedState

CLOCK_SKEW_S = 300          # a gateway clock may be this far ahead before a bundle looks expired
MAX_ENVELOPE = 256 * 1024   # signed envelope plus root chain
MAX_PAYLOAD = 1024 * 1024   # a site config is kilobytes; a megabyte is generous

# The reason's prefix when the backstop turned an unexpected exception into a rejection; tests
# and fuzzers assert it never appears (every input must be refused by a check).
FAULT = "verifier fault, bundle refused"

ACCEPTED = "accepted"
CURRENT = "current"
REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Bundle:
    """A verified bundle: its signed fields and its payload."""

    kind: str
    version: int
    issued: int
    expires: int
    sha256: str
    payload: bytes
    signed: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The verifier's answer; ``trust`` is the state to keep (unchanged unless accepted)."""

    code: str  # accepted | current | rejected
    reason: str
    trust: TrustedState
    bundle: Bundle | None = None

    @property
    def accepted(self) -> bool:
        """True if the bundle is new, authentic, for us and intact."""
        return self.code == ACCEPTED


def role_keys(root: Any, role: str) -> tuple[dict[str, PublicKey], int]:
    """The keys (by id) and threshold of a role in a root's signed part, checked for shape."""
    doc = check_root_signed(root)
    if role not in ROLES + OPTIONAL_ROLES:
        raise VerificationError(f"root: no role {show(role)}; roles are "
                                f"{ROLES + OPTIONAL_ROLES}")
    if role not in doc["roles"]:
        raise VerificationError(f"root v{doc['version']} delegates no {role} keys")
    spec = doc["roles"][role]
    threshold: int = spec["threshold"]
    out: dict[str, PublicKey] = {}
    for kid in spec["keyids"]:
        entry = doc["keys"].get(kid)
        if entry is None:
            raise VerificationError(f"root: role {role} names key {kid[:12]}... that is not an "
                                    f"{KEYTYPE} key in 'keys'")
        raw = bytes.fromhex(entry["public"])  # 64 hex digits: the schema checked
        # The id is recomputed from the key, so one key cannot hide under two ids.
        if key_id(raw) != kid:
            raise VerificationError(f"root: key id {kid[:12]}... does not match its public key")
        out[kid] = PublicKey(raw)
    if not 1 <= threshold <= len(out):
        raise VerificationError(f"root: role {role} threshold {threshold} with {len(out)} keys")
    return out, threshold


def count_signatures(envelope: Any, keys: dict[str, PublicKey]) -> int:
    """How many distinct keys of ``keys`` validly signed the envelope's canonical bytes."""
    signed = envelope.get("signed") if isinstance(envelope, dict) else None
    if not isinstance(signed, dict) or set(envelope) - {"signed", "signatures", "roots"}:
        raise VerificationError("envelope needs 'signed' (object) and 'signatures' (list), "
                                "and only 'roots' besides")
    sigs = check_signatures(envelope.get("signatures"), "envelope")
    message = canonical_bytes(signed)
    good: set[str] = set()
    for sig in sigs:
        kid, value = sig["keyid"], sig["sig"]
        if kid in good or kid not in keys:
            continue  # a key counts once; keys outside the role count zero
        raw_sig = bytes.fromhex(value)  # 128 hex digits: the schema checked
        if raw_sig.hex() != value:
            continue  # one spelling only (lowercase hex), so a signature is never malleable
        if keys[kid].verify(raw_sig, message):
            good.add(kid)
    return len(good)


def update_root(trusted_root: Any, chain: Any) -> dict[str, Any]:
    """Walk a root chain from the trusted root; the newest root reached (pure)."""
    current: dict[str, Any] = check_root_envelope(trusted_root, "trusted root")
    if chain is None:
        return current
    for i, env in enumerate(_checked_list(chain, "roots", MAX_ROOTS)):
        check_root_envelope(env, f"roots[{i}]")
        new = env["signed"]
        cur_version: int = current["signed"]["version"]
        version: int = new["version"]
        if version <= cur_version:
            continue  # already trusted (the fleet sends the whole chain)
        if version != cur_version + 1:
            raise VerificationError(f"root chain skips from v{cur_version} to v{version}")
        # TUF 5.3.4: a new root is trusted only if signed by a threshold of the OLD root
        # role and a threshold of its OWN root role.
        old_keys, old_threshold = role_keys(current["signed"], "root")
        new_keys, new_threshold = role_keys(new, "root")
        role_keys(new, "release")
        got_old = count_signatures(env, old_keys)
        if got_old < old_threshold:
            raise VerificationError(f"root v{version} has {got_old} of {old_threshold} "
                                    f"signatures from root v{cur_version}'s keys")
        got_new = count_signatures(env, new_keys)
        if got_new < new_threshold:
            raise VerificationError(f"root v{version} has {got_new} of {new_threshold} "
                                    "signatures from its own root keys")
        current = {"signed": env["signed"], "signatures": env["signatures"]}
    return current


def check_self_signed_root(root: Any, where: str = "root") -> dict[str, Any]:
    """A root envelope of the documented shape that a threshold of its own root keys signed.

    What enrolment pins (``edge_agent.tools.enroll``); VerificationError, only, otherwise.
    """
    env = check_root_envelope(root, where)
    keys, threshold = role_keys(env["signed"], "root")
    role_keys(env["signed"], "release")
    got = count_signatures(env, keys)
    if got < threshold:
        raise VerificationError(f"root v{env['signed']['version']} has {got} of {threshold} "
                                "signatures from its own root keys")
    return env


def _checked_list(value: Any, where: str, max_items: int) -> list[Any]:
    if not isinstance(value, list):
        raise VerificationError(f"{where} must be a list of root envelopes")
    if len(value) > max_items:
        raise VerificationError(f"{where} has {len(value)} entries, the limit is {max_items}")
    return value


def _is_target(targets: dict[str, list[str]], trust: TrustedState) -> bool:
    return (trust.gateway_id in targets.get("gateways", ())
            or trust.site in targets.get("sites", ())
            or bool(set(trust.tags) & set(targets.get("tags", ()))))


def claimed_version(blob: bytes | bytearray | memoryview) -> int | None:
    """The version a bundle claims, unverified, for reports only (None if unreadable)."""
    try:
        env, _ = read_envelope(blob, MAX_ENVELOPE)
        signed = env.get("signed") if isinstance(env, dict) else None
        version = signed.get("version") if isinstance(signed, dict) else None
    except Exception:
        # VerificationError, or (backstop) a bug: this runs while a rejection is reported,
        # so it must not raise either.
        return None
    return version if type(version) is int else None


def verify_bundle(blob: bytes | bytearray | memoryview, trust: TrustedState, kind: str,
                  now: float, *, skew_s: int = CLOCK_SKEW_S, max_envelope: int = MAX_ENVELOPE,
                  max_payload: int = MAX_PAYLOAD) -> Verdict:
    """Verify wire bytes of a bundle of ``kind`` for this gateway at wall time ``now``."""
    try:
        return _verify(blob, trust, kind, now, skew_s, max_envelope, max_payload)
    except VerificationError as exc:
        return Verdict(REJECTED, str(exc), trust)
    except Exception as exc:
        # Totality backstop. Every input is meant to end in a VerificationError above (strict
        # reading, schemas); reaching here is a verifier bug, and a gateway that let it
        # propagate would crash-loop on a retained message. Refuse, and say it is a bug.
        return Verdict(REJECTED, f"{FAULT}: {type(exc).__name__}: {show(str(exc))}", trust)


def _verify(blob: bytes | bytearray | memoryview, trust: TrustedState, kind: str, now: float,
            skew_s: int, max_envelope: int, max_payload: int) -> Verdict:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise VerificationError(f"a bundle is bytes, got {type(blob).__name__}")
    if not isinstance(blob, bytes):
        blob = bytes(blob)  # a memoryview of any layout: its bytes, so len() counts bytes
    # 1. A size cap before anything is parsed or hashed (TUF's "endless data" attack).
    if len(blob) > max_envelope + max_payload + 8:
        raise VerificationError(f"message of {len(blob)} bytes exceeds the cap of "
                                f"{max_envelope + max_payload + 8} bytes")
    if kind not in KINDS:
        raise VerificationError(f"bundle kind {show(kind)} asked for: expected one of {KINDS}")
    if not isinstance(now, int | float) or not math.isfinite(now):
        raise VerificationError(f"gateway clock reads {show(now)}, not a time")
    # 2. Framing, strict JSON within limits, and every field's name, type and range.
    env, payload_view = split_bundle(blob, max_envelope)
    # 3. Root rotation first: the bundle must verify against the newest trusted root.
    root = update_root(trust.root, env.get("roots"))
    root_signed = root["signed"]
    # A wrong (slow) clock is bounded below by the latest issued time already verified.
    effective_now = max(int(now), trust.time_floor)
    root_expires: int = root_signed["expires"]
    if effective_now > root_expires + skew_s:
        raise VerificationError(f"root v{root_signed['version']} expired at {root_expires} "
                                f"(gateway time {effective_now}): the fleet must re-sign root")
    # 4. Signatures before any other field is believed.
    release_keys, threshold = role_keys(root_signed, "release")
    got = count_signatures(env, release_keys)
    if got < threshold:
        raise VerificationError(f"bundle has {got} valid signatures from release keys of root "
                                f"v{root_signed['version']}, needs {threshold}")
    # 5. Kind: a software bundle is not a config (type and spec: checked with the schema).
    signed: dict[str, Any] = env["signed"]
    if signed["kind"] != kind:
        raise VerificationError(f"bundle kind is {signed['kind']!r}, expected {kind!r}")
    version: int = signed["version"]
    issued: int = signed["issued"]
    expires: int = signed["expires"]
    # 6. Replay of another gateway's bundle.
    if not _is_target(signed["targets"], trust):
        raise VerificationError(f"bundle {kind} v{version} does not target gateway "
                                f"{trust.gateway_id!r} (site {trust.site!r}, tags "
                                f"{list(trust.tags)})")
    # 7. Expiry: freeze and stale-retained attacks end here at the latest.
    if effective_now > expires + skew_s:
        raise VerificationError(f"bundle {kind} v{version} expired at {expires}; gateway time "
                                f"is {effective_now} (allowance {skew_s} s)")
    # 8. Rollback: never below the committed version; equal is a re-delivery.
    floor = trust.floor(kind)
    sha: str = signed["payload"]["sha256"]
    if version < floor:
        raise VerificationError(f"bundle {kind} v{version} is older than the committed "
                                f"v{floor} (rollback)")
    if version == floor:
        if hmac.compare_digest(sha.encode(), trust.committed_sha256.get(kind, "").encode()):
            return Verdict(CURRENT, f"{kind} v{version} is already committed", trust)
        raise VerificationError(f"bundle {kind} v{version} has the committed version but a "
                                "different payload")
    # 9. Payload: declared size against the cap BEFORE hashing, then length, then hash.
    length: int = signed["payload"]["length"]
    if length > max_payload:
        raise VerificationError(f"payload declares {length} bytes, cap is {max_payload}")
    if len(payload_view) != length:
        raise VerificationError(f"payload has {len(payload_view)} bytes, the bundle declares "
                                f"{length}")
    payload = bytes(payload_view)
    if not hmac.compare_digest(hashlib.sha256(payload).hexdigest().encode(), sha.encode()):
        raise VerificationError(f"payload SHA-256 does not match bundle {kind} v{version}")
    new_trust = replace(trust, root=root, time_floor=max(trust.time_floor, issued,
                                                         root_signed["issued"]))
    return Verdict(ACCEPTED, f"{kind} v{version} verified ({got} of {threshold} signatures)",
                   new_trust, Bundle(kind, version, issued, expires, sha, payload, signed))

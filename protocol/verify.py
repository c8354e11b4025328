"""The gateway's bundle verifier: bytes and trusted state in, a verdict out. Pure, no I/O.

Checks, in the order they run (cheapest and least trusting first; fleet/BUNDLES.md explains each):

1. size: the whole message against envelope cap + payload cap, before parsing anything;
2. framing: magic, envelope length under its cap, envelope JSON without repeated keys;
3. root chain: each newer root must be version+1, signed by a threshold of the previous root's
   root keys AND of its own (TUF specification 5.3.4), and the newest root must not be expired;
4. signatures: a threshold of the release role's distinct keys over the canonical bytes of
   "signed" (a key counts once however often it signed; an unknown or revoked key counts zero);
5. type, spec and kind; 6. targets: this gateway's id, site or one of its tags;
7. expiry with a clock-skew allowance, against max(gateway clock, latest issued time verified);
8. version: above the floor (equal with the committed hash is "current": nothing to do);
9. payload: declared length under the cap before hashing, actual length, SHA-256.

Any failure returns the trusted state unchanged with the reason.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, replace
from typing import Any

from edge_agent.protocol.bundle import SPEC, split_bundle
from edge_agent.protocol.canonical import canonical_bytes
from edge_agent.protocol.errors import VerificationError
from edge_agent.protocol.keys import KEYTYPE, PublicKey, key_id
from edge_agent.protocol.trust import TrustedState

CLOCK_SKEW_S = 300          # a gateway clock may be this far ahead before a bundle looks expired
MAX_ENVELOPE = 256 * 1024   # signed envelope plus root chain
MAX_PAYLOAD = 1024 * 1024   # a site config is kilobytes; a megabyte is generous

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


def _int(doc: dict[str, Any], key: str, what: str) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise VerificationError(f"{what}: {key} is {value!r}, expected an integer")
    return value


def role_keys(root: dict[str, Any], role: str) -> tuple[dict[str, PublicKey], int]:
    """The keys (by id) and threshold of a role in a root's signed part, checked for shape."""
    roles = root.get("roles")
    keys = root.get("keys")
    if not isinstance(roles, dict) or not isinstance(keys, dict):
        raise VerificationError("root: roles and keys must be objects")
    spec = roles.get(role)
    if not isinstance(spec, dict) or not isinstance(spec.get("keyids"), list):
        raise VerificationError(f"root: role {role!r} missing or malformed")
    threshold = _int(spec, "threshold", f"root role {role}")
    out: dict[str, PublicKey] = {}
    for kid in spec["keyids"]:
        entry = keys.get(kid) if isinstance(kid, str) else None
        if not isinstance(entry, dict) or entry.get("keytype") != KEYTYPE:
            raise VerificationError(f"root: role {role} names key {kid!r} that is not an "
                                    f"{KEYTYPE} key in 'keys'")
        try:
            raw = bytes.fromhex(str(entry.get("public")))
        except ValueError as exc:
            raise VerificationError(f"root: key {kid!r} is not hex") from exc
        # The id is recomputed from the key, so one key cannot hide under two ids.
        if len(raw) != 32 or key_id(raw) != kid:
            raise VerificationError(f"root: key id {kid!r} does not match its public key")
        out[kid] = PublicKey(raw)
    if not 1 <= threshold <= len(out):
        raise VerificationError(f"root: role {role} threshold {threshold} with {len(out)} keys")
    return out, threshold


def count_signatures(envelope: dict[str, Any], keys: dict[str, PublicKey]) -> int:
    """How many distinct keys of ``keys`` validly signed the envelope's canonical bytes."""
    signed = envelope.get("signed")
    sigs = envelope.get("signatures")
    if not isinstance(signed, dict) or not isinstance(sigs, list):
        raise VerificationError("envelope needs 'signed' (object) and 'signatures' (list)")
    message = canonical_bytes(signed)
    good: set[str] = set()
    for sig in sigs:
        if not isinstance(sig, dict):
            continue
        kid, value = sig.get("keyid"), sig.get("sig")
        if kid in good or kid not in keys or not isinstance(value, str):
            continue  # a key counts once; keys outside the role count zero
        try:
            raw_sig = bytes.fromhex(value)
        except ValueError:
            continue
        if raw_sig.hex() != value:
            continue  # one spelling only (lowercase hex), so a signature is never malleable
        if keys[kid].verify(raw_sig, message):
            good.add(kid)
    return len(good)


def _check_type(signed: Any, type_: str) -> dict[str, Any]:
    if not isinstance(signed, dict) or signed.get("_type") != type_:
        got = signed.get("_type") if isinstance(signed, dict) else type(signed).__name__
        raise VerificationError(f"metadata type is {got!r}, expected {type_!r}")
    if signed.get("spec") != SPEC:
        raise VerificationError(f"{type_}: spec {signed.get('spec')!r}, expected {SPEC}")
    return signed


def update_root(trusted_root: dict[str, Any], chain: Any) -> dict[str, Any]:
    """Walk a root chain from the trusted root; the newest root reached (pure)."""
    if chain is None:
        return trusted_root
    if not isinstance(chain, list):
        raise VerificationError("roots must be a list of root envelopes")
    current = trusted_root
    for env in chain:
        if not isinstance(env, dict):
            raise VerificationError("roots: an entry is not an envelope")
        new = _check_type(env.get("signed"), "root")
        cur_version = _int(current["signed"], "version", "trusted root")
        version = _int(new, "version", "root")
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


def _is_target(targets: Any, trust: TrustedState) -> bool:
    if not isinstance(targets, dict):
        raise VerificationError("bundle targets must be an object")
    lists = {k: targets.get(k, []) for k in ("gateways", "sites", "tags")}
    if any(not isinstance(v, list) for v in lists.values()):
        raise VerificationError("bundle targets must be lists")
    return (trust.gateway_id in lists["gateways"] or trust.site in lists["sites"]
            or bool(set(trust.tags) & set(lists["tags"])))


def claimed_version(blob: bytes) -> int | None:
    """The version a bundle claims, unverified, for reports only (None if unreadable)."""
    try:
        env, _ = split_bundle(blob, MAX_ENVELOPE)
        version = env["signed"]["version"]
    except (VerificationError, KeyError, TypeError, RecursionError):
        return None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def verify_bundle(blob: bytes, trust: TrustedState, kind: str, now: float, *,
                  skew_s: int = CLOCK_SKEW_S, max_envelope: int = MAX_ENVELOPE,
                  max_payload: int = MAX_PAYLOAD) -> Verdict:
    """Verify wire bytes of a bundle of ``kind`` for this gateway at wall time ``now``."""
    try:
        return _verify(blob, trust, kind, now, skew_s, max_envelope, max_payload)
    except VerificationError as exc:
        return Verdict(REJECTED, str(exc), trust)
    except RecursionError:
        return Verdict(REJECTED, "envelope JSON nested too deeply", trust)


def _verify(blob: bytes, trust: TrustedState, kind: str, now: float, skew_s: int,
            max_envelope: int, max_payload: int) -> Verdict:
    # 1. A size cap before anything is parsed or hashed (TUF's "endless data" attack).
    if len(blob) > max_envelope + max_payload + 8:
        raise VerificationError(f"message of {len(blob)} bytes exceeds the cap of "
                                f"{max_envelope + max_payload + 8} bytes")
    env, payload_view = split_bundle(blob, max_envelope)
    # 3. Root rotation first: the bundle must verify against the newest trusted root.
    root = update_root(trust.root, env.get("roots"))
    root_signed = root["signed"]
    # A wrong (slow) clock is bounded below by the latest issued time already verified.
    effective_now = max(int(now), trust.time_floor)
    root_expires = _int(root_signed, "expires", "root")
    if effective_now > root_expires + skew_s:
        raise VerificationError(f"root v{root_signed['version']} expired at {root_expires} "
                                f"(gateway time {effective_now}): the fleet must re-sign root")
    # 4. Signatures before any other field is believed.
    release_keys, threshold = role_keys(root_signed, "release")
    got = count_signatures(env, release_keys)
    if got < threshold:
        raise VerificationError(f"bundle has {got} valid signatures from release keys of root "
                                f"v{root_signed['version']}, needs {threshold}")
    # 5. Type and kind: a root or a software bundle is not a config.
    signed = _check_type(env["signed"], "bundle")
    if signed.get("kind") != kind:
        raise VerificationError(f"bundle kind is {signed.get('kind')!r}, expected {kind!r}")
    version = _int(signed, "version", "bundle")
    issued = _int(signed, "issued", "bundle")
    expires = _int(signed, "expires", "bundle")
    # 6. Replay of another gateway's bundle.
    if not _is_target(signed.get("targets"), trust):
        raise VerificationError(f"bundle {kind} v{version} does not target gateway "
                                f"{trust.gateway_id!r} (site {trust.site!r}, tags "
                                f"{list(trust.tags)})")
    # 7. Expiry: freeze and stale-retained attacks end here at the latest.
    if effective_now > expires + skew_s:
        raise VerificationError(f"bundle {kind} v{version} expired at {expires}; gateway time "
                                f"is {effective_now} (allowance {skew_s} s)")
    # 8. Rollback: never below the committed version; equal is a re-delivery.
    floor = trust.floor(kind)
    pay = signed.get("payload")
    if not isinstance(pay, dict) or not isinstance(pay.get("sha256"), str):
        raise VerificationError("bundle payload must be {length, sha256}")
    sha = pay["sha256"]
    if version < floor:
        raise VerificationError(f"bundle {kind} v{version} is older than the committed "
                                f"v{floor} (rollback)")
    if version == floor:
        if hmac.compare_digest(sha, trust.committed_sha256.get(kind, "")):
            return Verdict(CURRENT, f"{kind} v{version} is already committed", trust)
        raise VerificationError(f"bundle {kind} v{version} has the committed version but a "
                                "different payload")
    # 9. Payload: declared size against the cap BEFORE hashing, then length, then hash.
    length = _int(pay, "length", "bundle payload")
    if length > max_payload:
        raise VerificationError(f"payload declares {length} bytes, cap is {max_payload}")
    if len(payload_view) != length:
        raise VerificationError(f"payload has {len(payload_view)} bytes, the bundle declares "
                                f"{length}")
    payload = bytes(payload_view)
    if not hmac.compare_digest(hashlib.sha256(payload).hexdigest(), sha):
        raise VerificationError(f"payload SHA-256 does not match bundle {kind} v{version}")
    new_trust = replace(trust, root=root, time_floor=max(trust.time_floor, issued,
                                                         _int(root_signed, "issued", "root")))
    return Verdict(ACCEPTED, f"{kind} v{version} verified ({got} of {threshold} signatures)",
                   new_trust, Bundle(kind, version, issued, expires, sha, payload, signed))

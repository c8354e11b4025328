"""Signed metadata: root and bundle documents, signing, and the bundle wire format.

Shapes follow TUF (fleet/BUNDLES.md has the full description)::

    envelope = {"signed": {...}, "signatures": [{"keyid": HEX, "sig": HEX}, ...]}
    root.signed   = {"_type": "root", "spec": 1, "version": N, "issued": T, "expires": T,
                     "keys": {KEYID: {"keytype": "ed25519", "public": HEX}},
                     "roles": {"root": {"keyids": [...], "threshold": K},
                               "release": {"keyids": [...], "threshold": K}}}
    bundle.signed = {"_type": "bundle", "spec": 1, "kind": "config", "version": N,
                     "targets": {"gateways": [...], "sites": [...], "tags": [...]},
                     "issued": T, "expires": T, "payload": {"length": L, "sha256": HEX}}

On the wire a bundle is ``b"EFB1"``, a 4-byte big-endian envelope length, the envelope JSON
(with an optional "roots" list: the root chain, each root self-signed) and the payload bytes.
The length prefix lets a gateway refuse an oversized envelope before parsing it, and the
payload's declared length before hashing it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from edge_agent.protocol.canonical import canonical_bytes
from edge_agent.protocol.errors import VerificationError
from edge_agent.protocol.keys import PrivateKey, PublicKey

MAGIC = b"EFB1"
HEADER = struct.Struct(">4sI")
SPEC = 1
KINDS = ("config", "software")
ROLES = ("root", "release")


def sign_envelope(signed: dict[str, Any], keys: Iterable[PrivateKey]) -> dict[str, Any]:
    """An envelope of ``signed`` with one signature per key over its canonical bytes."""
    message = canonical_bytes(signed)
    sigs = [{"keyid": k.public.keyid, "sig": k.sign(message).hex()} for k in keys]
    return {"signed": signed, "signatures": sigs}


def root_signed(version: int, root_keys: Sequence[PublicKey], root_threshold: int,
                release_keys: Sequence[PublicKey], release_threshold: int, *,
                issued: int, expires: int) -> dict[str, Any]:
    """The signed part of a root document; ValueError if a threshold cannot be met."""
    for role, keys, threshold in (("root", root_keys, root_threshold),
                                  ("release", release_keys, release_threshold)):
        ids = {k.keyid for k in keys}
        if len(ids) != len(keys):
            raise ValueError(f"{role} role lists the same key twice")
        if not 1 <= threshold <= len(ids):
            raise ValueError(f"{role} threshold {threshold} must be 1..{len(ids)} "
                             f"(the number of {role} keys)")
    listed = {k.keyid: k.to_json() for k in [*root_keys, *release_keys]}
    return {
        "_type": "root", "spec": SPEC, "version": version, "issued": issued, "expires": expires,
        "keys": listed,
        "roles": {
            "root": {"keyids": sorted(k.keyid for k in root_keys), "threshold": root_threshold},
            "release": {"keyids": sorted(k.keyid for k in release_keys),
                        "threshold": release_threshold},
        },
    }


def bundle_signed(kind: str, version: int, payload: bytes, *, issued: int, expires: int,
                  gateways: Iterable[str] = (), sites: Iterable[str] = (),
                  tags: Iterable[str] = ()) -> dict[str, Any]:
    """The signed part of a bundle carrying ``payload``."""
    if kind not in KINDS:
        raise ValueError(f"bundle kind {kind!r}: expected one of {KINDS}")
    targets = {"gateways": sorted(set(gateways)), "sites": sorted(set(sites)),
               "tags": sorted(set(tags))}
    if not any(targets.values()):
        raise ValueError("a bundle needs at least one target (gateway, site or tag)")
    if version < 1 or expires <= issued:
        raise ValueError(f"bundle needs version >= 1 and expires > issued "
                         f"(got v{version}, {issued}..{expires})")
    return {"_type": "bundle", "spec": SPEC, "kind": kind, "version": version,
            "targets": targets, "issued": issued, "expires": expires,
            "payload": {"length": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}}


def encode_bundle(envelope: dict[str, Any], payload: bytes,
                  roots: Sequence[dict[str, Any]] = ()) -> bytes:
    """The wire bytes of a signed bundle, optionally carrying the root chain."""
    doc = dict(envelope)
    if roots:
        doc["roots"] = list(roots)
    env = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return HEADER.pack(MAGIC, len(env)) + env + payload


def make_bundle(kind: str, version: int, payload: bytes, keys: Iterable[PrivateKey], *,
                issued: int, expires: int, gateways: Iterable[str] = (),
                sites: Iterable[str] = (), tags: Iterable[str] = (),
                roots: Sequence[dict[str, Any]] = ()) -> bytes:
    """Build, sign and encode a bundle in one call."""
    signed = bundle_signed(kind, version, payload, issued=issued, expires=expires,
                           gateways=gateways, sites=sites, tags=tags)
    return encode_bundle(sign_envelope(signed, keys), payload, roots)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise VerificationError(f"envelope JSON repeats a key: {sorted(keys)}")
    return dict(pairs)


def split_bundle(blob: bytes, max_envelope: int) -> tuple[dict[str, Any], memoryview]:
    """Split wire bytes into the parsed envelope and a view of the payload (not yet checked)."""
    if len(blob) < HEADER.size:
        raise VerificationError(f"bundle of {len(blob)} bytes is shorter than its header")
    magic, env_len = HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise VerificationError(f"not a bundle: magic {magic!r}, expected {MAGIC!r}")
    if env_len > max_envelope:
        raise VerificationError(f"envelope of {env_len} bytes exceeds the cap of "
                                f"{max_envelope} bytes")
    if len(blob) < HEADER.size + env_len:
        raise VerificationError(f"bundle truncated: envelope says {env_len} bytes, "
                                f"{len(blob) - HEADER.size} present")
    view = memoryview(blob)
    try:
        env = json.loads(bytes(view[HEADER.size:HEADER.size + env_len]),
                         object_pairs_hook=_no_duplicate_keys)
    except ValueError as exc:
        raise VerificationError(f"envelope is not valid JSON: {exc}") from exc
    if not isinstance(env, dict):
        raise VerificationError("envelope is not a JSON object")
    return env, view[HEADER.size + env_len:]


def root_fingerprint(root: dict[str, Any]) -> str:
    """SHA-256 of a root envelope's canonical bytes: what an operator compares out of band."""
    return hashlib.sha256(canonical_bytes(root)).hexdigest()

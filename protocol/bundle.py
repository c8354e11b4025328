"""Signed metadata: root and bundle documents, signing, and the bundle wire format.

Shapes follow TUF (fleet/BUNDLES.md has the full description)::

    envelope = {"signed": {...}, "signatures": [{"keyid": HEX, "sig": HEX}, ...]}
    root.signed   = {"_type": "root", "spec": 1, "version": N, "issued": T, "expires": T,
                     "keys": {KEYID: {"keytype": "ed25519", "public": HEX}},
                     "roles": {"root": {"keyids": [...], "threshold": K},
                               "release": {"keyids": [...], "threshold": K},
                               "operator": {"keyids": [...], "threshold": K}}}  (optional)
    bundle.signed = {"_type": "bundle", "spec": 1, "kind": "config", "version": N,
                     "targets": {"gateways": [...], "sites": [...], "tags": [...]},
                     "issued": T, "expires": T, "payload": {"length": L, "sha256": HEX}}

On the wire a bundle is ``b"EFB1"``, a 4-byte big-endian envelope length, the envelope JSON
(with an optional "roots" list: the root chain, each root self-signed) and the payload bytes.
The length prefix lets a gateway refuse an oversized envelope before parsing it, and the
payload's declared length before hashing it.

Reading is strict and total (fleet/BUNDLES.md, "Limits"): the envelope JSON goes through
``edge_agent.protocol.jsonsafe.loads_strict`` (size, depth, items, string lengths, UTF-8, no
lone surrogates, integers only, in 0..2**53-1, no repeated keys), then every document is checked
against its schema here: each field present, no unknown field, each of its exact type and range.
Whatever gets past ``split_bundle`` therefore has the shapes above, and each check raises
VerificationError only, so the verifier can turn any input into a rejection.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from edge_agent.protocol.canonical import MAX_SAFE_INT, canonical_bytes, check_canonical
from edge_agent.protocol.errors import VerificationError
from edge_agent.protocol.jsonsafe import UnsafeJsonError, loads_strict, show
from edge_agent.protocol.keys import KEYTYPE, PrivateKey, PublicKey

MAGIC = b"EFB1"
HEADER = struct.Struct(">4sI")
SPEC = 1
KINDS = ("config", "software")
ROLES = ("root", "release")
# Roles a root may delegate besides: "operator" signs commands (protocol/command.py). Optional,
# so every root signed before it existed stays valid; a gateway refuses commands until a
# root that delegates it reaches it.
OPTIONAL_ROLES = ("operator",)

# Limits of the envelope (fleet/BUNDLES.md, "Limits"). Each is far above what a genuine
# envelope holds and low enough that no check below can be made to do much work.
MAX_INT = MAX_SAFE_INT  # versions, times, lengths: exact in every JSON implementation
MAX_DEPTH = 7           # roots[i].signed.roles.root.keyids is the deepest valid nesting
MAX_STR = 128           # the longest valid string is a signature: 128 hex digits
MAX_ITEMS = 65_536      # any list or object; target lists hit the envelope cap first
MAX_KEYS = 32           # keys in one role (a root lists at most 3 x MAX_KEYS keys)
MAX_SIGNATURES = 64     # a rotated root carries its old and its new root keys' signatures
MAX_ROOTS = 256         # root envelopes in a bundle's chain (one per rotation)
MAX_NAME = 64           # a gateway id, site or tag (edge_agent.protocol.ids)
_HEX64 = re.compile(r"[0-9a-f]{64}")     # key ids, public keys, SHA-256 digests: lowercase
_SIG_HEX = re.compile(r"[0-9a-fA-F]{128}")  # an upper-case spelling parses but never counts


def sign_envelope(signed: dict[str, Any], keys: Iterable[PrivateKey]) -> dict[str, Any]:
    """An envelope of ``signed`` with one signature per key over its canonical bytes."""
    message = canonical_bytes(signed)
    sigs = [{"keyid": k.public.keyid, "sig": k.sign(message).hex()} for k in keys]
    return {"signed": signed, "signatures": sigs}


def root_signed(version: int, root_keys: Sequence[PublicKey], root_threshold: int,
                release_keys: Sequence[PublicKey], release_threshold: int, *,
                issued: int, expires: int, operator_keys: Sequence[PublicKey] = (),
                operator_threshold: int = 1) -> dict[str, Any]:
    """The signed part of a root document; ValueError if a threshold cannot be met.

    ``operator_keys`` (optional) delegates the operator role that signs commands.
    VerificationError if a field is outside what gateways accept (``check_root_signed``).
    """
    delegated = [("root", root_keys, root_threshold),
                 ("release", release_keys, release_threshold)]
    if operator_keys:
        delegated.append(("operator", operator_keys, operator_threshold))
    for role, keys, threshold in delegated:
        ids = {k.keyid for k in keys}
        if len(ids) != len(keys):
            raise ValueError(f"{role} role lists the same key twice")
        if len(ids) > MAX_KEYS:
            raise ValueError(f"{role} role lists {len(ids)} keys; gateways take at most "
                             f"{MAX_KEYS}")
        if not 1 <= threshold <= len(ids):
            raise ValueError(f"{role} threshold {threshold} must be 1..{len(ids)} "
                             f"(the number of {role} keys)")
    listed = {k.keyid: k.to_json() for k in [*root_keys, *release_keys, *operator_keys]}
    roles = {role: {"keyids": sorted(k.keyid for k in keys), "threshold": threshold}
             for role, keys, threshold in delegated}
    return check_root_signed({
        "_type": "root", "spec": SPEC, "version": version, "issued": issued, "expires": expires,
        "keys": listed, "roles": roles})


def bundle_signed(kind: str, version: int, payload: bytes, *, issued: int, expires: int,
                  gateways: Iterable[str] = (), sites: Iterable[str] = (),
                  tags: Iterable[str] = ()) -> dict[str, Any]:
    """The signed part of a bundle carrying ``payload``.

    ValueError for an impossible bundle; VerificationError if a field is outside what
    gateways accept (``check_bundle_signed``), so the fleet never signs what they refuse.
    """
    if kind not in KINDS:
        raise ValueError(f"bundle kind {kind!r}: expected one of {KINDS}")
    targets = {"gateways": sorted(set(gateways)), "sites": sorted(set(sites)),
               "tags": sorted(set(tags))}
    if not any(targets.values()):
        raise ValueError("a bundle needs at least one target (gateway, site or tag)")
    if version < 1 or expires <= issued:
        raise ValueError(f"bundle needs version >= 1 and expires > issued "
                         f"(got v{version}, {issued}..{expires})")
    return check_bundle_signed({
        "_type": "bundle", "spec": SPEC, "kind": kind, "version": version,
        "targets": targets, "issued": issued, "expires": expires,
        "payload": {"length": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}})


def encode_bundle(envelope: dict[str, Any], payload: bytes,
                  roots: Sequence[dict[str, Any]] = ()) -> bytes:
    """The wire bytes of a signed bundle, optionally carrying the root chain."""
    doc = dict(envelope)
    if roots:
        doc["roots"] = list(roots)
    check_canonical(doc)  # what cannot be signed cannot be sent either: VerificationError
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


def _kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", type(None): "null"}.get(type(value), type(value).__name__)


def _object(doc: Any, where: str, required: tuple[str, ...],
            optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """``doc`` if it is an object with every required field and no unknown one."""
    if not isinstance(doc, dict):
        raise VerificationError(f"{where} is {_kind(doc)}, expected an object")
    missing = [k for k in required if k not in doc]
    if missing:
        raise VerificationError(f"{where} lacks {', '.join(missing)}")
    unknown = [k for k in doc if k not in required and k not in optional]
    if unknown:
        raise VerificationError(f"{where} has unknown field {show(unknown[0])}")
    return doc


def _int(doc: dict[str, Any], key: str, where: str, lo: int, hi: int = MAX_INT) -> int:
    value = doc[key]
    if type(value) is not int or not lo <= value <= hi:
        raise VerificationError(f"{where}: {key} is {show(value)}, expected an integer in "
                                f"{lo}..{hi}")
    return value


def _hex64(value: Any, where: str) -> str:
    if type(value) is not str or not _HEX64.fullmatch(value):
        raise VerificationError(f"{where} is {show(value)}, expected 64 lowercase hex digits")
    return value


def _list(value: Any, where: str, max_items: int, min_items: int = 0) -> list[Any]:
    if type(value) is not list:
        raise VerificationError(f"{where} is {_kind(value)}, expected an array")
    if not min_items <= len(value) <= max_items:
        raise VerificationError(f"{where} has {len(value)} entries, expected "
                                f"{min_items}..{max_items}")
    return value


def _typed(signed: Any, type_: str, where: str) -> dict[str, Any]:
    """``signed`` if it is an object of metadata type ``type_`` and our spec."""
    got = signed.get("_type") if isinstance(signed, dict) else _kind(signed)
    if got != type_:
        raise VerificationError(f"{where}: metadata type is {show(got)}, expected {type_!r}")
    spec = signed.get("spec")
    if type(spec) is not int or spec != SPEC:
        raise VerificationError(f"{where}: spec {show(spec)}, expected {SPEC}")
    return signed  # type: ignore[no-any-return]


def check_root_signed(signed: Any, where: str = "root") -> dict[str, Any]:
    """``signed`` if it is a root document of exactly the documented shape."""
    doc = _object(_typed(signed, "root", where), where,
                  ("_type", "spec", "version", "issued", "expires", "keys", "roles"))
    version = _int(doc, "version", where, 1)
    where = f"{where} v{version}"
    _int(doc, "issued", where, 0)
    _int(doc, "expires", where, 0)
    keys = doc["keys"]
    if not isinstance(keys, dict):
        raise VerificationError(f"{where} keys is {_kind(keys)}, expected an object")
    if not 1 <= len(keys) <= 3 * MAX_KEYS:
        raise VerificationError(f"{where} lists {len(keys)} keys, expected 1..{3 * MAX_KEYS}")
    for kid, entry in keys.items():
        _hex64(kid, f"{where}: key id")
        key = _object(entry, f"{where}: key {kid[:12]}", ("keytype", "public"))
        if key["keytype"] != KEYTYPE:
            raise VerificationError(f"{where}: key {kid[:12]} has keytype "
                                    f"{show(key['keytype'])}, expected {KEYTYPE!r}")
        _hex64(key["public"], f"{where}: key {kid[:12]} public")
    roles = _object(doc["roles"], f"{where} roles", ROLES, OPTIONAL_ROLES)
    for role in roles:
        spec = _object(roles[role], f"{where} role {role}", ("keyids", "threshold"))
        for i, kid in enumerate(_list(spec["keyids"], f"{where} role {role} keyids", MAX_KEYS,
                                      1)):
            _hex64(kid, f"{where} role {role} keyids[{i}]")
        _int(spec, "threshold", f"{where} role {role}", 1, MAX_KEYS)
    return doc


def check_bundle_signed(signed: Any) -> dict[str, Any]:
    """``signed`` if it is a bundle document of exactly the documented shape."""
    doc = _object(_typed(signed, "bundle", "bundle"), "bundle",
                  ("_type", "spec", "kind", "version", "targets", "issued", "expires",
                   "payload"))
    if doc["kind"] not in KINDS:
        raise VerificationError(f"bundle kind is {show(doc['kind'])}, expected one of {KINDS}")
    _int(doc, "version", "bundle", 1)
    _int(doc, "issued", "bundle", 0)
    _int(doc, "expires", "bundle", 0)
    targets = _object(doc["targets"], "bundle targets", (), ("gateways", "sites", "tags"))
    for field, names in targets.items():
        for i, name in enumerate(_list(names, f"bundle targets {field}", MAX_ITEMS)):
            if type(name) is not str or not 1 <= len(name) <= MAX_NAME:
                raise VerificationError(f"bundle targets {field}[{i}] is {show(name)}, "
                                        f"expected a name of 1..{MAX_NAME} characters")
    pay = _object(doc["payload"], "bundle payload", ("length", "sha256"))
    _int(pay, "length", "bundle payload", 0)
    _hex64(pay["sha256"], "bundle payload sha256")
    return doc


def check_signatures(sigs: Any, where: str) -> list[dict[str, str]]:
    """``sigs`` if it is a list of ``{"keyid": HEX, "sig": HEX}`` signature entries."""
    for i, sig in enumerate(_list(sigs, f"{where} signatures", MAX_SIGNATURES)):
        entry = _object(sig, f"{where} signatures[{i}]", ("keyid", "sig"))
        _hex64(entry["keyid"], f"{where} signatures[{i}] keyid")
        if type(entry["sig"]) is not str or not _SIG_HEX.fullmatch(entry["sig"]):
            raise VerificationError(f"{where} signatures[{i}] sig is {show(entry['sig'])}, "
                                    "expected 128 hex digits")
    return sigs  # type: ignore[no-any-return]


def check_root_envelope(env: Any, where: str = "root") -> dict[str, Any]:
    """``env`` if it is ``{"signed": root document, "signatures": [...]}`` (not yet verified)."""
    doc = _object(env, f"{where} envelope", ("signed", "signatures"))
    check_root_signed(doc["signed"], where)
    check_signatures(doc["signatures"], where)
    return doc


def check_wire_envelope(env: Any) -> dict[str, Any]:
    """``env`` if it is a bundle envelope as the wire carries it, the root chain included."""
    if not isinstance(env, dict):
        raise VerificationError(f"envelope is not a JSON object (it is {_kind(env)})")
    doc = _object(env, "envelope", ("signed", "signatures"), ("roots",))
    check_bundle_signed(doc["signed"])
    check_signatures(doc["signatures"], "bundle")
    if "roots" in doc:
        for i, root in enumerate(_list(doc["roots"], "envelope roots", MAX_ROOTS)):
            check_root_envelope(root, f"roots[{i}]")
    return doc


Wire = bytes | bytearray | memoryview


def read_envelope(blob: Wire, max_envelope: int) -> tuple[Any, memoryview]:
    """The framing and the envelope JSON read strictly (no schema yet), and the payload view."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise VerificationError(f"a bundle is bytes, got {type(blob).__name__}")
    view = memoryview(blob if isinstance(blob, bytes) else bytes(blob))  # any layout: bytes
    if len(view) < HEADER.size:
        raise VerificationError(f"bundle of {len(view)} bytes is shorter than its header")
    magic, env_len = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise VerificationError(f"not a bundle: magic {magic!r}, expected {MAGIC!r}")
    if env_len > max_envelope:
        raise VerificationError(f"envelope of {env_len} bytes exceeds the cap of "
                                f"{max_envelope} bytes")
    if len(view) < HEADER.size + env_len:
        raise VerificationError(f"bundle truncated: envelope says {env_len} bytes, "
                                f"{len(view) - HEADER.size} present")
    try:
        env = loads_strict(view[HEADER.size:HEADER.size + env_len], max_bytes=max_envelope,
                           max_depth=MAX_DEPTH, max_items=MAX_ITEMS, max_str=MAX_STR,
                           int_min=0, int_max=MAX_INT)
    except UnsafeJsonError as exc:
        raise VerificationError(f"envelope JSON refused at {exc.path}: {exc.problem}") from None
    return env, view[HEADER.size + env_len:]


def split_bundle(blob: Wire, max_envelope: int) -> tuple[dict[str, Any], memoryview]:
    """Split wire bytes into the envelope, read strictly and schema-checked, and a view of the
    payload (not yet checked); VerificationError, and nothing else, for any other input."""
    env, payload = read_envelope(blob, max_envelope)
    return check_wire_envelope(env), payload


def root_fingerprint(root: dict[str, Any]) -> str:
    """SHA-256 of a root envelope's canonical bytes: what an operator compares out of band."""
    return hashlib.sha256(canonical_bytes(root)).hexdigest()


def bundle_kind(blob: bytes) -> str:
    """The kind a bundle the fleet itself signed declares (config or software)."""
    env, _ = read_envelope(blob, len(blob))
    kind = env["signed"]["kind"]
    return kind if kind in KINDS else "config"

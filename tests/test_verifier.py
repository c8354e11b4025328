"""The pure bundle verifier against the attack list (issue 5, item 8): each attack is rejected,
the trusted state comes back unchanged ("nothing changed") and the reason names the attack."""

from __future__ import annotations

import hashlib
import json
import random
import struct
from typing import Any

import pytest

from edge_agent.protocol.bundle import (
    encode_bundle,
    make_bundle,
    root_signed,
    sign_envelope,
    split_bundle,
)
from edge_agent.protocol.errors import VerificationError
from edge_agent.protocol.keys import PrivateKey
from edge_agent.protocol.trust import TrustedState
from edge_agent.protocol.verify import ACCEPTED, CURRENT, REJECTED, Verdict, verify_bundle

SEED = 5
NOW = 1_700_000_000
DAY = 86_400
print(f"test_verifier: key seed {SEED}")


def key(name: str) -> PrivateKey:
    """A deterministic key (fixed seed) so failures reproduce."""
    return PrivateKey(hashlib.sha256(f"{SEED}/{name}".encode()).digest())


R1, R2, R3, R4, R5 = (key(f"root{i}") for i in range(1, 6))
A, B, C, EVIL = key("release-a"), key("release-b"), key("release-c"), key("evil")


def root_v(version: int, roots: list[PrivateKey], signers: list[PrivateKey],
           release: list[PrivateKey], *, threshold: int = 2, release_threshold: int = 1,
           expires: int = NOW + 365 * DAY) -> dict[str, Any]:
    signed = root_signed(version, [k.public for k in roots], threshold,
                         [k.public for k in release], release_threshold,
                         issued=NOW - DAY, expires=expires)
    return sign_envelope(signed, signers)


ROOT1 = root_v(1, [R1, R2, R3], [R1, R2], [A, B])


def trust(root: dict[str, Any] | None = None, **kw: Any) -> TrustedState:
    return TrustedState(gateway_id=kw.pop("gw", "gw-a"), site="north", tags=("lamps",),
                        root=root or ROOT1, **kw)


def bundle(version: int = 7, payload: bytes = b"[gateway]\nid = 'gw-a'\n",
           keys: tuple[PrivateKey, ...] = (A,), **kw: Any) -> bytes:
    kw.setdefault("gateways", ["gw-a"])
    kw.setdefault("issued", NOW - 60)
    kw.setdefault("expires", NOW + DAY)
    return make_bundle(kw.pop("kind", "config"), version, payload, keys, **kw)


def wire(envelope: bytes, payload: bytes = b"") -> bytes:
    """Bundle framing around raw envelope bytes, however hostile."""
    return struct.pack(">4sI", b"EFB1", len(envelope)) + envelope + payload


def rejected(v: Verdict, before: TrustedState, reason: str) -> None:
    """The attack ends with nothing changed and a reason."""
    assert v.code == REJECTED, v
    assert v.trust is before, "trusted state changed on a rejection"
    assert v.bundle is None
    assert reason in v.reason, v.reason


def test_a_good_bundle_is_accepted_with_its_payload() -> None:
    t = trust()
    v = verify_bundle(bundle(), t, "config", NOW)
    assert v.code == ACCEPTED, v.reason
    assert v.bundle is not None and v.bundle.payload == b"[gateway]\nid = 'gw-a'\n"
    assert v.bundle.version == 7
    assert v.trust.time_floor == NOW - 60  # the latest issued time verified


def test_tampered_payload() -> None:
    blob = bytearray(bundle())
    blob[-3] ^= 0x01
    t = trust()
    rejected(verify_bundle(bytes(blob), t, "config", NOW), t, "SHA-256 does not match")


def test_tampered_signed_field_breaks_the_signature() -> None:
    env, payload = split_bundle(bundle(), 1 << 20)
    env["signed"]["targets"]["gateways"] = ["gw-a", "gw-b"]
    t = trust()
    rejected(verify_bundle(encode_bundle(env, bytes(payload)), t, "config", NOW), t,
             "0 valid signatures")


def test_wrong_key() -> None:
    t = trust()
    rejected(verify_bundle(bundle(keys=(EVIL,)), t, "config", NOW), t, "0 valid signatures")


def test_root_key_cannot_sign_a_bundle() -> None:
    # The release role is delegated: a root key is not a release key.
    t = trust()
    rejected(verify_bundle(bundle(keys=(R1, R2)), t, "config", NOW), t, "0 valid signatures")


def test_too_few_signatures() -> None:
    root = root_v(1, [R1, R2, R3], [R1, R2], [A, B], release_threshold=2)
    t = trust(root)
    rejected(verify_bundle(bundle(keys=(A,)), t, "config", NOW), t, "1 valid signatures")
    assert verify_bundle(bundle(keys=(A, B)), t, "config", NOW).code == ACCEPTED


def test_one_key_signature_counted_twice() -> None:
    root = root_v(1, [R1, R2, R3], [R1, R2], [A, B], release_threshold=2)
    t = trust(root)
    env, payload = split_bundle(bundle(keys=(A,)), 1 << 20)
    env["signatures"] = env["signatures"] * 2
    rejected(verify_bundle(encode_bundle(env, bytes(payload)), t, "config", NOW), t,
             "1 valid signatures")
    # the same signature respelled in upper-case hex does not count as a second one either
    env["signatures"][1] = {**env["signatures"][0], "sig": env["signatures"][0]["sig"].upper()}
    rejected(verify_bundle(encode_bundle(env, bytes(payload)), t, "config", NOW), t,
             "1 valid signatures")


def test_older_version_rollback() -> None:
    t = trust(floors={"config": 7}, committed_sha256={"config": "00" * 32})
    rejected(verify_bundle(bundle(version=6), t, "config", NOW), t, "rollback")


def test_same_version_with_other_content_is_rejected_and_same_content_is_current() -> None:
    payload = b"[gateway]\nid = 'gw-a'\n"
    sha = hashlib.sha256(payload).hexdigest()
    t = trust(floors={"config": 7}, committed_sha256={"config": sha})
    v = verify_bundle(bundle(version=7, payload=payload), t, "config", NOW)
    assert v.code == CURRENT and v.trust is t
    rejected(verify_bundle(bundle(version=7, payload=b"other"), t, "config", NOW), t,
             "different payload")


def test_another_gateways_bundle_replay() -> None:
    t = trust()
    rejected(verify_bundle(bundle(gateways=["gw-b"]), t, "config", NOW), t,
             "does not target gateway 'gw-a'")


def test_targets_by_site_and_tag() -> None:
    t = trust()
    assert verify_bundle(bundle(gateways=[], sites=["north"]), t, "config", NOW).accepted
    assert verify_bundle(bundle(gateways=[], tags=["lamps"]), t, "config", NOW).accepted
    rejected(verify_bundle(bundle(gateways=[], sites=["south"], tags=["meters"]), t,
                           "config", NOW), t, "does not target")


def test_expired_bundle_and_the_skew_allowance() -> None:
    t = trust()
    blob = bundle(issued=NOW - 2 * DAY, expires=NOW - 200)
    assert verify_bundle(blob, t, "config", NOW).accepted  # within the 300 s allowance
    rejected(verify_bundle(blob, t, "config", NOW + 101), t, "expired")


def test_a_gateway_clock_set_back_cannot_revive_an_expired_bundle() -> None:
    # A gateway whose clock reset to 1970 still knows time is at least the latest issued time
    # it verified, so an expired bundle stays expired.
    t = trust(time_floor=NOW)
    rejected(verify_bundle(bundle(issued=NOW - 3 * DAY, expires=NOW - 2 * DAY), t, "config",
                           0.0), t, "expired")


def test_stale_retained_bundle_freeze() -> None:
    # The broker (or someone holding it) keeps serving an old retained bundle.
    sha = hashlib.sha256(b"v9").hexdigest()
    t = trust(floors={"config": 9}, committed_sha256={"config": sha})
    rejected(verify_bundle(bundle(version=8), t, "config", NOW), t, "rollback")
    # A newer one withheld long enough expires instead of being applied late.
    rejected(verify_bundle(bundle(version=10, expires=NOW + DAY), t, "config", NOW + 30 * DAY),
             t, "expired")


def test_oversized_payload_is_refused_before_hashing() -> None:
    t = trust()
    big = bundle(payload=b"x" * 5000)
    rejected(verify_bundle(big, t, "config", NOW, max_payload=4096), t,
             "payload declares 5000 bytes, cap is 4096")
    # Endless data: a message beyond every cap is refused before it is parsed at all.
    endless = struct.pack(">4sI", b"EFB1", 10) + b"\xff" * 10_000
    rejected(verify_bundle(endless, t, "config", NOW, max_envelope=1024, max_payload=4096), t,
             "exceeds the cap")
    # An envelope length beyond its cap.
    rejected(verify_bundle(struct.pack(">4sI", b"EFB1", 1 << 30), t, "config", NOW), t,
             "envelope of 1073741824 bytes exceeds the cap")
    # Bytes appended to a good bundle do not pass either.
    rejected(verify_bundle(bundle() + b"more", t, "config", NOW), t, "the bundle declares")


def test_payload_swapped_from_another_bundle_mix_and_match() -> None:
    t = trust()
    env1, _ = split_bundle(bundle(payload=b"config one....."), 1 << 20)
    _, pay2 = split_bundle(bundle(version=8, payload=b"config two....."), 1 << 20)
    rejected(verify_bundle(encode_bundle(env1, bytes(pay2)), t, "config", NOW), t,
             "SHA-256 does not match")


def test_wrong_kind_and_type_confusion() -> None:
    t = trust()
    rejected(verify_bundle(bundle(kind="software"), t, "config", NOW), t,
             "kind is 'software'")
    # A root document (signed by root keys) passed off as a bundle.
    env = root_v(1, [R1, R2, R3], [R1, R2], [A, B])
    env["signatures"] += sign_envelope(env["signed"], [A])["signatures"]
    rejected(verify_bundle(encode_bundle(env, b""), t, "config", NOW), t, "metadata type")


def test_revoked_key() -> None:
    # Root v2 drops release key A (compromised) and adds C; signed by 2 of the old root keys
    # and 2 of the new ones.
    root2 = root_v(2, [R1, R2, R3], [R1, R2], [B, C])
    t = trust()
    rejected(verify_bundle(bundle(keys=(A,), roots=[root2]), t, "config", NOW), t,
             "0 valid signatures from release keys of root v2")
    v = verify_bundle(bundle(keys=(C,), roots=[root2]), t, "config", NOW)
    assert v.accepted and v.trust.root_version == 2
    # Once the gateway holds root v2, A is refused even without the chain.
    t2 = v.trust
    rejected(verify_bundle(bundle(keys=(A,)), t2, "config", NOW), t2, "0 valid signatures")


def test_root_rotation_chain() -> None:
    # v1 {R1,R2,R3} -> v2 {R3,R4,R5}: signed by 2 old (R1,R2) and 2 new (R4,R5)
    # -> v3 {R4,R5}, threshold 1: signed by 2 of v2 (R4,R5) and 1 of its own (R4).
    root2 = root_v(2, [R3, R4, R5], [R1, R2, R4, R5], [A])
    root3 = root_v(3, [R4, R5], [R4, R5], [C], threshold=1)
    t = trust()
    v = verify_bundle(bundle(keys=(C,), roots=[ROOT1, root2, root3]), t, "config", NOW)
    assert v.accepted, v.reason
    assert v.trust.root_version == 3


def test_root_rotation_needs_the_old_threshold() -> None:
    # An attacker holding new keys only cannot install them: no old-root signatures.
    forged = root_v(2, [R4, R5, EVIL], [R4, R5, EVIL], [EVIL])
    t = trust()
    rejected(verify_bundle(bundle(keys=(EVIL,), roots=[forged]), t, "config", NOW), t,
             "0 of 2 signatures from root v1")
    one_old = root_v(2, [R4, R5, EVIL], [R1, R4, R5], [EVIL])
    rejected(verify_bundle(bundle(keys=(EVIL,), roots=[one_old]), t, "config", NOW), t,
             "1 of 2 signatures from root v1")


def test_root_rotation_needs_the_new_threshold() -> None:
    no_new = root_v(2, [R4, R5], [R1, R2], [A])
    t = trust()
    rejected(verify_bundle(bundle(roots=[no_new]), t, "config", NOW), t,
             "0 of 2 signatures from its own root keys")


def test_root_chain_cannot_skip_a_version() -> None:
    root3 = root_v(3, [R1, R2, R3], [R1, R2], [A])
    t = trust()
    rejected(verify_bundle(bundle(roots=[root3]), t, "config", NOW), t,
             "skips from v1 to v3")


def test_expired_root() -> None:
    t = trust(root_v(1, [R1, R2, R3], [R1, R2], [A], expires=NOW - DAY))
    rejected(verify_bundle(bundle(), t, "config", NOW), t, "root v1 expired")


def test_malformed_inputs() -> None:
    t = trust()
    for blob, reason in [(b"", "shorter than its header"), (b"XXXX\0\0\0\2{}", "magic"),
                         (b"EFB1\0\0\0\x10{not json", "truncated"),
                         (b"EFB1\0\0\0\x09{not json}", "not valid JSON"),
                         (b'EFB1\0\0\0\x0f{"a":1,"a":2}  ', "repeats a key"),
                         (b"EFB1\0\0\0\x02[]", "not a JSON object")]:
        rejected(verify_bundle(blob, t, "config", NOW), t, reason)


def test_float_in_signed_metadata_is_refused() -> None:
    env, payload = split_bundle(bundle(), 1 << 20)
    env["signed"]["version"] = 7.0
    t = trust()
    rejected(verify_bundle(wire(json.dumps(env).encode(), bytes(payload)), t, "config", NOW), t,
             "float")
    # The fleet side refuses to send what no gateway would take.
    with pytest.raises(VerificationError, match=r"float 7\.0 is not allowed at"):
        encode_bundle(env, bytes(payload))


def test_random_bit_flips_are_never_accepted() -> None:
    seed = 20261128
    print(f"bit flip seed {seed}")
    rng = random.Random(seed)
    good = bundle(payload=b"[gateway]\nid = 'gw-a'\nsite = 'north'\n")
    t = trust()
    for _ in range(400):
        blob = bytearray(good)
        pos = rng.randrange(len(blob))
        blob[pos] ^= 1 << rng.randrange(8)
        v = verify_bundle(bytes(blob), t, "config", NOW)
        assert v.code == REJECTED and v.trust is t, (pos, v)


@pytest.mark.parametrize("field", ["version", "issued", "expires"])
def test_non_integer_fields_are_refused(field: str) -> None:
    # Signed by the release key, but malformed: the type check still rejects it.
    env, payload = split_bundle(bundle(), 1 << 20)
    env["signed"][field] = "7"
    env = sign_envelope(env["signed"], [A])
    t = trust()
    rejected(verify_bundle(encode_bundle(env, bytes(payload)), t, "config", NOW), t,
             "expected an integer")

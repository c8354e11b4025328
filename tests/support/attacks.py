"""The attack list (issue 5, item 8) as wire bytes, for tests and for anyone probing a gateway.

``attack_bundles`` builds every attack against one gateway from the fleet's real keys (the
attacker is assumed to hold captured genuine bundles and, for the revocation case, a
compromised release key that the operator has since revoked). Each entry names the attack and
the words the gateway's rejection reason must contain. A gateway must answer each with
"rejected" and change nothing.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.protocol.bundle import (
    encode_bundle,
    make_bundle,
    root_signed,
    sign_envelope,
    split_bundle,
)
from edge_agent.protocol.keys import PrivateKey


@dataclass(frozen=True)
class Attack:
    """One attack: its name, the message, and what the rejection reason must say."""

    name: str
    blob: bytes
    reason: str


def attack_bundles(*, gateway: str, other_gateway: str, floor: int, captured_old: bytes,
                   roots: Sequence[dict[str, Any]], root_keys: Sequence[PrivateKey],
                   release_keys: Sequence[PrivateKey], now: int,
                   max_payload: int = 1024 * 1024) -> list[Attack]:
    """Every attack against ``gateway``, whose committed config version is ``floor``.

    ``captured_old`` is a genuine bundle this gateway committed earlier (below the floor);
    ``roots`` the genuine root chain (its first entry's root keys are ``root_keys``, with
    threshold len(root_keys)); ``release_keys`` the genuine release keys (threshold all).
    """
    new = floor + 1
    payload = b"# attacker's config\n[gateway]\n"

    def genuine(version: int = new, body: bytes = payload, **kw: Any) -> bytes:
        kw.setdefault("gateways", [gateway])
        kw.setdefault("issued", now - 60)
        kw.setdefault("expires", now + 3600)
        return make_bundle("config", version, body, release_keys, roots=roots, **kw)

    evil = PrivateKey(hashlib.sha256(b"attacker").digest())
    good = genuine()
    env, body = split_bundle(good, 1 << 20)
    attacks: list[Attack] = []

    tampered = bytearray(good)
    tampered[-2] ^= 0x01
    attacks.append(Attack("tampered payload", bytes(tampered), "SHA-256 does not match"))
    attacks.append(Attack("wrong key", make_bundle("config", new, payload, [evil],
                                                   gateways=[gateway], issued=now - 60,
                                                   expires=now + 3600, roots=roots),
                          "valid signatures"))
    one = dict(env, signatures=env["signatures"][:1])
    attacks.append(Attack("too few signatures", encode_bundle(one, bytes(body), roots),
                          f"1 valid signatures from release keys of root v"
                          f"{roots[-1]['signed']['version']}, needs"))
    twice = dict(env, signatures=env["signatures"][:1] * len(release_keys))
    attacks.append(Attack("one key's signature counted twice",
                          encode_bundle(twice, bytes(body), roots), "1 valid signatures"))
    attacks.append(Attack("older version (rollback)", genuine(version=max(1, floor - 1)),
                          "rollback" if floor > 1 else "committed version"))
    attacks.append(Attack("another gateway's bundle (replay)",
                          genuine(gateways=[other_gateway]), f"does not target gateway "
                                                             f"{gateway!r}"))
    attacks.append(Attack("expired bundle", genuine(issued=now - 7200, expires=now - 3600),
                          "expired"))
    attacks.append(Attack("stale retained bundle (freeze)", captured_old, "rollback"))
    big = genuine(body=b"#" * (max_payload + 1))
    attacks.append(Attack("oversized payload (endless data)", big, "cap"))
    endless = struct.pack(">4sI", b"EFB1", 64) + b"\0" * (max_payload + 512 * 1024)
    attacks.append(Attack("endless data before parsing", endless, "exceeds the cap"))
    # Same length, so only the hash can tell (a different length is caught even earlier).
    other = b"# another genuine config\n".ljust(len(payload), b"#")
    _, other_body = split_bundle(genuine(version=new + 1, body=other), 1 << 20)
    attacks.append(Attack("payload swapped from another bundle (mix-and-match)",
                          encode_bundle(env, bytes(other_body), roots), "SHA-256 does not match"))
    # Revocation: the operator rotated root to drop release key [-1] (compromised).
    replacement = PrivateKey(hashlib.sha256(b"replacement release key").digest())
    last = roots[-1]["signed"]
    rotated = root_signed(int(last["version"]) + 1, [k.public for k in root_keys],
                          len(root_keys), [*(k.public for k in release_keys[:-1]),
                                           replacement.public], len(release_keys),
                          issued=now - 30, expires=now + 365 * 86400)
    new_root = sign_envelope(rotated, root_keys)
    revoked = make_bundle("config", new, payload, release_keys, gateways=[gateway],
                          issued=now - 60, expires=now + 3600, roots=[*roots, new_root])
    attacks.append(Attack("revoked key", revoked, "valid signatures from release keys of root"))
    forged_signed = root_signed(int(last["version"]) + 1, [evil.public], 1, [evil.public], 1,
                                issued=now - 30, expires=now + 365 * 86400)
    forged = make_bundle("config", new, payload, [evil], gateways=[gateway], issued=now - 60,
                         expires=now + 3600,
                         roots=[*roots, sign_envelope(forged_signed, [evil])])
    attacks.append(Attack("root rotation chain (forged new root)", forged,
                          f"signatures from root v{last['version']}"))
    return attacks

"""Fuzz the gateway's bundle verifier: every input must end in a rejection, never an exception.

Inputs are genuine signed bundles (with and without a root chain) mutated at the byte level
(flips, hostile bytes, insertions of surrogate escapes, brackets and long digit runs, cuts, a
rewritten length prefix) and at the structure level (one field of the envelope replaced by a
hostile JSON value, deleted, or given an unknown sibling), plus random bytes. Each goes through
``verify_bundle``, ``claimed_version`` and, for root mutations, enrolment's root check.

Counted: inputs, rejected, accepted (only the genuine content may be: a respelling of the same
envelope), crashes (an exception escaped, the verifier's backstop fired, or something other than
the genuine content was accepted): expected 0. A genuine bundle must still verify at the end.
Usage: python bench/fuzz_bundle.py [--count 100000] [--seed 20261202]
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
import sys
from pathlib import Path
from typing import Any

# Run as a script, Python puts bench/ first on sys.path, not the repository root where the
# hostile JSON shared with the tests (tests.support) lives.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _mutate import Mutator, Run, arguments

from edge_agent.protocol.bundle import make_bundle, root_signed, sign_envelope, split_bundle
from edge_agent.protocol.errors import VerificationError
from edge_agent.protocol.keys import PrivateKey
from edge_agent.protocol.trust import TrustedState
from edge_agent.protocol.verify import (
    ACCEPTED,
    FAULT,
    REJECTED,
    check_self_signed_root,
    claimed_version,
    verify_bundle,
)

NOW = 1_700_000_000
DAY = 86_400


def key(seed: int, name: str) -> PrivateKey:
    """A deterministic key."""
    return PrivateKey(hashlib.sha256(f"{seed}/{name}".encode()).digest())


class Material:
    """Genuine keys, roots, bundles and the gateway's trusted state, all from one seed."""

    def __init__(self, seed: int) -> None:
        r1, r2, r3 = (key(seed, f"root{i}") for i in (1, 2, 3))
        a, c = key(seed, "release-a"), key(seed, "release-c")
        self.root1 = sign_envelope(root_signed(1, [r1.public, r2.public], 2, [a.public], 1,
                                               issued=NOW - DAY, expires=NOW + 365 * DAY),
                                   [r1, r2])
        self.root2 = sign_envelope(root_signed(2, [r2.public, r3.public], 2, [c.public], 1,
                                               issued=NOW - 100, expires=NOW + 365 * DAY),
                                   [r1, r2, r3])
        self.payload = b"[gateway]\nid = 'gw-a'\n"
        self.trust = TrustedState(gateway_id="gw-a", site="north", tags=("lamps",),
                                  root=self.root1)
        self.genuine = [
            make_bundle("config", 7, self.payload, [a], issued=NOW - 60, expires=NOW + DAY,
                        gateways=["gw-a"]),
            make_bundle("config", 8, self.payload, [c], issued=NOW - 60, expires=NOW + DAY,
                        sites=["north"], tags=["lamps"], roots=[self.root1, self.root2]),
        ]
        self.signed = {split_bundle(b, 1 << 20)[0]["signed"]["version"]:
                       split_bundle(b, 1 << 20)[0]["signed"] for b in self.genuine}


def frame(envelope: bytes, payload: bytes) -> bytes:
    """Bundle framing around raw envelope bytes."""
    return struct.pack(">4sI", b"EFB1", len(envelope)) + envelope + payload


def relength(rng: random.Random, b: bytearray) -> None:
    """Rewrite the framing's envelope length (bytes 4 to 8) with a wrong or random one."""
    if len(b) >= 8:
        b[4:8] = struct.pack(">I", rng.choice([0, 1, len(b) - 8, 1 << 31,
                                               rng.randrange(1 << 20)]))


MUTATOR = Mutator(
    raw=[
        b"[" * 3000 + b"]" * 3000, b'{"a":1,"a":2}', b"NaN", b"Infinity", b"1e999", b"1.0",
        b"1" * 5000, b"9" * 30, b"-1", b"true", b"null", b'""', b"[]", b"{}",
        b'"\\ud800"', b'"x\\udfff"', b'{"\\ud800":1}', b'"\xff"', b'"\xed\xa0\x80"',
        b'"' + b"x" * 200 + b'"', b"[" + b"0," * 2000 + b"0]", b'["gw-a"]',
        b'"' + b"a" * 64 + b'"', b'"' + b"A" * 128 + b'"',
        b'{"keyid":"' + b"0" * 64 + b'","sig":"' + b"0" * 128 + b'"}',
    ],
    values=[0, -1, 2**53, 2**63, 10**30, True, None, "", "x" * 300, [1, [2]], {"a": []}, 7,
            "config", "gw-a"],
    pokes=[0, 0x22, 0x5C, 0x7B, 0x5B, 0x80, 0xED, 0xFF],
    inserts=[b"\\ud800", b"[", b"{", b'"', b"\\", b"9" * 30, b",", b"\x00", b"\xff", b" "],
    extra=relength,
)


def make_input(rng: random.Random, m: Material) -> tuple[str, bytes]:
    """(kind, message) for one fuzz iteration."""
    r = rng.random()
    blob = rng.choice(m.genuine)
    if r < 0.05:
        return "random", bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    if r < 0.10:
        return "random-framed", frame(bytes(rng.randrange(256) for _ in range(rng.randrange(64))),
                                      m.payload)
    if r < 0.55:
        return "bytes", MUTATOR.byte_level(rng, blob)
    env, payload = split_bundle(blob, 1 << 20)
    return "structure", frame(MUTATOR.structural(rng, env), bytes(payload))


def canon(doc: Any) -> str:
    """One spelling of a document, with 1, 1.0 and true told apart."""
    return json.dumps(doc, sort_keys=True)


def main() -> int:
    """Run the fuzz loop and print the counts; exit 1 on any crash."""
    count, seed = arguments("Fuzz the bundle verifier; 0 crashes expected.")
    print(f"fuzz_bundle: seed {seed}, {count} inputs")
    rng = random.Random(seed)
    m = Material(seed)
    run = Run(count)
    crash, counts = run.crash, run.counts
    for k, _kind, blob in run.inputs(lambda: make_input(rng, m)):
        try:
            v = verify_bundle(blob, m.trust, "config", NOW)
            claimed = claimed_version(blob)
        except Exception:  # the point of a fuzzer: anything escaping is a crash
            crash("exception", blob)
            continue
        if FAULT in v.reason or not (claimed is None or type(claimed) is int):
            crash(f"backstop: {v.reason}", blob)
        elif v.code == REJECTED:
            counts["rejected"] += 1
            if v.trust is not m.trust:
                crash("state changed on a rejection", blob)
        elif v.bundle is None or v.bundle.payload != m.payload \
                or v.bundle.signed != m.signed.get(v.bundle.version):
            crash(f"accepted something else: {v.reason}", blob)
        else:
            counts["accepted"] += 1
        if k % 10 == 0:  # enrolment's root check on a mutated root
            root = rng.choice([m.root1, m.root2])
            root_text = MUTATOR.structural(rng, root)
            try:
                doc = json.loads(root_text)
            except (ValueError, RecursionError):
                doc = None
            try:
                got = check_self_signed_root(doc)
            except VerificationError:
                counts["root rejected"] += 1
            except Exception:
                crash("root check", root_text)
            else:
                # Signatures may be fewer (root v2's old-root signature is not its own), the
                # signed content must be the genuine one.
                if canon(got["signed"]) != canon(root["signed"]):
                    crash("root check accepted something else", root_text)
                counts["root accepted"] += 1
    final = [verify_bundle(b, m.trust, "config", NOW).code for b in m.genuine]
    if final != [ACCEPTED, ACCEPTED]:
        print(f"genuine bundles after the run: {final}")
        run.crashes += 1
    return run.finish(
        f"rejected {counts['rejected']}, accepted {counts['accepted']} (genuine content only), "
        f"crashes {run.crashes}; enrolment root check: rejected {counts['root rejected']}, "
        f"accepted {counts['root accepted']}; genuine bundles afterwards: {final}")


if __name__ == "__main__":
    sys.exit(main())

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

import argparse
import hashlib
import json
import random
import struct
import sys
import time
import traceback
from collections import Counter
from typing import Any

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

HOSTILE_RAW = [
    b"[" * 3000 + b"]" * 3000, b'{"a":1,"a":2}', b"NaN", b"Infinity", b"1e999", b"1.0",
    b"1" * 5000, b"9" * 30, b"-1", b"true", b"null", b'""', b"[]", b"{}",
    b'"\\ud800"', b'"x\\udfff"', b'{"\\ud800":1}', b'"\xff"', b'"\xed\xa0\x80"',
    b'"' + b"x" * 200 + b'"', b"[" + b"0," * 2000 + b"0]", b'["gw-a"]', b'"' + b"a" * 64 + b'"',
    b'"' + b"A" * 128 + b'"', b'{"keyid":"' + b"0" * 64 + b'","sig":"' + b"0" * 128 + b'"}',
]
INSERTS = [b"\\ud800", b"[", b"{", b'"', b"\\", b"9" * 30, b",", b"\x00", b"\xff", b" "]


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


def hostile_value(rng: random.Random) -> bytes:
    """JSON text no well-behaved signer writes."""
    r = rng.random()
    if r < 0.6:
        return rng.choice(HOSTILE_RAW)
    if r < 0.8:
        return json.dumps(rng.choice([0, -1, 2**53, 2**63, 10**30, True, None, "", "x" * 300,
                                      [1, [2]], {"a": []}, 7, "config", "gw-a"])).encode()
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12)))


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every node's path in a JSON document."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, (*prefix, i))
    return out


MARK = "\x00hostile\x00"


def structural(rng: random.Random, doc: Any) -> bytes:
    """``doc`` as JSON with one node replaced, deleted or given a hostile sibling."""
    doc = json.loads(json.dumps(doc))
    path = rng.choice(paths(doc)[1:])
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    op = rng.choice(["replace", "replace", "delete", "add"])
    last = path[-1]
    if op == "delete":
        del parent[last]
    elif op == "add" and isinstance(parent, dict):
        parent[f"{last}x"] = MARK
    elif op == "add":
        parent.insert(last, MARK)
    else:
        parent[last] = MARK
    text = json.dumps(doc, separators=(",", ":")).encode()
    return text.replace(json.dumps(MARK).encode(), hostile_value(rng), 1)


def byte_level(rng: random.Random, blob: bytes) -> bytes:
    """A few flips, hostile bytes, insertions, deletions or a cut; sometimes a new length."""
    b = bytearray(blob)
    for _ in range(rng.choice([1, 1, 2, 3, 6])):
        i = rng.randrange(len(b)) if b else 0
        op = rng.randrange(6)
        if op == 0 and b:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[i] = rng.choice([0, 0x22, 0x5C, 0x7B, 0x5B, 0x80, 0xED, 0xFF, rng.randrange(256)])
        elif op == 2:
            b[i:i] = rng.choice(INSERTS)
        elif op == 3 and b:
            del b[i]
        elif op == 4 and b:
            del b[i:]
        elif len(b) >= 8:
            b[4:8] = struct.pack(">I", rng.choice([0, 1, len(b) - 8, 1 << 31,
                                                   rng.randrange(1 << 20)]))
    return bytes(b)


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
        return "bytes", byte_level(rng, blob)
    env, payload = split_bundle(blob, 1 << 20)
    return "structure", frame(structural(rng, env), bytes(payload))


def canon(doc: Any) -> str:
    """One spelling of a document, with 1, 1.0 and true told apart."""
    return json.dumps(doc, sort_keys=True)


def main() -> int:
    """Run the fuzz loop and print the counts; exit 1 on any crash."""
    ap = argparse.ArgumentParser(description="Fuzz the bundle verifier; 0 crashes expected.")
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=20261202)
    args = ap.parse_args()
    print(f"fuzz_bundle: seed {args.seed}, {args.count} inputs")
    rng = random.Random(args.seed)
    m = Material(args.seed)
    counts: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    crashes = 0
    start = time.perf_counter()

    def crash(what: str, blob: bytes) -> None:
        nonlocal crashes
        crashes += 1
        if crashes <= 5:
            print(f"CRASH ({what}) on {blob[:200].hex()}...\n{traceback.format_exc()}")

    for k in range(args.count):
        kind, blob = make_input(rng, m)
        kinds[kind] += 1
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
            root_text = structural(rng, root)
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
        if (k + 1) % 50_000 == 0:
            print(f"  {k + 1} inputs, {time.perf_counter() - start:.0f} s")
    final = [verify_bundle(b, m.trust, "config", NOW).code for b in m.genuine]
    if final != [ACCEPTED, ACCEPTED]:
        print(f"genuine bundles after the run: {final}")
        crashes += 1
    elapsed = time.perf_counter() - start
    print(f"inputs {args.count} ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}) "
          f"in {elapsed:.0f} s")
    print(f"rejected {counts['rejected']}, accepted {counts['accepted']} (genuine content "
          f"only), crashes {crashes}; enrolment root check: rejected {counts['root rejected']}, "
          f"accepted {counts['root accepted']}; genuine bundles afterwards: {final}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())

"""Fuzz both batch decoders with mutated and random inputs; report crashes and disagreements.

A crash is any exception other than CodecError; a disagreement is the two decoders giving
different results (one raising and the other not, or different series). Expected: zero of
each. Usage: python bench/fuzz_codec.py [--count 1000000] [--seed 1]
"""

from __future__ import annotations

import argparse
import math
import random
import struct
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from edge_agent import codecs
from edge_agent.codecs import reference
from edge_agent.protocol.errors import CodecError


def seeds(rng: random.Random) -> list[bytes]:
    """Valid batches of every stream kind, small enough to mutate quickly."""
    out = []
    for _ in range(200):
        n = rng.choice([0, 1, 2, 3, 5, 17, 60, 130])
        ts = [1_700_000_000_000 + 1000 * i + rng.choice([0, 0, 3, -7]) for i in range(n)]
        kind = rng.randrange(8)
        vals: list[Any]
        if kind == 0:
            vals = [rng.random() < 0.2 for _ in ts]
        elif kind == 1:
            vals = [rng.randrange(-(1 << 63), 1 << 63) if rng.random() < 0.1 else rng.randrange(9)
                    for _ in ts]
        elif kind == 2:
            vals = [round(rng.gauss(50, 3), 2) for _ in ts]
        elif kind == 3:
            vals = [struct.unpack("<f", struct.pack("<f", rng.gauss(230, 1)))[0] for _ in ts]
        elif kind == 4:
            vals = [rng.random() for _ in ts]
        elif kind == 5:
            vals = [rng.randrange(2000) * 0.1 for _ in ts]
        elif kind == 6:
            vals = [rng.choice([math.nan, -0.0, math.inf, 1.5, 5e-324]) for _ in ts]
            rng.shuffle(ts)
        else:  # float32 readings crossing zero: binary32 pattern streams (version 2)
            vals = [struct.unpack("<f", struct.pack("<f", rng.gauss(0, 2)))[0] for _ in ts]
            vals[:2] = [-0.0, math.inf][:len(vals)]
        batch = {f"s{j}": (ts, vals) for j in range(rng.choice([1, 1, 2]))}
        blob = reference.encode_batch(batch)
        out.append(blob)
        out.append(b"\x01" + blob[1:])  # as version 1: valid unless it holds binary32 streams
    return out


def mutate(rng: random.Random, blob: bytes) -> bytes:
    """Flip, overwrite, insert, delete or truncate a few bytes; sometimes pure random bytes."""
    r = rng.random()
    if r < 0.05:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
    if r < 0.10:
        return b"\x01EC" + bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
    b = bytearray(blob)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        op = rng.randrange(5)
        i = rng.randrange(len(b)) if b else 0
        if op == 0 and b:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[i] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif op == 2:
            b.insert(i, rng.randrange(256))
        elif op == 3 and b:
            del b[i]
        elif b:
            del b[rng.randrange(len(b)):]
    return bytes(b)


def outcome(decode: Callable[[bytes], Any], blob: bytes) -> tuple[str, Any]:
    """('ok', canonical result) or ('CodecError', None); other exceptions propagate."""
    try:
        got = decode(blob)
    except CodecError:
        return "CodecError", None
    canon = {k: (ts, [(type(v).__name__, struct.pack("<d", v) if isinstance(v, float) else v)
                      for v in vals]) for k, (ts, vals) in got.items()}
    return "ok", canon


def main() -> int:
    """Run the fuzz loop and print the counts; exit 1 on any crash or disagreement."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    print(f"seed {args.seed}, {args.count} inputs, implementation {codecs.IMPLEMENTATION}")
    decoders: list[tuple[str, Callable[[bytes], Any]]] = [("python", reference.decode_batch)]
    if codecs.fast is not None:
        decoders.append(("cython", codecs.fast.decode_batch))
    else:
        print("fast path not built: fuzzing the reference only", file=sys.stderr)
    corpus = seeds(rng)
    crashes = disagreements = accepted = 0
    start = time.perf_counter()
    for k in range(args.count):
        blob = mutate(rng, rng.choice(corpus))
        results = []
        for name, decode in decoders:
            try:
                results.append(outcome(decode, blob))
            except Exception:  # the point of a fuzzer: count anything that is not CodecError
                crashes += 1
                if crashes <= 5:
                    print(f"CRASH in {name} on {blob.hex()}\n{traceback.format_exc()}")
                results.append(("crash", None))
        if any(r != results[0] for r in results[1:]):
            disagreements += 1
            if disagreements <= 5:
                print(f"DISAGREEMENT on {blob.hex()}: {[r[0] for r in results]}")
        accepted += results[0][0] == "ok"
        if (k + 1) % 200_000 == 0:
            print(f"  {k + 1} inputs, {time.perf_counter() - start:.0f} s")
    print(f"inputs {args.count}, decoded without error {accepted}, crashes {crashes}, "
          f"disagreements {disagreements}, decoders {[d[0] for d in decoders]}")
    return 1 if crashes or disagreements else 0


if __name__ == "__main__":
    sys.exit(main())

"""Mutation machinery of the fuzz scripts: hostile JSON values, structural and byte mutation, a run.

Each script names its target's hostile pieces in a ``Mutator`` (raw JSON text, JSON values of
the wrong type or range, bytes written over a byte, byte strings inserted, and optionally a
byte operation of its own); the mutations themselves are the same for every target. Node paths
and the splicing of raw text into a document come from ``tests.support.hostile_json``, the
property tests' hostile JSON, so the fuzzers and the tests share one definition: the scripts put
the repository root on ``sys.path`` before importing this module. ``Run`` holds what a fuzz loop
counts (inputs by kind, outcomes, crashes) and prints its progress and the inputs line.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tests.support.hostile_json import Raw, paths, render


@dataclass(frozen=True)
class Mutator:
    """One target's hostile pieces, and the structural and byte mutations that use them."""

    raw: Sequence[bytes]  # JSON text no well-behaved encoder writes, spliced in verbatim
    values: Sequence[Any]  # well-formed JSON values of the wrong type, range or size
    pokes: Sequence[int]  # bytes written over one byte of a message
    inserts: Sequence[bytes]  # byte strings inserted into a message
    # A sixth byte operation that knows the target's framing (a length prefix, say).
    extra: Callable[[random.Random, bytearray], None] | None = None

    def hostile_value(self, rng: random.Random) -> bytes:
        """JSON text no well-behaved encoder writes: raw text, a wrong value or random bytes."""
        r = rng.random()
        if r < 0.6:
            return rng.choice(self.raw)
        if r < 0.8:
            return json.dumps(rng.choice(self.values)).encode()
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12)))

    def structural(self, rng: random.Random, doc: Any) -> bytes:
        """``doc`` as JSON with one node replaced, deleted or given a hostile sibling."""
        doc = json.loads(json.dumps(doc))  # a copy: the genuine document is drawn from again
        path = rng.choice(paths(doc)[1:])
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        op = rng.choice(["replace", "replace", "delete", "add"])
        last = path[-1]
        # Drawn for a delete too, so that a seed goes on giving the inputs it always gave.
        value = Raw(self.hostile_value(rng))
        if op == "delete":
            del parent[last]
        elif op == "add" and isinstance(parent, dict):
            parent[f"{last}x"] = value
        elif op == "add":
            parent.insert(last, value)
        else:
            parent[last] = value
        return render(doc)

    def byte_level(self, rng: random.Random, blob: bytes, start: int = 0) -> bytes:
        """A few flips, hostile bytes, insertions, deletions or a cut from ``start`` on."""
        b = bytearray(blob)
        ops = 5 if self.extra is None else 6
        for _ in range(rng.choice([1, 1, 2, 3, 6])):
            i = rng.randrange(start, len(b)) if len(b) > start else len(b)
            op = rng.randrange(ops)
            if op == 0 and i < len(b):
                b[i] ^= 1 << rng.randrange(8)
            elif op == 1 and i < len(b):
                b[i] = rng.choice([*self.pokes, rng.randrange(256)])
            elif op == 2:
                b[i:i] = rng.choice(self.inserts)
            elif op == 3 and i < len(b):
                del b[i]
            elif op == 4:
                del b[i:]
            elif op == 5 and self.extra is not None:
                self.extra(rng, b)
        return bytes(b)


def arguments(description: str) -> tuple[int, int]:
    """(count, seed) from a fuzz script's command line."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=20261202)
    args = ap.parse_args()
    return int(args.count), int(args.seed)


class Run:
    """One fuzz run of ``count`` inputs: inputs by kind, outcome counts and crashes."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.kinds: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.crashes = 0
        self.start = time.perf_counter()

    def crash(self, what: str, blob: bytes) -> None:
        """Count a crash; the first five are printed with the input and the exception."""
        self.crashes += 1
        if self.crashes <= 5:  # past a few, more tracebacks bury the figures and say nothing new
            print(f"CRASH ({what}) on {blob[:200].hex()}...\n{traceback.format_exc()}")

    def inputs(self, make: Callable[[], tuple[str, bytes]]) -> Iterator[tuple[int, str, bytes]]:
        """(index, kind, message) of each input ``make`` draws, counted, with progress lines."""
        for k in range(self.count):
            kind, blob = make()
            self.kinds[kind] += 1
            yield k, kind, blob
            if (k + 1) % 50_000 == 0:
                print(f"  {k + 1} inputs, {time.perf_counter() - self.start:.0f} s")

    def finish(self, outcome: str) -> int:
        """Print the inputs line (kinds and time) and ``outcome``; the exit status, 1 on a crash."""
        elapsed = time.perf_counter() - self.start
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items()))
        print(f"inputs {self.count} ({kinds}) in {elapsed:.0f} s")
        print(outcome)
        return 1 if self.crashes else 0

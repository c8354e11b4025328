"""Fuzz data batch version 3 and the schema message: every input decodes within the limits or
raises CodecError (MissingSchema included), nothing else.

Inputs: genuine version 3 batches against a genuine schema (grid readings of every value kind,
extras of every tag, long series in a codec body, base slots far from t0) mutated at the byte
level (flips, hostile bytes, inserted varint continuations, deletions, cuts), random bytes after
a genuine head, and genuine schema messages mutated at the byte level. Counted: inputs,
rejected, accepted (and then checked: names follow their rules, timestamps are int64 >= 0, no
more readings than the limits allow), crashes (any other exception, or the backstop "decoder
failed"): expected 0. Usage: python bench/fuzz_v3.py [--count 100000] [--seed N]
"""

from __future__ import annotations

import random
import struct
import sys
from pathlib import Path

# Run as a script, Python puts bench/ first on sys.path, not the repository root where the
# hostile JSON shared with the tests (tests.support) lives.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _mutate import Mutator, Run, arguments
from fuzz_batch import check_decoded

from edge_agent import codecs
from edge_agent.codecs.batch import DEFAULT_LIMITS, decode_batch, encode_batch_v3
from edge_agent.codecs.schema import SeriesDef, StreamSchema, build_schema, parse_schema
from edge_agent.protocol.errors import CodecError
from edge_agent.protocol.readings import Quality, Reading, Value

GW = "gw-fuzz"
TYPES = [("float32", 1.0, 0.0), ("uint16", 0.1, 0.0), ("int16", 0.01, -40.0), ("bool", 1.0, 0.0),
         ("uint32", 1.0, 0.0), ("float64", 1.0, 0.0), ("string", 1.0, 0.0)]
MUTATOR = Mutator(raw=[], values=[], pokes=[0x00, 0x7F, 0x80, 0xFF, 0x03],
                  inserts=[b"\x80", b"\xff" * 9 + b"\x01", b"\x00" * 4, b"\xed\xa0\x80"])


def schema() -> StreamSchema:
    """A schema of 40 series over every register type, intervals 1-10 s."""
    series = []
    for i in range(40):
        kind, scale, offset = TYPES[i % len(TYPES)]
        series.append(SeriesDef(f"dev-{i // 7}", f"p{i}", kind, "u", scale, offset,
                                1000 * (1 + i % 10)))
    return build_schema(GW, 1_765_000_000_000, series)


def _value(rng: random.Random, kind: str) -> Value:
    if kind == "float32":
        f32: float = struct.unpack(">f", struct.pack(">f", rng.uniform(-500, 500)))[0]
        return f32
    if kind == "uint16":
        return rng.randrange(0, 65536) * 0.1
    if kind == "int16":
        return rng.randrange(-32768, 32768) * 0.01 - 40.0
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "uint32":
        return rng.randrange(0, 2**32)
    if kind == "float64":
        return rng.choice([rng.random() * 1e6, float("nan"), -0.0, float("inf")])
    return "".join(rng.choice("abc\u00e9\u4e2d") for _ in range(rng.randrange(8)))


def genuine(rng: random.Random, sc: StreamSchema) -> bytes:
    """A real batch: a few grid readings per series (sometimes long series), some extras."""
    base = sc.t0_ms + rng.randrange(0, 10**7) * 1000
    per = rng.choice([1, 1, 2, 20])
    rs: list[Reading] = []
    for s in rng.sample(sc.series, rng.randrange(1, len(sc.series))):
        for k in range(per):
            rs.append(Reading(s.device, s.point, base + k * s.interval_ms,
                              _value(rng, s.type)))
        if rng.random() < 0.1:
            rs.append(Reading(s.device, s.point, base + 7, None, Quality.COMM_ERROR,
                              rng.choice([None, 4])))
    return encode_batch_v3(sc, sc.epoch, rng.randrange(2**40), rs)


def make_input(rng: random.Random, corpus: list[bytes], sc: StreamSchema) -> tuple[str, bytes]:
    """One fuzz input: (kind, bytes)."""
    r = rng.random()
    if r < 0.8:
        return "batch", MUTATOR.byte_level(rng, rng.choice(corpus), 1)
    if r < 0.9:
        head = rng.choice(corpus)[:rng.randrange(8, 14)]
        return "random tail", head + bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
    return "schema", MUTATOR.byte_level(rng, sc.raw)


def main() -> int:
    """Run the fuzz loop and print the counts; exit 1 on any crash."""
    count, seed = arguments("Fuzz version 3 batches and schema messages; 0 crashes expected.")
    print(f"fuzz_v3: seed {seed}, {count} inputs, codec {codecs.IMPLEMENTATION}")
    rng = random.Random(seed)
    sc = schema()
    corpus = [genuine(rng, sc) for _ in range(60)]
    lookup = {(GW, sc.hash): sc}.get
    run = Run(count)
    for _k, kind, blob in run.inputs(lambda: make_input(rng, corpus, sc)):
        try:
            if kind == "schema":
                parse_schema(blob)
            else:
                batch = decode_batch(blob, gateway=GW, schemas=lambda g, d: lookup((g, d)))
                problem = check_decoded(blob, batch.readings, DEFAULT_LIMITS)
                if problem:
                    run.crash(f"decoded batch breaks a rule: {problem}", blob)
        except CodecError as exc:
            if "decoder failed" in str(exc):
                run.crash(f"backstop: {exc}", blob)
            else:
                run.counts["rejected"] += 1
        except Exception:  # the point of a fuzzer: anything but CodecError is a crash
            run.crash("exception", blob)
        else:
            run.counts["accepted"] += 1
    final = sum(len(decode_batch(b, gateway=GW, schemas=lambda g, d: lookup((g, d))).readings)
                > 0 for b in corpus)
    if final != len(corpus):
        run.crashes += 1
    return run.finish(f"rejected {run.counts['rejected']}, accepted {run.counts['accepted']}, "
                      f"crashes {run.crashes}; genuine batches afterwards: {final} of "
                      f"{len(corpus)} decode")


if __name__ == "__main__":
    sys.exit(main())

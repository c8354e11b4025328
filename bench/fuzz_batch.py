"""Fuzz the data-batch decoder: every input must decode within the limits or raise CodecError.

Inputs are genuine version 2 and version 1 batches (floats, ints, bools, text, bad readings,
run-length and width-0 streams) mutated at the byte level (flips, hostile bytes, inserted
varint continuations, surrogate escapes, brackets, cuts), at the header level (one field of the
JSON header replaced by a hostile value, deleted or given a sibling) and in the codec body, plus
random bytes and amplification attempts (a few bytes declaring up to millions of readings).

Counted: inputs, rejected (CodecError), accepted (decoded, and then checked: names follow their
rules, timestamps are int64 >= 0, no more readings than the limits allow), crashes (another
exception, the decoder's backstop "decoder failed", a decoded batch breaking a rule, or the
pre-scan refusing as malformed a codec body the codec decodes): expected 0. Genuine batches
must still decode at the end. Usage: python bench/fuzz_batch.py [--count 100000] [--seed N]
"""

from __future__ import annotations

import json
import math
import random
import struct
import sys
from pathlib import Path
from typing import Any

import msgpack

# Run as a script, Python puts bench/ first on sys.path, not the repository root where the
# hostile JSON shared with the tests (tests.support) lives.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _mutate import Mutator, Run, arguments

from edge_agent import codecs
from edge_agent.codecs import batch_v2
from edge_agent.codecs.batch import DEFAULT_LIMITS, BatchLimits, decode_batch
from edge_agent.codecs.batch_model import name_problem
from edge_agent.protocol.errors import CodecError
from edge_agent.protocol.readings import Quality, Reading

T0 = 1_764_000_000_000
MUTATOR = Mutator(
    raw=[
        b"[" * 3000 + b"]" * 3000, b'{"a":1,"a":2}', b"NaN", b"Infinity", b"1e999", b"1.5",
        b"1" * 5000, b"9" * 30, b"-1", b"18446744073709551616", b"true", b"null", b'""', b"[]",
        b'"\\ud800"', b'"d/\\udfff"', b'{"\\ud800":1}', b'"\xff"', b'"\xed\xa0\x80"',
        b'"' + b"x" * 300 + b'"', b'"d/' + b"p" * 65 + b'"', b'"d/p\\n"', b'"gw 1"',
        b"[" + b'["d/p",1,1,null,null],' * 3000 + b"0]",
    ],
    values=[0, -1, 2**63, 2**64, 10**30, True, None, "", "x" * 300, [1, [2]], {"a": []}, "d/p",
            1.5, 4],
    pokes=[0, 1, 0x7F, 0x80, 0xFF, 0xED, 0x22],
    inserts=[b"\x80", b"\xff\xff\xff\xff\x0f", b"\\ud800", b"[", b'"', b"\x00",
             b"\xed\xa0\x80"],
)


def genuine_v2(rng: random.Random) -> bytes:
    """A genuine version 2 batch of a random shape."""
    n = rng.choice([1, 2, 5, 40, 130, 300])
    rs: list[Reading] = []
    for d in range(rng.choice([1, 2])):
        for p, kind in enumerate(rng.sample(["f", "i", "b", "s", "bad", "f32", "const"], 3)):
            for i in range(n):
                ts = T0 + i * 1000 + rng.choice([0, 0, 0, 7])
                value: Any
                if kind == "f":
                    value = round(rng.gauss(230, 2), 2)
                elif kind == "i":
                    value = rng.choice([rng.randrange(100), 2**64 - 1, -(2**63)])
                elif kind == "b":
                    value = rng.random() < 0.1
                elif kind == "s":
                    value = rng.choice(["SN-42", "ok", "\x01raw"])
                elif kind == "f32":
                    value = struct.unpack("<f", struct.pack("<f", rng.gauss(0, 2)))[0]
                elif kind == "const":
                    value = 1
                else:
                    rs.append(Reading(f"dev-{d}", f"p{p}", ts, None, Quality.COMM_ERROR))
                    continue
                rs.append(Reading(f"dev-{d}", f"p{p}_{kind}", ts, value))
    return batch_v2.encode_batch_v2("gw-0001", rng.randrange(1 << 40), rng.randrange(1000), rs)


def genuine_v1(rng: random.Random) -> bytes:
    """A genuine version 1 (msgpack) batch."""
    n = rng.choice([1, 3, 20])
    series = [[f"p{p}", [T0] + [1000] * (n - 1),
               [rng.choice([1.5, 2, True, "ok", None, math.nan]) for _ in range(n)],
               [0, 1, None]] for p in range(rng.choice([1, 3]))]
    return b"\x01" + bytes(msgpack.packb({"g": "gw-0001", "e": 1, "s": 2, "r": [["m1", series]]}))


def amplified() -> list[bytes]:
    """Small batches declaring many readings: run-length values, width-0 timestamp blocks."""
    header = json.dumps({"g": "gw", "e": 1, "s": 2, "x": []}).encode()
    out = []
    for n in (100_001, 1_000_000, 2_000_000):  # 2,000,000 in 47 KB: the case seen
        body = codecs.encode_batch({"a/b": (range(n), [0] * n)})
        out.append(b"\x02" + batch_v2._varint(len(header)) + header + body)
    # 10**7 points declared in a few bytes (the codec bounds it by 64 per remaining byte).
    n = 10**7
    count = bytes([0x80 | (n & 0x7F), 0x80 | (n >> 7 & 0x7F), 0x80 | (n >> 14 & 0x7F), n >> 21])
    out.append(b"\x02" + batch_v2._varint(len(header)) + header + b"\x02EC\x01\x03a/b" + count
               + b"\x01\x01\x00" * 40)
    return out


def split_v2(blob: bytes) -> tuple[Any, bytes]:
    """(header document, codec body) of a version 2 batch."""
    size, used = batch_v2._read_varint(blob[1:])
    return json.loads(blob[1 + used:1 + used + size]), blob[1 + used + size:]


def make_input(rng: random.Random, corpus: list[bytes], amps: list[bytes]) -> tuple[str, bytes]:
    """(kind, message) for one fuzz iteration."""
    r = rng.random()
    if r < 0.04:
        return "random", bytes([rng.choice([1, 2, 7])]) + bytes(
            rng.randrange(256) for _ in range(rng.randrange(60)))
    if r < 0.06:
        blob = rng.choice(amps)
        if rng.random() < 0.5:
            return "amplified", blob
        return "amplified", MUTATOR.byte_level(rng, blob, len(blob) - 40)
    blob = rng.choice(corpus)
    if r < 0.45 or blob[0] == 1:
        return "bytes", MUTATOR.byte_level(rng, blob)
    head, body = split_v2(blob)
    if r < 0.75:
        raw = MUTATOR.structural(rng, head)
        return "header", b"\x02" + batch_v2._varint(len(raw)) + raw + body
    raw = json.dumps(head, separators=(",", ":")).encode()
    body = MUTATOR.byte_level(rng, body, 3)
    return "codec", b"\x02" + batch_v2._varint(len(raw)) + raw + body


def check_decoded(blob: bytes, readings: list[Reading], limits: BatchLimits) -> str | None:
    """What a decoded batch breaks, or None."""
    if len(readings) > limits.budget(len(blob)):
        return f"{len(readings)} readings beyond the limits"
    for r in readings:
        if name_problem(r.device, point=False) or name_problem(r.point, point=True):
            return f"bad name {r.device!r}/{r.point!r}"
        if not 0 <= r.ts_ms < 2**63:
            return f"timestamp {r.ts_ms}"
        if isinstance(r.value, str) and len(r.value) > limits.max_text:
            return "text too long"
    return None


def scan_disagrees(blob: bytes) -> bool:
    """Whether the pre-scan calls malformed a codec body that the codec decodes."""
    if blob[:1] != b"\x02":
        return False
    try:
        size, used = batch_v2._read_varint(blob[1:])
    except CodecError:
        return False
    body = blob[1 + used + size:]
    generous = BatchLimits(max_readings=10**9, max_readings_per_byte=64, max_series=10**6)
    try:
        batch_v2._scan_codec(body, 0, 1 << 40, generous)
    except CodecError as exc:
        if str(exc).startswith("data batch v2"):
            return False  # a name or limit refused: policy, not format
        try:
            codecs.decode_batch(body)
        except CodecError:
            return False
        return True
    return False


def main() -> int:
    """Run the fuzz loop and print the counts; exit 1 on any crash."""
    count, seed = arguments("Fuzz the batch decoder; 0 crashes expected.")
    print(f"fuzz_batch: seed {seed}, {count} inputs, codec {codecs.IMPLEMENTATION}, "
          f"limits {DEFAULT_LIMITS}")
    rng = random.Random(seed)
    corpus = [genuine_v2(rng) for _ in range(60)] + [genuine_v1(rng) for _ in range(20)]
    amps = amplified()
    run = Run(count)
    crash, counts = run.crash, run.counts
    for _k, kind, blob in run.inputs(lambda: make_input(rng, corpus, amps)):
        try:
            batch = decode_batch(blob)
        except CodecError as exc:
            if "decoder failed" in str(exc):
                crash(f"backstop: {exc}", blob)
            else:
                counts["rejected"] += 1
                if kind == "amplified":
                    counts["amplified rejected"] += 1
        except Exception:  # the point of a fuzzer: anything but CodecError is a crash
            crash("exception", blob)
        else:
            problem = check_decoded(blob, batch.readings, DEFAULT_LIMITS)
            if problem:
                crash(f"decoded batch breaks a rule: {problem}", blob)
            counts["accepted"] += 1
        if kind == "codec" and scan_disagrees(blob):
            counts["scan disagreements"] += 1
            crash("pre-scan refused a body the codec decodes", blob)
    final = sum(len(decode_batch(b).readings) > 0 for b in corpus)
    if final != len(corpus):
        print(f"only {final} of {len(corpus)} genuine batches decode after the run")
        run.crashes += 1
    return run.finish(
        f"rejected {counts['rejected']} (amplified {counts['amplified rejected']} of "
        f"{run.kinds['amplified']}), accepted {counts['accepted']}, crashes {run.crashes} "
        f"(scan disagreements {counts['scan disagreements']}); genuine batches afterwards: "
        f"{final} of {len(corpus)} decode")


if __name__ == "__main__":
    sys.exit(main())

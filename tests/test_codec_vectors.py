"""Golden vectors: fixed batches and their exact bytes, checked against both implementations.

``codecs/vectors/vectors.json`` is the contract with other-language decoders. Regenerate
it only on a format version change: ``python tests/test_codec_vectors.py --write``.
"""

from __future__ import annotations

import json
import math
import random
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_agent import codecs
from edge_agent.codecs import reference

VECTORS = Path(__file__).resolve().parent.parent / "codecs" / "vectors" / "vectors.json"
IMPLS: list[Any] = [reference] + ([codecs.fast] if codecs.fast is not None else [])
T0 = 1_700_000_000_000


def f32(v: float) -> float:
    """``v`` rounded to binary32, as a float32 register would hold it."""
    return float(struct.unpack("<f", struct.pack("<f", v))[0])


def cases() -> list[tuple[str, str, dict[str, tuple[list[int], list[Any]]]]]:
    """(name, what it exercises, batch) for every vector; seeded, so always the same."""
    rng = random.Random(1234)
    grid = [T0 + 1000 * i for i in range(300)]
    return [
        ("empty-batch", "no series", {}),
        ("empty-series", "a series with no points", {"idle": ([], [])}),
        ("one-point", "one point of each type",
         {"b": ([T0], [True]), "i": ([T0], [-42]), "f": ([T0], [230.1])}),
        ("grid-decimal", "regular 1 s grid, two-decimal floats (ALP e=2, delta timestamps)",
         {"flow": (grid[:100], [round(100 + rng.gauss(0, 0.3), 2) for _ in range(100)])}),
        ("float32-register", "float32 register values widened to float64 (ALP binary32 flag)",
         {"volts": (grid[:100], [f32(round(230 + rng.gauss(0, 0.5), 1)) for _ in range(100)])}),
        ("float32-noise", "float32 registers of noisy readings, some crossing zero, -0.0 and "
         "infinity (binary32 patterns, version 2)",
         {"volts": (grid[:100], [f32(rng.gauss(230, 0.4)) for _ in range(100)]),
          "export": (grid[:40], [f32(rng.gauss(0, 2)) for _ in range(38)] + [-0.0, math.inf])}),
        ("scaled-register", "raw register times a 0.1 scale (ALP multiply flag)",
         {"pm25": (grid[:100], [rng.randrange(50, 200) * 0.1 for _ in range(100)])}),
        ("binary-floats", "true binary fractions (XOR stream)",
         {"raw": (grid[:50], [rng.random() for _ in range(50)])}),
        ("specials", "NaN with payload, infinities, -0.0, subnormals (ALP exceptions)",
         {"s": ([T0 + i for i in range(8)],
                [1.5, math.nan, -0.0, math.inf, -math.inf, 5e-324,
                 struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000ABC))[0], 2.25])}),
        ("bool-runs", "a door contact: long runs (run-length mode)",
         {"door": (grid, [(i // 37) % 2 == 1 for i in range(300)])}),
        ("counter-steps", "a setpoint that changes rarely, and an energy counter",
         {"setpoint": (grid, [20 + (i // 100) for i in range(300)]),
          "kwh": (grid, [123456 + i // 7 for i in range(300)])}),
        ("extreme-ints", "int64 limits: wrapping differences and 64-bit widths",
         {"x": ([T0, T0 + 1, T0 + 2, T0 + 3],
                [-(1 << 63), (1 << 63) - 1, 0, -(1 << 63)])}),
        ("irregular-time", "backwards, duplicate and gapped timestamps",
         {"t": ([T0, T0 - 5000, T0 - 5000, T0 + 86_400_000, -(1 << 63), (1 << 63) - 1],
                [1, 2, 3, 4, 5, 6])}),
        ("outliers", "300 points with spikes (patched bit-packing exceptions, 3 blocks)",
         {"p": ([T0 + 1000 * i + rng.choice([0, 0, 0, 2, -1]) for i in range(300)],
                [rng.randrange(100) if rng.random() > 0.02 else rng.randrange(1 << 40)
                 for _ in range(300)])}),
        ("unicode-names", "UTF-8 series names",
         {"température/°C": ([T0], [21.5]), "": ([T0], [0])}),
    ]


def to_json(batch: dict[str, tuple[list[int], list[Any]]]) -> dict[str, Any]:
    """A JSON form that keeps types and float bit patterns exact."""
    out: dict[str, Any] = {}
    for name, (ts, vals) in batch.items():
        kind = ("bool" if vals and isinstance(vals[0], bool) else
                "float" if vals and isinstance(vals[0], float) else "int")
        enc = ([f"{struct.unpack('<Q', struct.pack('<d', v))[0]:016x}" for v in vals]
               if kind == "float" else [int(v) for v in vals])
        out[name] = {"type": kind, "timestamps": ts, "values": enc}
    return out


def from_json(obj: dict[str, Any]) -> dict[str, tuple[list[int], list[Any]]]:
    """Inverse of ``to_json``."""
    out: dict[str, tuple[list[int], list[Any]]] = {}
    for name, s in obj.items():
        vals: list[Any]
        if s["type"] == "float":
            vals = [struct.unpack("<d", struct.pack("<Q", int(h, 16)))[0] for h in s["values"]]
        elif s["type"] == "bool":
            vals = [bool(v) for v in s["values"]]
        else:
            vals = list(s["values"])
        out[name] = (list(s["timestamps"]), vals)
    return out


def load() -> list[dict[str, Any]]:
    """The stored vectors."""
    return list(json.loads(VECTORS.read_text())["vectors"])


def canon(batch: dict[str, Any]) -> str:
    """Batch in a form where equal means bit-identical values of the same types."""
    return json.dumps(to_json(batch), sort_keys=True)


@pytest.mark.parametrize("impl", IMPLS, ids=[m.__name__.rsplit(".", 1)[-1] for m in IMPLS])
@pytest.mark.parametrize("vector", load(), ids=lambda v: v["name"])
def test_golden_vector(impl: Any, vector: dict[str, Any]) -> None:
    batch = from_json(vector["series"])
    blob = bytes.fromhex(vector["hex"])
    assert impl.encode_batch(batch) == blob
    assert canon(impl.decode_batch(blob)) == canon(batch)


def test_vectors_cover_every_case() -> None:
    assert [v["name"] for v in load()] == [c[0] for c in cases()]
    for v, (_, _, batch) in zip(load(), cases(), strict=True):
        assert canon(from_json(v["series"])) == canon(batch)


def write() -> None:
    """Regenerate the vectors file from the reference encoder."""
    vectors = [{"name": name, "description": what, "series": to_json(batch),
                "hex": reference.encode_batch(batch).hex()} for name, what, batch in cases()]
    doc = {"format": "edge-agent reading batch", "version": reference.VERSION,
           "note": "float values are binary64 bit patterns in hex; hex is the exact batch",
           "vectors": vectors}
    VECTORS.parent.mkdir(exist_ok=True)
    VECTORS.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(vectors)} vectors to {VECTORS}")


if __name__ == "__main__" and "--write" in sys.argv:
    write()

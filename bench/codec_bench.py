"""Reading codec benchmark: size against msgpack, msgpack+zstd, pcodec and Gorilla; speed.

Data: (a) a simulated day of every shipped device profile, polled on a 10 s grid, each value
passed through its register encoding and decoding as the agent would read it; (b) real readings,
if ``--corpus DIR`` (or $EDGE_BENCH_CORPUS) names a folder of CSV files of (ISO time, value)
rows: simulators alone flatter a codec. The corpus figures in README.md used the water-flow
series shipped in the PyPI package river 0.26.1 (``river/datasets/water-flow.csv``,
BSD-3-Clause): 1,268 hourly readings of an industrial pipeline's flow in l/s, two decimals, with
gaps, March to May 2022. Batches hold every series of one device (or the corpus
series) for 100 or 1000 consecutive points. Sizes are bytes per point (timestamp and value
together, series names included for every format). Speeds are millions of points per
second, medians of several runs. Needs the bench extras: pip install -e '.[bench]'.
Usage: python bench/codec_bench.py [--runs 5] [--hours 24] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pcodec
import zstandard
from pcodec import standalone

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gorilla

from edge_agent import codecs
from edge_agent.codecs import reference

POLL_S = 10
T0_S = 1_767_225_600  # 2026-01-01 00:00 UTC
Batch = dict[str, tuple[list[int], list[Any]]]


def simulated_day(hours: int) -> dict[str, Batch]:
    """Device profile -> its series over ``hours`` of 10 s polls, as the agent would read them."""
    from edge_agent.drivers.modbus.decode import decode_point, encode_point
    from edge_agent.drivers.model import DataType
    from edge_agent.drivers.profile import load_profile, shipped_profiles
    from edge_agent.drivers.sim.models import values_at

    out: dict[str, Batch] = {}
    for name in shipped_profiles():
        prof = load_profile(name)
        points = [p for p in prof.points if p.type is not DataType.STRING]
        series: Batch = {p.name: ([], []) for p in points}
        for k in range(hours * 3600 // POLL_S):
            t = T0_S + k * POLL_S
            vals = values_at(name, points, float(t), device=f"{name}-1", seed=1, overrides={})
            for p in points:
                try:
                    v = decode_point(p, encode_point(p, vals[p.name]))
                except ValueError:  # bit fields are read, not written alone: keep the model value
                    v = vals[p.name]
                series[p.name][0].append(t * 1000)
                series[p.name][1].append(v)
        out[name] = {k: (ts, _one_type(v)) for k, (ts, v) in series.items()}
    return out


def _one_type(vals: list[Any]) -> list[Any]:
    """A series as one type: floats if any value is a float (a scaled point may decode 0 as int)."""
    if any(isinstance(v, float) for v in vals):
        return [float(v) for v in vals]
    return vals


def corpus(folder: Path | None) -> dict[str, Batch]:
    """Every CSV in the corpus folder as one series of (ms timestamp, float); none without one."""
    out: dict[str, Batch] = {}
    if folder is None:
        return out
    if not folder.is_dir():
        raise SystemExit(f"codec_bench: --corpus {folder}: not a folder")
    for path in sorted(folder.glob("*.csv")):
        ts: list[int] = []
        vals: list[Any] = []
        with path.open() as f:
            for row in csv.DictReader(f):
                time_key, value_key = list(row)[:2]
                ts.append(int(dt.datetime.fromisoformat(row[time_key]).timestamp() * 1000))
                vals.append(float(row[value_key]))
        out[path.stem] = {path.stem: (ts, vals)}
    return out


def windows(data: dict[str, Batch], size: int) -> list[Batch]:
    """Cut each source into batches of ``size`` consecutive points per series."""
    out = []
    for batch in data.values():
        n = max(len(ts) for ts, _ in batch.values())
        for start in range(0, n, size):
            out.append({k: (ts[start:start + size], v[start:start + size])
                        for k, (ts, v) in batch.items()})
    return out


def _framing(name: str, *chunks: bytes) -> int:
    """Bytes a container needs for a name and length-prefixed chunks (1-byte lengths under 128)."""
    return len(name.encode()) + 1 + sum(len(c) + (1 if len(c) < 128 else 2) for c in chunks)


def _np_values(vals: list[Any]) -> np.ndarray:
    if vals and isinstance(vals[0], float):
        return np.asarray(vals, dtype=np.float64)
    return np.asarray(vals, dtype=np.int64)


def size_pcodec(batch: Batch) -> int:
    """pcodec standalone chunks per series: timestamps as int64, values as float64/int64."""
    cfg = pcodec.ChunkConfig()
    return sum(_framing(k, standalone.simple_compress(np.asarray(ts, dtype=np.int64), cfg),
                        standalone.simple_compress(_np_values(v), cfg))
               for k, (ts, v) in batch.items() if ts)


def size_gorilla(batch: Batch) -> int:
    """Gorilla stream per series."""
    return sum(_framing(k, gorilla.encode(ts, v)) for k, (ts, v) in batch.items())


ZSTD = zstandard.ZstdCompressor(level=3)


def sizes(batch: Batch) -> dict[str, int]:
    """Bytes of one batch in every format."""
    ours = reference.encode_batch(batch)
    mp = msgpack.packb({k: [ts, v] for k, (ts, v) in batch.items()})
    return {"ours": len(ours), "ours+zstd": len(ZSTD.compress(ours)), "msgpack": len(mp),
            "msgpack+zstd": len(ZSTD.compress(mp)), "pcodec": size_pcodec(batch),
            "gorilla": size_gorilla(batch)}


def points(batches: list[Batch]) -> int:
    """Total points in ``batches``."""
    return sum(len(ts) for b in batches for ts, _ in b.values())


def rate(fn: Callable[[Any], object], items: list[Any], npoints: int, runs: int) -> float:
    """Median over ``runs`` of millions of points per second for fn over all items."""
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        for it in items:
            fn(it)
        rates.append(npoints / (time.perf_counter() - start) / 1e6)
    return statistics.median(rates)


def pcodec_roundtrip_fns() -> tuple[Callable[[Batch], object], Callable[[Any], object]]:
    """pcodec encode (from Python lists, as our API takes them) and decode (to Python lists)."""
    cfg = pcodec.ChunkConfig()

    def enc(batch: Batch) -> list[tuple[bytes, bytes]]:
        return [(standalone.simple_compress(np.asarray(ts, dtype=np.int64), cfg),
                 standalone.simple_compress(_np_values(v), cfg)) for ts, v in batch.values()]

    def dec(chunks: list[tuple[bytes, bytes]]) -> list[tuple[list[Any], list[Any]]]:
        return [(standalone.simple_decompress(a).tolist(), standalone.simple_decompress(b).tolist())
                for a, b in chunks]
    return enc, dec


def main() -> int:
    """Print the size and speed tables."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--hours", type=int, default=24)
    env_corpus = os.environ.get("EDGE_BENCH_CORPUS")
    ap.add_argument("--corpus", type=Path, default=Path(env_corpus) if env_corpus else None,
                    help="folder of CSV files of real readings (default: $EDGE_BENCH_CORPUS)")
    args = ap.parse_args()
    print(f"implementation active: {codecs.IMPLEMENTATION}; runs {args.runs}; "
          f"simulated {args.hours} h at {POLL_S} s polls; corpus "
          f"{args.corpus or 'none (--corpus DIR adds real readings)'}")
    sources = {"simulated": simulated_day(args.hours), "corpus": corpus(args.corpus)}
    cols = ["ours", "ours+zstd", "msgpack", "msgpack+zstd", "pcodec", "gorilla"]
    print("\nbytes per point (timestamp + value)")
    print(f"{'data':<26}{'pts/series':>10}" + "".join(f"{c:>13}" for c in cols)
          + f"{'ours/pcodec':>13}{'ours/gorilla':>13}")
    for label, data in [("simulated (all profiles)", sources["simulated"])] + [
            (f"  {k}", {k: v}) for k, v in sources["simulated"].items()] + [
            (f"corpus {k}", {k: v}) for k, v in sources["corpus"].items()]:
        for size in (100, 1000):
            bs = windows(data, size)
            tot = dict.fromkeys(cols, 0)
            for b in bs:
                for c, v in sizes(b).items():
                    tot[c] += v
            n = points(bs)
            print(f"{label:<26}{size:>10}" + "".join(f"{tot[c] / n:>13.3f}" for c in cols)
                  + f"{tot['ours'] / tot['pcodec']:>13.3f}{tot['ours'] / tot['gorilla']:>13.3f}")

    print("\nspeed, million points per second (median of runs), all sources")
    impls: list[tuple[str, Any]] = [("python", reference)]
    if codecs.fast is not None:
        impls.append(("cython", codecs.fast))
    penc, pdec = pcodec_roundtrip_fns()
    allsrc = {**sources["simulated"], **sources["corpus"]}
    for size in (100, 1000):
        bs = windows(allsrc, size)
        n = points(bs)
        blobs = [reference.encode_batch(b) for b in bs]
        row = {}
        for name, mod in impls:
            row[f"{name} encode"] = rate(mod.encode_batch, bs, n, args.runs)
            row[f"{name} decode"] = rate(mod.decode_batch, blobs, n, args.runs)
        chunks = [penc(b) for b in bs]
        row["pcodec encode"] = rate(penc, bs, n, args.runs)
        row["pcodec decode"] = rate(pdec, chunks, n, args.runs)
        print(f"  {size} points/series: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()))
        if "cython encode" in row:
            enc = row["cython encode"] / row["python encode"]
            dec = row["cython decode"] / row["python decode"]
            print(f"    cython/python speed-up: encode {enc:.1f}x, decode {dec:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

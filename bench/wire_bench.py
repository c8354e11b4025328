"""Bytes on the wire per reading: version 3 batches beside version 2, JSON and Sparkplug B.

Four sites, each encoded in every format from the same readings in the same run:

- **demo**: ``configs/demo.toml`` at its defaults, run live (``bench/_wirelive.py``: a private
  mosquitto, ``edge-agent simulate``, ``edge-agent run``) for ``--seconds`` (60) while a
  subscriber keeps every message, as the issue measured; its data payloads are what the agent
  sent (version 3), decoded with the schema it published, and re-encoded in the other formats
  batch by batch. ``--runs`` live runs (3), medians reported.
- **residential**: 30 household meters (20 energy, 10 water) at a 15-minute interval, a day.
- **bench500**: the poll benchmark's 500 devices x 30 points at 1 s, 20 s.
- **long series**: five devices (every profile but the signal cabinet) at 1 s, every reading
  sent, 300 s batches: where the codec body (FORMAT.md 10.5) should win.
  These three batched offline from the simulators by the agent's own filter and batcher
  (``bench/_wiresynth.py``), encoded by the agent's encoder.

Figures are bytes per reading: payload only, and with MQTT's PUBLISH framing and topic
(``_wireformats.mqtt_bytes``). The schema message is sent once per boot epoch (and on every
reconnect): its size is shown beside, and the payload figure with it counted once.
Usage: python bench/wire_bench.py [--runs 3] [--seconds 60] [--skip-live]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _wireformats import json_telemetry, mqtt_bytes, sparkplug_ndata
from _wirelive import demo_site, run_site
from _wiresynth import batches, bench500_site, long_series_site, residential_site

from edge_agent.codecs.batch import decode_batch, encode_batch_v2, encode_batch_v3
from edge_agent.codecs.schema import SchemaBook, StreamSchema
from edge_agent.config.loader import load_config
from edge_agent.config.model import SiteConfig
from edge_agent.protocol.readings import Reading
from edge_agent.runtime.streams import site_schema

FORMATS = ("v3", "v2", "json", "sparkplug")


@dataclass
class Tally:
    """Bytes of one format over a run: payloads, and payloads in their MQTT packets."""

    payload: int = 0
    packets: int = 0


@dataclass
class Run:
    """One site's run: readings, batches and every format's bytes."""

    readings: int
    batches: int
    per_batch: float
    schema_bytes: int
    tally: dict[str, Tally]
    gap_s: float | None = None  # median time between batch arrivals (live runs)

    def per_reading(self, fmt: str, *, packets: bool = False, schema: bool = False) -> float:
        t = self.tally[fmt]
        extra = self.schema_bytes if schema and fmt == "v3" else 0
        return ((t.packets if packets else t.payload) + extra) / max(1, self.readings)


def tally(cfg: SiteConfig, schema: StreamSchema, sealed: Sequence[tuple[int, bytes | None,
                                                                      list[Reading]]]) -> Run:
    """Encode every batch in every format; ``bytes`` is the v3 payload as sent, if it was."""
    gw, prefix = cfg.gateway_id, cfg.mqtt.topic_prefix
    out = {f: Tally() for f in FORMATS}
    topics = {"v3": (f"{prefix}/{gw}/data", 1, True), "v2": (f"{prefix}/{gw}/data", 1, True),
              "json": ("v1/gateway/telemetry", 1, False),
              "sparkplug": (f"spBv1.0/{cfg.site.replace(' ', '-')}/NDATA/{gw}", 0, False)}
    for seq, sent, rs in sealed:
        blobs = {"v3": sent if sent is not None else encode_batch_v3(schema, schema.epoch, seq,
                                                                      rs),
                 "v2": encode_batch_v2(gw, schema.epoch, seq, rs),
                 "json": json_telemetry(rs), "sparkplug": sparkplug_ndata(schema, seq, rs)}
        for fmt, blob in blobs.items():
            topic, qos, v5 = topics[fmt]
            out[fmt].payload += len(blob)
            out[fmt].packets += mqtt_bytes(topic, len(blob), qos=qos, v5=v5)
    sizes = [len(rs) for _, _, rs in sealed]
    return Run(sum(sizes), len(sizes), statistics.median(sizes) if sizes else 0.0,
               mqtt_bytes(f"{prefix}/{gw}/schema", len(schema.raw), qos=1, v5=True), out)


def live_demo(seconds: float) -> Run:
    """One live run of the demo site: what a subscriber got, decoded and re-encoded."""
    with tempfile.TemporaryDirectory(prefix="wire-bench-") as d:
        tmp = Path(d)
        site = demo_site(tmp)
        cfg = load_config(site)
        messages = run_site(site, tmp, seconds)
    book = SchemaBook()
    sealed: list[tuple[int, bytes | None, list[Reading]]] = []
    arrivals: list[float] = []
    schema: StreamSchema | None = None
    for topic, payload, at in messages:
        gw, kind = topic.split("/")[-2:]
        if kind == "schema" and payload:
            schema = book.add(gw, payload)
        elif kind == "data":
            b = decode_batch(payload, gateway=gw, schemas=book.lookup)
            sealed.append((b.seq, payload, b.readings))
            arrivals.append(at)
    if schema is None:
        raise SystemExit("the demo agent published no schema")
    run = tally(cfg, schema, sealed)
    run.schema_bytes = len(schema.raw)
    gaps = [b - a for a, b in pairwise(arrivals)]
    run.gap_s = statistics.median(gaps) if gaps else None
    return run


def offline(cfg: SiteConfig, start_ms: int, duration_s: float) -> Run:
    """A site batched offline (``_wiresynth``), encoded in every format."""
    schema = site_schema(cfg, start_ms)
    sealed = [(seq, None, rs) for seq, rs in enumerate(batches(cfg, start_ms, duration_s))]
    run = tally(cfg, schema, sealed)
    run.schema_bytes = len(schema.raw)
    return run


def report(name: str, runs: list[Run]) -> None:
    """Print one site's figures (medians over ``runs``)."""
    def med(fn: Callable[[Run], float]) -> float:
        return statistics.median(fn(r) for r in runs)

    print(f"\n== {name}: {len(runs)} run(s); readings {med(lambda r: r.readings):.0f}, batches "
          f"{med(lambda r: r.batches):.0f}, median {med(lambda r: r.per_batch):.0f} readings "
          f"per batch" + (f", median {med(lambda r: r.gap_s or 0):.2f} s between batches"
                          if runs[0].gap_s is not None else ""))
    print(f"{'format':<12}{'payload B/reading':>19}{'with MQTT B/reading':>21}")
    for fmt in FORMATS:
        payload = med(lambda r, f=fmt: r.per_reading(f))  # type: ignore[misc]
        packets = med(lambda r, f=fmt: r.per_reading(f, packets=True))  # type: ignore[misc]
        print(f"{fmt:<12}{payload:>19.2f}{packets:>21.2f}")
    print(f"v3 schema message: {med(lambda r: r.schema_bytes):.0f} bytes once per boot epoch "
          f"and connection; v3 with it counted once: "
          f"{med(lambda r: r.per_reading('v3', schema=True)):.2f} B/reading payload")
    ratio = med(lambda r: r.tally["v3"].payload / max(1, r.tally["sparkplug"].payload))
    print(f"v3 / Sparkplug B NDATA payload: {ratio:.3f}; v2 / v3: "
          f"{med(lambda r: r.tally['v2'].payload / max(1, r.tally['v3'].payload)):.1f}x")


def main() -> None:
    """Run the sites and print their figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="live demo runs (median)")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of a live demo run")
    ap.add_argument("--skip-live", action="store_true", help="only the offline sites")
    args = ap.parse_args()
    if not args.skip_live:
        report("demo site, live (configs/demo.toml defaults)",
               [live_demo(args.seconds) for _ in range(args.runs)])
    start = 1_765_000_800_000  # a 15-minute grid mark
    with tempfile.TemporaryDirectory(prefix="wire-bench-") as d:
        report("residential: 30 meters at 15 min, 24 h",
               [offline(residential_site(Path(d)), start, 24 * 3600)])
        report("bench500: 500 devices x 30 points at 1 s, 20 s",
               [offline(bench500_site(Path(d)), start, 20)])
        report("long series: 5 devices at 1 s, every reading, 300 s batches, 30 min",
               [offline(long_series_site(Path(d)), start, 1800)])


if __name__ == "__main__":
    main()

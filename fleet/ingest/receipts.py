"""Receipts from the ingest, and the ends of gateways' earlier epochs.

After a group commits, every (gateway, epoch) it stored or found duplicated is marked; the
receipt loop publishes, at most every ``RECEIPT_S``, one receipt per marked gateway on
``{prefix}/{gateway}/receipt`` (``edge_agent.protocol.receipts``): computed from the database,
so it says only what is committed, and workers sharing the database send the same answer.
A gateway deletes a spooled batch only when a receipt confirms it (docs/spool.md).

A gateway's retained ``state`` message carries the previous boot epoch and its last seq
(``prev_epoch``, ``prev_seq``): kept in ``epoch_ends``, so the gap scan reports a lost tail
of an epoch (seqs after the last one stored) as a gap, which seq gaps alone cannot show.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from edge_agent.fleet.ingest.store import IngestStore
from edge_agent.protocol import receipts, topics
from edge_agent.protocol.jsonsafe import UnsafeJsonError, loads_strict

log = logging.getLogger(__name__)

RECEIPT_S = 0.5          # receipts of one gateway at most this often
MAX_STATE_BYTES = 4096   # a state document is a few hundred bytes

STREAM_ROW = "SELECT batches, max_seq FROM streams WHERE gateway = ? AND epoch = ?"
EPOCH_GAPS = ("SELECT prev + 1, seq - 1 FROM (SELECT seq, LAG(seq, 1, -1) OVER (ORDER BY seq) "
              "AS prev FROM batches WHERE gateway = ? AND epoch = ?) AS t WHERE seq > prev + 1 "
              "ORDER BY seq LIMIT ?")
UPSERT_END = ("INSERT INTO epoch_ends (gateway, epoch, last_seq) VALUES (?, ?, ?) "
              "ON CONFLICT (gateway, epoch) DO UPDATE SET last_seq = CASE WHEN "
              "excluded.last_seq > epoch_ends.last_seq THEN excluded.last_seq "
              "ELSE epoch_ends.last_seq END")


def epoch_entry(store: IngestStore, gateway: str, epoch: int) -> receipts.EpochReceipt | None:
    """What the database holds of one epoch of a gateway, as a receipt entry."""
    rows = store.query(STREAM_ROW, (gateway, epoch))
    if not rows:
        return None
    batches, max_seq = int(rows[0][0]), int(rows[0][1])
    if batches == max_seq + 1:  # the common case, from the counters alone: no gap
        return receipts.EpochReceipt(epoch, max_seq, max_seq, max_seq)
    gaps = [(int(a), int(b)) for a, b in
            store.query(EPOCH_GAPS, (gateway, epoch, receipts.MAX_GAPS + 1))]
    return receipts.epoch_receipt(epoch, max_seq, gaps)


def build(store: IngestStore, gateway: str, epochs: list[int]) -> bytes | None:
    """The receipt of ``gateway`` for ``epochs`` (at most MAX_EPOCHS), or None if none is held."""
    entries = [e for e in (epoch_entry(store, gateway, ep)
                           for ep in sorted(epochs)[-receipts.MAX_EPOCHS:]) if e is not None]
    if not entries:
        return None
    doc = receipts.to_doc(receipts.Receipt(tuple(entries)))
    return json.dumps(doc, separators=(",", ":")).encode()


class Marks:
    """The (gateway, epoch) pairs touched since their last receipt."""

    def __init__(self) -> None:
        self.pending: dict[str, set[int]] = {}

    def mark(self, gateway: str, epoch: int) -> None:
        """A batch of ``gateway``'s ``epoch`` was stored (or was already)."""
        self.pending.setdefault(gateway, set()).add(epoch)

    def take(self) -> dict[str, set[int]]:
        """Everything marked, cleared."""
        taken, self.pending = self.pending, {}
        return taken

    def put_back(self, taken: dict[str, set[int]]) -> None:
        """Receipts that could not be sent: marked again."""
        for gateway, epochs in taken.items():
            self.pending.setdefault(gateway, set()).update(epochs)


def parse_epoch_end(payload: bytes) -> tuple[int, int] | None:
    """(prev_epoch, prev_seq) from a state document, None if it names none; ValueError if the
    document is malformed (bounded parse)."""
    try:
        doc: Any = loads_strict(payload, max_bytes=MAX_STATE_BYTES, max_depth=2, max_items=32,
                                max_str=256)
    except UnsafeJsonError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(doc, dict):
        raise ValueError("state is not a JSON object")
    if "prev_epoch" not in doc:
        return None
    epoch, seq = doc.get("prev_epoch"), doc.get("prev_seq")
    if type(epoch) is not int or type(seq) is not int or epoch < 0 or seq < -1:
        raise ValueError(f"prev_epoch {epoch!r} / prev_seq {seq!r} are not an epoch and a seq")
    return epoch, seq


def record_epoch_end(store: IngestStore, topic: str, payload: bytes | None,
                     prefix: str) -> None:
    """Keep the end of the previous epoch a gateway's state message names, if it names one;
    ValueError if the message is malformed."""
    parsed = topics.parse_topic(topic, prefix)
    if parsed is None or parsed.kind != topics.STATE or not payload:
        return  # a cleared retained state: nothing to learn
    end = parse_epoch_end(payload)
    if end is not None and end[1] >= 0:  # -1: that epoch built no batch
        store.execute(UPSERT_END, (parsed.gateway, *end))


async def publish_marked(client: Any, store: IngestStore, prefix: str, marks: Marks) -> int:
    """Publish one receipt per marked gateway (QoS 1); how many. On a broker error the marks
    are kept for the next round and the error is raised."""
    taken = marks.take()
    sent = 0
    try:
        while taken:
            gateway, epochs = next(iter(taken.items()))
            doc = build(store, gateway, list(epochs))
            if doc is not None:
                await client.publish(topics.receipt_topic(prefix, gateway), doc, qos=1)
                sent += 1
            del taken[gateway]
    finally:
        marks.put_back(taken)
    return sent

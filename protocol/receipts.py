"""End-to-end receipts: what the ingest has durably stored of a gateway, per boot epoch.

The ingest publishes a receipt on ``{prefix}/{gateway}/receipt`` (QoS 1, not retained) after it
committed batches of that gateway; the gateway deletes from its spool only the batches a
receipt confirms, and sends again the ones it reports missing (docs/spool.md, "Receipts").
A receipt is cumulative (computed from the database, never from one message), so a lost or
late one is made good by the next, and several ingest workers sharing the database agree.

    {"v": 1, "epochs": [{"epoch": E, "upto": U, "max": M, "to": T, "gaps": [[a, b], ...]}]}

- ``upto``: seqs 0..U of epoch E are all stored (-1: seq 0 is not);
- ``max``: the highest seq stored;
- ``gaps``: missing seq ranges (inclusive) between U and M, oldest first, at most MAX_GAPS;
- ``to``: the gaps listed are complete up to seq T (T = M unless the list was cut short), so
  a seq <= T outside every gap is stored; nothing above T is confirmed.

Pure: this module builds, parses (total: bounded, every field checked, a refusal names what
was wrong) and answers "is this (epoch, seq) confirmed" for the gateway's spool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge_agent.protocol.jsonsafe import INT64_MAX, UnsafeJsonError, loads_strict

VERSION = 1
MAX_EPOCHS = 16        # epochs one receipt may name
MAX_GAPS = 64          # gap ranges per epoch
MAX_RECEIPT_BYTES = 32 * 1024


class ReceiptError(ValueError):
    """A receipt that is not well formed: the reason names the field and value."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class EpochReceipt:
    """What the ingest holds of one epoch."""

    epoch: int
    upto: int
    max: int
    to: int
    gaps: tuple[tuple[int, int], ...] = ()

    def confirms(self, seq: int) -> bool:
        """True when ``seq`` of this epoch is stored at the ingest, by this receipt."""
        if seq <= self.upto:
            return True
        if seq > self.to:
            return False
        return not any(a <= seq <= b for a, b in self.gaps)

    def missing(self, seq: int) -> bool:
        """True when this receipt names ``seq`` as a gap (stored seqs above it exist)."""
        return any(a <= seq <= b for a, b in self.gaps)


@dataclass(frozen=True, slots=True)
class Receipt:
    """A parsed receipt: one entry per epoch."""

    epochs: tuple[EpochReceipt, ...]

    def entry(self, epoch: int) -> EpochReceipt | None:
        """The entry for ``epoch``, if the receipt names it."""
        for e in self.epochs:
            if e.epoch == epoch:
                return e
        return None


def epoch_receipt(epoch: int, seqs_max: int, gaps: list[tuple[int, int]]) -> EpochReceipt:
    """The receipt entry from the highest stored seq and the missing ranges below it, in order
    (what the ingest's gap query returns); cut to MAX_GAPS, so ``to`` stops before the first
    gap left out."""
    gaps = sorted(gaps)
    kept = gaps[:MAX_GAPS]
    to = seqs_max if len(gaps) <= MAX_GAPS else gaps[MAX_GAPS][0] - 1
    upto = kept[0][0] - 1 if kept else seqs_max
    return EpochReceipt(epoch, upto, seqs_max, to, tuple(kept))


def to_doc(receipt: Receipt) -> dict[str, Any]:
    """The JSON document of a receipt."""
    return {"v": VERSION, "epochs": [
        {"epoch": e.epoch, "upto": e.upto, "max": e.max, "to": e.to,
         "gaps": [[a, b] for a, b in e.gaps]} for e in receipt.epochs]}


def _int(doc: dict[str, Any], key: str, where: str, lo: int) -> int:
    v = doc.get(key)
    if type(v) is not int or not lo <= v <= INT64_MAX:
        raise ReceiptError("field", f"{where}.{key} is {v!r}, expected an integer >= {lo}")
    return v


def parse(payload: bytes) -> Receipt:
    """A receipt from untrusted bytes; ReceiptError naming what is wrong."""
    try:
        doc = loads_strict(payload, max_bytes=MAX_RECEIPT_BYTES, max_depth=5,
                           max_items=max(MAX_GAPS, MAX_EPOCHS, 8), max_str=32)
    except UnsafeJsonError as exc:
        raise ReceiptError("json", str(exc)) from None
    if not isinstance(doc, dict):
        raise ReceiptError("shape", f"expected an object, got {type(doc).__name__}")
    if doc.get("v") != VERSION:
        raise ReceiptError("version", f"v is {doc.get('v')!r}, expected {VERSION}")
    unknown = set(doc) - {"v", "epochs"}
    if unknown:
        raise ReceiptError("shape", f"unknown keys {sorted(unknown)}")
    raw = doc.get("epochs")
    if not isinstance(raw, list) or not raw or len(raw) > MAX_EPOCHS:
        raise ReceiptError("shape", f"epochs must be a list of 1..{MAX_EPOCHS} entries")
    seen: set[int] = set()
    out: list[EpochReceipt] = []
    for i, e in enumerate(raw):
        where = f"epochs[{i}]"
        if not isinstance(e, dict) or set(e) - {"epoch", "upto", "max", "to", "gaps"}:
            raise ReceiptError("shape", f"{where} is not an epoch entry")
        epoch = _int(e, "epoch", where, 0)
        upto, top, to = (_int(e, k, where, -1) for k in ("upto", "max", "to"))
        if epoch in seen:
            raise ReceiptError("shape", f"{where}: epoch {epoch} named twice")
        seen.add(epoch)
        if not upto <= to <= top:
            raise ReceiptError("range", f"{where}: expected upto <= to <= max, got "
                               f"{upto}, {to}, {top}")
        gaps_raw = e.get("gaps", [])
        if not isinstance(gaps_raw, list) or len(gaps_raw) > MAX_GAPS:
            raise ReceiptError("shape", f"{where}.gaps must be a list of at most {MAX_GAPS}")
        gaps: list[tuple[int, int]] = []
        floor = upto  # gaps lie above upto, in order, not touching each other, below max
        for j, g in enumerate(gaps_raw):
            if (not isinstance(g, list) or len(g) != 2
                    or not all(type(x) is int for x in g)):
                raise ReceiptError("shape", f"{where}.gaps[{j}] is not [from, to]")
            a, b = g
            if not floor < a <= b < top:
                raise ReceiptError("range", f"{where}.gaps[{j}] = [{a}, {b}] is not above "
                                   f"{floor} and below max {top}")
            gaps.append((a, b))
            floor = b + 1
        if gaps and gaps[0][0] != upto + 1:
            raise ReceiptError("range", f"{where}: the first gap must start at upto + 1")
        if not gaps and upto != to:
            raise ReceiptError("range", f"{where}: no gaps, so upto must equal to")
        out.append(EpochReceipt(epoch, upto, top, to, tuple(gaps)))
    return Receipt(tuple(out))

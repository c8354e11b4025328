"""End to end on the gateway: the ingest's receipts in, the life's counters kept for the next.

Wired by the agent with one line (``EndToEnd(agent)``):

- **Receipts** on ``{prefix}/{gateway}/receipt`` are an intake from outside: read under the
  limits of ``protocol.receipts`` (bounded, every field checked); a malformed one is a counted,
  logged rejection and changes nothing. A good one goes to the spool, which deletes only
  batches the broker acknowledged and the receipt confirms (``spool_sent`` bounds the rest).
- **The last life**: the spool keeps, with every commit, this life's epoch and last seq and its
  missed slots and rejections. The next boot reads them before overwriting: its retained state
  says ``prev_epoch``/``prev_seq`` (so the ingest knows that epoch's end and reports a lost tail
  as a gap) and its health carries ``previous_life``, also when the last life was killed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import aiomqtt

from edge_agent.config.model import SiteConfig
from edge_agent.protocol import receipts, topics
from edge_agent.protocol.clock import Clock
from edge_agent.protocol.rejections import Rejections
from edge_agent.runtime.buses import AnyScheduler
from edge_agent.runtime.spool import Spool
from edge_agent.runtime.store import BatchStore
from edge_agent.runtime.uplink import Uplink

log = logging.getLogger(__name__)


class Agent(Protocol):
    """What this needs of ``runtime.agent.Agent`` (which imports this module)."""

    cfg: SiteConfig
    clock: Clock
    store: BatchStore
    uplink: Uplink
    schedulers: dict[str, AnyScheduler]
    epoch: int
    seq: int
    health_sections: dict[str, Callable[[], object]]


class EndToEnd:
    """Receipts and the counters that survive a life, for one agent."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.rejections = Rejections("receipt", log, clock=agent.clock)
        self.receipts = 0
        self.spool = agent.store if isinstance(agent.store, Spool) else None
        self.previous: dict[str, int] | None = None
        if self.spool is None:
            return
        cfg = agent.cfg
        prev = self.spool.confirms.previous_life
        if prev["life_epoch"]:
            self.previous = {"epoch": prev["life_epoch"], "last_seq": prev["life_seq"],
                             **{f"{k}_total": v for k, v in
                                self.spool.confirms.life_counters.items()}}
            agent.uplink.state_extra = {"prev_epoch": prev["life_epoch"],
                                        "prev_seq": prev["life_seq"]}
        agent.uplink.subscribe(topics.receipt_topic(cfg.mqtt.topic_prefix, cfg.gateway_id),
                               self.on_receipt)
        self.spool.life_source = self.life
        agent.health_sections["previous_life"] = lambda: self.previous
        agent.health_sections["receipt_intake"] = self.health

    def life(self) -> tuple[int, int, int, int]:
        """(epoch, last seq built, missed slots, rejections) of this life so far."""
        a = self.agent
        missed = sum(d.missed_slots for s in a.schedulers.values() for d in s.devices.values())
        refused = self.rejections.total + a.uplink.counters.schema_requests_refused
        return a.epoch, a.seq - 1, missed, refused

    async def on_receipt(self, message: aiomqtt.Message) -> None:
        """A receipt from the ingest: checked, then applied to the spool."""
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            self.rejections.reject("shape", f"payload is {type(payload).__name__}, not bytes")
            return
        try:
            receipt = receipts.parse(bytes(payload))
        except receipts.ReceiptError as exc:
            self.rejections.reject(exc.reason, f"{message.topic.value}: {exc}")
            return
        if self.spool is not None:
            self.receipts += 1
            await self.spool.receipt(receipt)

    def health(self) -> dict[str, object]:
        """Receipts received and refused (by reason)."""
        return {"received": self.receipts, "rejected": self.rejections.total,
                "rejected_by_reason": dict(self.rejections.counts)}

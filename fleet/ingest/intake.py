"""The ingest's intake, pure: which data messages are batches it may store, and how many.

A message is refused before the database sees it when its topic is not a gateway's data or
schema topic, its payload is over the size cap, it does not decode within the batch (or
schema) limits, it names another gateway than its topic, it holds values the database cannot
store, or its gateway is over its readings budget. A version 3 batch whose schema is not known
is not refused: it is marked ``missing`` (reason ``missing_schema``) to be parked until the
schema comes. ``consumer`` is the MQTT shell around this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_agent.codecs.batch import BatchLimits, MissingSchema, SchemaLookup, decode_batch
from edge_agent.codecs.schema import SchemaBook
from edge_agent.fleet.ingest.store import DEFERRED_CAP_BYTES, Received, storable_problem
from edge_agent.fleet.intake import quote
from edge_agent.protocol import topics
from edge_agent.protocol.errors import CodecError


@dataclass(frozen=True, slots=True)
class IngestLimits:
    """What the ingest takes from one message and from one gateway, checked before the work.

    ``max_payload`` is checked before decoding; ``max_readings`` (and the codec's other
    ``BatchLimits``) while decoding, before a reading is built: a 47 KB batch of two million
    run-length readings is refused, not expanded. The agent sends batches of at most 5000
    readings by default (``[batch] max_readings``), a few hundred KB at most. Per gateway,
    readings are a token bucket of ``gateway_readings_per_s`` refilling up to
    ``gateway_burst_readings`` (0 per second: no bound). A good batch over it is deferred: kept
    whole (compressed, as it came) and stored when the budget allows, so a spool replaying a
    long backlog loses nothing while a flooding gateway costs the database only its budget.
    Past ``gateway_deferred_bytes`` waiting, a gateway's next batches are set aside
    (``rejected``, reason ``rate``).
    """

    max_payload: int = 1024 * 1024
    max_readings: int = 50_000
    # A schema message describes every series of a gateway once (about 55 bytes a series:
    # 830 KB for 15,000), so it has its own cap, the schema reader's.
    max_schema_bytes: int = 8 * 1024 * 1024
    gateway_readings_per_s: float = 100_000.0
    gateway_burst_readings: int = 1_000_000
    gateway_deferred_bytes: int = DEFERRED_CAP_BYTES

    def batch_limits(self) -> BatchLimits:
        """The decoder's limits for these."""
        return BatchLimits(max_bytes=self.max_payload, max_readings=self.max_readings,
                           max_header_bytes=self.max_payload)


DEFAULT_INGEST_LIMITS = IngestLimits()
_DEFAULT_BATCH_LIMITS = DEFAULT_INGEST_LIMITS.batch_limits()


@dataclass
class IngestCounters:
    """What this ingest process did."""

    messages: int = 0     # received
    batches: int = 0      # stored (new)
    readings: int = 0     # in the batches stored
    duplicates: int = 0
    rejected: int = 0     # set aside in the rejected table (by reason in rejected_by_reason)
    deferred: int = 0     # kept whole for later: their gateway was over its budget
    released: int = 0     # deferred batches taken up again once the budget allowed
    schemas: int = 0      # schema messages kept
    parked: int = 0       # v3 batches parked for want of their schema (recoverable)
    unparked: int = 0     # parked batches decoded once their schema came
    schema_requests: int = 0  # schema requests published to gateways
    receipts: int = 0         # receipts published to gateways (protocol.receipts)
    commits: int = 0
    connects: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


def _none(_gateway: str, _digest: bytes) -> None:
    return None


def decode_message(topic: str, payload: bytes, prefix: str,
                   limits: IngestLimits = DEFAULT_INGEST_LIMITS, *,
                   schemas: SchemaLookup = _none, book: SchemaBook | None = None) -> Received:
    """Decode one data or schema message within ``limits``; a bad one is kept as a rejection,
    never raised. A schema message is read into ``book`` (required for schema topics).

    The rejection's reason is ``topic``, ``too_large``, ``codec``, ``schema``,
    ``gateway_mismatch`` or ``unstorable`` (a value the database could not hold), and its
    error names the field; a batch whose schema is unknown has reason ``missing_schema`` and
    ``missing`` set (to be parked, not rejected).
    """
    parsed = topics.parse_topic(topic, prefix)
    gateway = parsed.gateway if parsed is not None else None
    kinds = (topics.DATA, topics.SCHEMA) if book is not None else (topics.DATA,)
    if parsed is None or parsed.kind not in kinds:
        return Received(topic, payload, None, f"topic {quote(topic)} is not a gateway's data "
                        "or schema topic (or its gateway id breaks the id rule)", "topic",
                        gateway)
    cap = limits.max_schema_bytes if parsed.kind == topics.SCHEMA else limits.max_payload
    if len(payload) > cap:  # before the decoder looks at a byte
        return Received(topic, payload, None, f"payload of {len(payload)} bytes exceeds the "
                        f"limit of {cap}", "too_large", gateway)
    if parsed.kind == topics.SCHEMA and book is not None:
        try:
            schema = book.add(parsed.gateway, payload)
        except CodecError as exc:
            return Received(topic, payload, None, str(exc), "schema", gateway)
        return Received(topic, payload, None, reason="", gateway=gateway, schema=schema)
    batch_limits = _DEFAULT_BATCH_LIMITS if limits is DEFAULT_INGEST_LIMITS \
        else limits.batch_limits()
    try:
        batch = decode_batch(payload, batch_limits, gateway=parsed.gateway, schemas=schemas)
    except MissingSchema as exc:
        return Received(topic, payload, None, str(exc), "missing_schema", gateway,
                        missing=exc.schema_hash)
    except CodecError as exc:
        return Received(topic, payload, None, str(exc), "codec", gateway)
    if batch.gateway != gateway:
        # a gateway may only publish its own data (its ACL should say so too)
        return Received(topic, payload, None,
                        f"batch of gateway {batch.gateway!r} on topic {quote(topic)}",
                        "gateway_mismatch", gateway)
    problem = storable_problem(batch)
    if problem is not None:
        return Received(topic, payload, None, f"batch epoch {batch.epoch} seq {batch.seq}: "
                        f"{problem}", "unstorable", gateway)
    return Received(topic, payload, batch, reason="", gateway=gateway)


class ReadingBudget:
    """Readings each gateway may still send: a token bucket per gateway (the caller's clock)."""

    MAX_TRACKED = 10_000  # buckets kept before the full (idle) ones are forgotten

    def __init__(self, per_s: float, burst: int) -> None:
        self.per_s = per_s
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # gateway -> (tokens, at)

    def take(self, gateway: str, readings: int, now: float) -> bool:
        """Spend ``readings`` of ``gateway``'s budget at ``now``; False (nothing spent) if over."""
        if self.per_s <= 0:
            return True
        tokens, at = self._buckets.get(gateway, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.per_s)
        ok = readings <= tokens
        self._buckets[gateway] = (tokens - readings if ok else tokens, now)
        if len(self._buckets) > self.MAX_TRACKED:
            # A full bucket is the same as none: forgetting those bounds the memory.
            self._buckets = {g: (t, a) for g, (t, a) in self._buckets.items()
                             if t + (now - a) * self.per_s < self.burst}
        return ok

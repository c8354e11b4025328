"""Data batch framing: one version byte, then a body in that version's format (pure, no I/O).

Every version ever published is decoded (``DECODERS``, and version 3 given its schema); the
agent encodes the newest (``encode_batch_v3``). Formats: ``batch_v1`` (msgpack, no longer
written), ``batch_v2`` (the compact codec of FORMAT.md inside a small JSON header, no longer
written by the agent) and ``batch_v3`` (series by index into a schema message, ``schema``;
timestamps as grid slots). A version 3 batch names neither its gateway (the topic does) nor
its series (its schema does): ``decode_batch`` takes both, and raises ``MissingSchema`` (a
CodecError) when the schema is not known, so the caller can park the batch and ask for it.

Decoding is total and bounded: any input ends in a DataBatch or a CodecError, never another
exception, and ``BatchLimits`` (size, readings, readings per byte, series, header, names, text)
are checked before the work they bound, so a small hostile batch cannot expand into a large
one in memory (FORMAT.md, "Limits").
"""

from __future__ import annotations

from collections.abc import Callable

from edge_agent.codecs.batch_model import DEFAULT_LIMITS, BatchLimits, DataBatch
from edge_agent.codecs.batch_v1 import VERSION_MSGPACK, decode_v1
from edge_agent.codecs.batch_v2 import VERSION_CODEC, decode_v2, encode_batch_v2
from edge_agent.codecs.batch_v3 import (
    VERSION_SCHEMA,
    MissingSchema,
    SchemaLookup,
    decode_v3,
    encode_batch_v3,
)
from edge_agent.protocol.errors import CodecError

__all__ = ["DECODERS", "DEFAULT_LIMITS", "VERSION_SCHEMA", "BatchLimits", "DataBatch",
           "MissingSchema", "SchemaLookup", "decode_batch", "encode_batch_v2",
           "encode_batch_v3"]

# A decoder takes the body after the version byte and the limits (which count whole batches,
# version byte included).
Decoder = Callable[[bytes, BatchLimits], DataBatch]

# Version byte -> decoder of the body after it. Each raises CodecError for malformed input.
# Version 3 is decoded beside the table: it needs the gateway (from the topic) and its schema.
DECODERS: dict[int, Decoder] = {VERSION_MSGPACK: decode_v1, VERSION_CODEC: decode_v2}


def _no_schemas(_gateway: str, _digest: bytes) -> None:
    return None


def decode_batch(blob: bytes, limits: BatchLimits = DEFAULT_LIMITS, *,
                 gateway: str | None = None, schemas: SchemaLookup = _no_schemas) -> DataBatch:
    """Decode a data batch of any known version within ``limits``; CodecError (only) if bad.

    A version 3 batch needs ``gateway`` (its topic's) and finds its schema through
    ``schemas``; MissingSchema (a CodecError) when that returns None.
    """
    if not isinstance(limits, BatchLimits):
        raise TypeError(f"limits must be BatchLimits, got {type(limits).__name__}")
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise CodecError(f"data batch must be bytes, got {type(blob).__name__}")
    size = memoryview(blob).nbytes
    if size > limits.max_bytes:
        raise CodecError(f"data batch of {size} bytes exceeds the limit of {limits.max_bytes}")
    data = bytes(blob)
    if not data:
        raise CodecError("data batch is empty: expected a version byte and a body")
    fn = DECODERS.get(data[0])
    if fn is None and data[0] != VERSION_SCHEMA:
        raise CodecError(f"data batch has unknown version byte {data[0]}: "
                         f"this build decodes versions {sorted({*DECODERS, VERSION_SCHEMA})}")
    try:
        if fn is None:
            if gateway is None:
                raise CodecError("data batch v3 names no gateway: decode it with the gateway "
                                 "of its topic")
            return decode_v3(data[1:], limits, gateway, schemas)
        return fn(data[1:], limits)
    except CodecError:
        raise
    except Exception as exc:  # a decoder's bug must still surface as a CodecError
        raise CodecError(f"data batch v{data[0]}: decoder failed: "
                         f"{type(exc).__name__}: {exc}") from exc

"""Data batch framing: one version byte, then a body in that version's format (pure, no I/O).

Every version ever published is decoded (``DECODERS``); the agent encodes the newest
(``encode_batch``). Formats: ``batch_v1`` (msgpack, no longer written) and ``batch_v2`` (the
compact codec of FORMAT.md inside a small JSON header).

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
from edge_agent.protocol.errors import CodecError

__all__ = ["DECODERS", "DEFAULT_LIMITS", "BatchLimits", "DataBatch", "decode_batch",
           "encode_batch"]

# A decoder takes the body after the version byte and the limits (which count whole batches,
# version byte included).
Decoder = Callable[[bytes, BatchLimits], DataBatch]

# Version byte -> decoder of the body after it. Each raises CodecError for malformed input.
DECODERS: dict[int, Decoder] = {VERSION_MSGPACK: decode_v1, VERSION_CODEC: decode_v2}

encode_batch = encode_batch_v2


def decode_batch(blob: bytes, limits: BatchLimits = DEFAULT_LIMITS) -> DataBatch:
    """Decode a data batch of any known version within ``limits``; CodecError (only) if bad."""
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
    if fn is None:
        raise CodecError(f"data batch has unknown version byte {data[0]}: "
                         f"this build decodes versions {sorted(DECODERS)}")
    try:
        return fn(data[1:], limits)
    except CodecError:
        raise
    except Exception as exc:  # a decoder's bug must still surface as a CodecError
        raise CodecError(f"data batch v{data[0]}: decoder failed: "
                         f"{type(exc).__name__}: {exc}") from exc

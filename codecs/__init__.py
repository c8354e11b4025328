"""Reading-batch codec: compact time-series batches for the uplink (format in FORMAT.md).

``encode_batch`` and ``decode_batch`` use the Cython fast path when it is built and the
pure-Python reference otherwise (or when ``EDGE_AGENT_PURE_PYTHON=1``); both produce and
accept identical bytes. ``IMPLEMENTATION`` says which is active. ``batch`` frames a data
batch (a version byte, then that version's body) around the codec.

May import ``edge_agent.protocol`` (errors, readings, safe JSON) and ``edge_agent.fastpath``,
and nothing else of the project, with only the standard library at run time (msgpack only
for old version 1 batches): a cloud consumer decodes batches without the gateway's runtime.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType

from edge_agent.codecs import reference
from edge_agent.protocol.errors import CodecError

__all__ = ["IMPLEMENTATION", "CodecError", "decode_batch", "encode_batch", "fast"]

log = logging.getLogger(__name__)

Batch = Mapping[str, tuple[Sequence[int], Sequence[bool | int | float]]]
Decoded = dict[str, tuple[list[int], list[bool | int | float]]]


def _load_fast() -> tuple[ModuleType | None, str]:
    """The Cython module, or None with the reason it is not used."""
    if os.environ.get("EDGE_AGENT_PURE_PYTHON") == "1":
        return None, "EDGE_AGENT_PURE_PYTHON=1"
    try:
        from edge_agent.fastpath import _codec
    except ImportError as exc:
        return None, f"fast path not built ({exc})"
    return _codec, "built"


fast, _why = _load_fast()
IMPLEMENTATION = "cython" if fast is not None else "python"
log.info("reading codec: %s implementation (%s)", IMPLEMENTATION, _why)

_encode: Callable[[Batch], bytes] = fast.encode_batch if fast else reference.encode_batch
_decode: Callable[[bytes], Decoded] = fast.decode_batch if fast else reference.decode_batch


def encode_batch(series: Batch) -> bytes:
    """Encode {name: (timestamps_ms, values)} into one batch (version byte first)."""
    return _encode(series)


def decode_batch(blob: bytes) -> Decoded:
    """Decode a batch into {name: (timestamps_ms, values)}; CodecError on invalid input."""
    return _decode(blob)

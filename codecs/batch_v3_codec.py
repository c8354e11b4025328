"""The long-series body of data batch version 3 (codecs/FORMAT.md 10.5): the codec, unchanged.

When a batch holds long series (a long window, a backlog), the codec of FORMAT.md sections 1-6
(frame of reference, bit-packing, ALP, run lengths: the Cython fast path) packs them tighter
than the bit stream's per-value differences. The body is then a codec batch whose series are
named by their schema index in decimal and whose timestamps are grid slots after the batch's
base; the encoder sends whichever body is shorter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edge_agent import codecs
from edge_agent.codecs.batch_model import BatchLimits
from edge_agent.codecs.batch_v2 import _scan_codec
from edge_agent.codecs.schema import StreamSchema
from edge_agent.codecs.wire import I64_MAX
from edge_agent.protocol.errors import CodecError
from edge_agent.protocol.jsonsafe import show
from edge_agent.protocol.readings import Reading

# Worth trying only when series are long: below this many readings per series on average,
# the bit stream is shorter (its per-series cost is a few bits, the codec's several bytes).
MIN_MEAN_POINTS = 8


def encode_codec_body(present: Sequence[tuple[int, Sequence[int], Sequence[Any]]]) -> bytes:
    """A codec batch of (index, slots after base, values) series, in index order."""
    return codecs.encode_batch({str(i): (slots, values) for i, slots, values in present})


def _index_checker(nseries: int) -> Any:
    def check(name: str) -> None:
        if not (name.isascii() and name.isdigit() and len(name) <= 6
                and (name == "0" or name[0] != "0") and int(name) < nseries):
            raise CodecError(f"data batch v3: codec series name {show(name)} is not a series "
                             f"index below {nseries} in decimal")
    return check


def decode_codec_body(data: bytes, schema: StreamSchema, base: int, limits: BatchLimits,
                      extras: int, nbytes: int) -> list[Reading]:
    """The grid readings of a codec body, checked against the limits before decoding."""
    check = _index_checker(len(schema.series))
    declared = _scan_codec(data, extras, nbytes, limits, check, "data batch v3")
    series = codecs.decode_batch(data)
    out: list[Reading] = []
    for name, (slots, values) in series.items():
        check(name)  # checked by the scan: cannot fail here
        s = schema.series[int(name)]
        for slot, v in zip(slots, values, strict=True):
            ts = schema.t0_ms + (base + slot) * schema.tick_ms
            if slot < 0 or ts > I64_MAX:
                raise CodecError(f"data batch v3: codec series {name}: slot {slot} is not a "
                                 "grid slot at or after the base within int64 milliseconds")
            out.append(Reading(s.device, s.point, ts, v))
    if len(out) != declared:
        raise CodecError("data batch v3: the codec decoded another number of readings than "
                         "its series declare (decoder fault)")
    return out

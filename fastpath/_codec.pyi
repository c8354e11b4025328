"""Type stub of the Cython reading-batch codec (byte-identical to edge_agent.codecs.reference)."""

from collections.abc import Mapping, Sequence

def encode_batch(
    series: Mapping[str, tuple[Sequence[int], Sequence[bool | int | float]]],
) -> bytes:
    """Encode {name: (timestamps_ms, values)} into one batch (version byte first)."""

def decode_batch(blob: bytes) -> dict[str, tuple[list[int], list[bool | int | float]]]:
    """Decode a batch; CodecError on anything that is not a complete, valid batch."""

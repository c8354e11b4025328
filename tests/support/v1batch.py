"""Version 1 (msgpack) data batches written for tests: the agent only decodes version 1 now."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edge_agent.codecs.batch_model import QUALITY_CODE
from edge_agent.codecs.batch_v1 import _INT64_MAX, _INT64_MIN, _UINT64_MAX, VERSION_MSGPACK
from edge_agent.protocol.errors import CodecError
from edge_agent.protocol.readings import Quality, Reading


def _check_int(what: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise CodecError(f"{what} must be an int in {lo}..{hi}, got {value!r}")
    return value


def _check_value(where: str, value: object) -> None:
    if value is None or isinstance(value, bool | float | str):
        return
    if isinstance(value, int):
        _check_int(f"{where}: value", value, _INT64_MIN, _UINT64_MAX)
        return
    raise CodecError(f"{where}: value {value!r} has type {type(value).__name__}; "
                     "expected bool, int, float, str or None")


def _series_v1(point: str, rs: list[Reading], base: int) -> list[Any]:
    ts: list[int] = []
    values: list[Any] = []
    flags: list[Any] = []
    prev = base
    for i, r in enumerate(rs):
        where = f"reading {r.device}/{r.point} at {r.ts_ms}"
        t = _check_int(f"{where}: ts_ms", r.ts_ms, 0, _INT64_MAX)
        ts.append(t - prev)
        prev = t
        _check_value(where, r.value)
        values.append(r.value)
        try:
            quality = Quality(r.quality)
        except ValueError:
            raise CodecError(f"{where}: unknown quality {r.quality!r}") from None
        if quality is not Quality.GOOD or r.exception_code is not None:
            if r.exception_code is not None:
                _check_int(f"{where}: exception_code", r.exception_code, 0, 255)
            flags += [i, QUALITY_CODE[quality], r.exception_code]
    return [point, ts, values, flags] if flags else [point, ts, values]


def encode_batch_v1(gateway: str, epoch: int, seq: int, readings: Sequence[Reading]) -> bytes:
    """Encode readings as a version 1 (msgpack) data batch, version byte included."""
    if not isinstance(gateway, str) or not gateway:
        raise CodecError(f"gateway must be a non-empty str, got {gateway!r}")
    _check_int("epoch", epoch, 0, _INT64_MAX)
    _check_int("seq", seq, 0, _INT64_MAX)
    series: dict[str, dict[str, list[Reading]]] = {}
    for r in readings:
        if not isinstance(r.device, str) or not isinstance(r.point, str):
            raise CodecError(f"reading names must be str, got device {r.device!r} "
                             f"point {r.point!r}")
        series.setdefault(r.device, {}).setdefault(r.point, []).append(r)
    body_r: list[Any] = []
    base = 0  # the previous series' first timestamp: series of one batch start close together
    for device, points in series.items():
        entries = []
        for point, rs in points.items():
            entries.append(_series_v1(point, rs, base))
            base = rs[0].ts_ms
        body_r.append([device, entries])
    body = {"g": gateway, "e": epoch, "s": seq, "r": body_r}
    try:
        import msgpack

        packed = msgpack.packb(body, use_bin_type=True)
    except (ValueError, TypeError, OverflowError, UnicodeEncodeError) as exc:
        raise CodecError(f"data batch v1 could not be packed: {exc}") from exc
    return bytes([VERSION_MSGPACK]) + bytes(packed)

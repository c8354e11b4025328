"""Value kinds of data batch version 3 (codecs/FORMAT.md 10.3): how a series' values travel.

A series' values in one batch take one kind: bool (a bit each), int (a first value and
differences), scaled (the raw integer of a register read with a profile's scale, so
``k x scale (+ offset)`` gives the value back bit for bit), float32 (binary32 patterns as
order-preserving integers) or float64 (raw patterns). The kind a register type usually takes
costs one bit; another is named in four.
"""

from __future__ import annotations

import struct
from itertools import pairwise
from typing import Any

from edge_agent.codecs.bits import BitReader, BitWriter
from edge_agent.codecs.wire import I64_MAX, I64_MIN, wrap64

BOOL, INT, SCALED, F32, F64 = 0, 1, 2, 3, 4
KIND_NAMES = {BOOL: "bool", INT: "int", SCALED: "scaled", F32: "float32", F64: "float64"}
_D = struct.Struct(">d")
_F = struct.Struct(">f")
_I = struct.Struct(">I")
_INT_TYPES = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64", "bits"})


def default_kind(s_type: str, scale: float, offset: float) -> int:
    """The value kind a series of this register type usually takes (one bit when it does)."""
    plain = scale == 1 and offset == 0
    if s_type == "bool":
        return BOOL
    if s_type == "float32":
        return F32 if plain else F64
    if s_type in _INT_TYPES:
        return INT if plain else SCALED
    return F64


def _same(a: float, b: float) -> bool:
    return _D.pack(a) == _D.pack(b)


def _scaled(k: int, scale: float, offset: float) -> float:
    # The drivers' formula (drivers/modbus/decode.py ``_scaler``), so k x scale is bit-exact.
    return k * scale if offset == 0 else k * scale + offset


def _scaled_k(v: float, scale: float, offset: float) -> int | None:
    try:
        k = round((v - offset) / scale)
    except (OverflowError, ValueError):
        return None
    return k if I64_MIN <= k <= I64_MAX and _same(_scaled(k, scale, offset), v) else None


def _f32_ok(v: float) -> bool:
    if v != v:
        return False
    try:
        return _same(_F.unpack(_F.pack(v))[0], v)
    except OverflowError:
        return False


def _order32(v: float) -> int:
    p: int = _I.unpack(_F.pack(v))[0]
    return p if p < 0x80000000 else 0x7FFFFFFF - p


def float_kind(values: list[float], scale: float, offset: float, prefer: int) -> int:
    """The first of (the preferred kind, scaled, float32) that carries every value exactly,
    else float64."""
    scaled_ok = scale != 1 or offset != 0
    order = (SCALED, F32) if prefer == SCALED else (F32, SCALED) if scaled_ok else (F32,)
    for kind in order:
        if kind == SCALED and all(_scaled_k(v, scale, offset) is not None for v in values):
            return SCALED
        if kind == F32 and all(_f32_ok(v) for v in values):
            return F32
    return F64


def write_values(bw: BitWriter, kind: int, values: list[Any], scale: float,
                  offset: float) -> None:
    if kind == BOOL:
        for v in values:
            bw.bits(1 if v else 0, 1)
        return
    if kind == F64:
        for v in values:
            bw.bits(int.from_bytes(_D.pack(v), "big"), 64)
        return
    if kind == INT:
        ks = values
    elif kind == SCALED:
        ks = [_scaled_k(v, scale, offset) for v in values]
    else:
        ks = [_order32(v) for v in values]
    if kind == F32:
        bw.bits(_I.unpack(_F.pack(values[0]))[0], 32)
    else:
        bw.snum(ks[0])
    for a, b in pairwise(ks):
        bw.snum(wrap64(b - a))


def read_values(br: BitReader, kind: int, n: int, scale: float, offset: float,
                 i: int) -> list[Any]:
    what = f"value of series {i}"
    if kind == BOOL:
        return [br.bits(1, what) == 1 for _ in range(n)]
    if kind == F64:
        return [_D.unpack(br.bits(64, what).to_bytes(8, "big"))[0] for _ in range(n)]
    if kind == F32:
        p = br.bits(32, what)
        first = p if p < 0x80000000 else 0x7FFFFFFF - p
        ks = [first]
    else:
        ks = [br.snum(what)]
    for _ in range(n - 1):
        ks.append(wrap64(ks[-1] + br.snum(what)))
    if kind == INT:
        return ks
    if kind == SCALED:
        return [_scaled(k, scale, offset) for k in ks]
    out: list[Any] = []
    for s in ks:
        if not -(2**31) <= s <= 2**31 - 1:
            raise br.fail(f"{what}: float32 pattern {s} is out of range")
        p = s if s >= 0 else 0x7FFFFFFF - s
        v = _F.unpack(_I.pack(p))[0]
        if v != v:
            raise br.fail(f"{what}: float32 pattern {p:#010x} is a NaN")
        out.append(v)
    return out

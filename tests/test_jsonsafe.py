"""The strict JSON reader: every limit and rule refused with the path, and nothing else raised."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from edge_agent.protocol.jsonsafe import UnsafeJsonError, loads_strict
from tests.support.hostile_json import hostile_values, render

SEED = 20261202
print(f"test_jsonsafe seed {SEED}")
LIMITS = {"max_bytes": 1 << 20, "max_depth": 6, "max_items": 100, "max_str": 64}


def refused(data: bytes, path: str, words: str, **kw: object) -> None:
    with pytest.raises(UnsafeJsonError) as info:
        loads_strict(data, **{**LIMITS, **kw})  # type: ignore[arg-type]
    assert info.value.path == path, info.value
    assert words in info.value.problem, info.value


@pytest.mark.parametrize(("data", "path", "words"), [
    (b'{"a":[1,{"b":"\\ud800"}]}', "$.a[1].b", "lone surrogate"),
    (b'{"\\udfff":1}', "$", "key '\\udfff' holds a lone surrogate"),
    (b'"\xed\xa0\x80"', "$", "not UTF-8"),                 # a surrogate encoded in UTF-8
    (b'["\xff"]', "$", "not UTF-8 at byte 2"),
    (b"[" * 7 + b"]" * 7, "$", "nesting deeper than 6"),
    (b"[" * 100_000, "$", "nesting deeper than 6"),         # refused before parsing
    (b'{"a":1,"a":2}', "$", "repeats a key: 'a'"),
    (b'{"x":{"y":1.5}}', "$.x.y", "not an integer"),
    (b"[NaN]", "$[0]", "NaN is not JSON"),
    (b"[-Infinity]", "$[0]", "-Infinity is not JSON"),
    (b'{"v":' + b"1" * 5000 + b"}", "$.v", "5000 characters"),
    (b'{"v":9223372036854775808}', "$.v", "outside"),
    (b'["' + b"x" * 65 + b'"]', "$[0]", "65 characters, the limit is 64"),
    (b"[" + b"0," * 100 + b"0]", "$", "101 items, the limit is 100"),
    (b'{"odd key":[true, 1.0]}', "$['odd key'][1]", "not an integer"),
    (b"{not json}", "$", "not valid JSON"),
    (b"\xef\xbb\xbf{}", "$", "not valid JSON"),             # a BOM is not JSON text
    (b"\xff\xfe{\x00}\x00", "$", "not UTF-8"),             # UTF-16: json.loads would guess it
])
def test_each_rule_is_refused_with_the_path(data: bytes, path: str, words: str) -> None:
    refused(data, path, words)


def test_sizes_ranges_and_floats_are_the_callers_choice() -> None:
    refused(b"[1,2]", "$", "5 bytes exceed the limit of 4", max_bytes=4)
    refused(b"[[],[]]", "$", "3 arrays and objects, the limit is 2", max_containers=2)
    refused(b"[-1]", "$[0]", "outside 0..10", int_min=0, int_max=10)
    assert loads_strict(b"[1.5, -0.0]", **LIMITS, allow_float=True) == [1.5, -0.0]
    refused(b"[1e999]", "$[0]", "beyond binary64", allow_float=True)
    assert loads_strict(b'["\\\\ud800"]', **LIMITS) == ["\\ud800"]  # type: ignore[arg-type]


def test_a_hostile_megabyte_costs_little() -> None:
    # Strings that never end and brackets by the hundred thousand: linear work, refused.
    for data in (b'"' + b'\\"' * 300_000, b"[" * 500_000 + b"]" * 500_000,
                 b'{"a":"' + b"[" * 500_000 + b'"}'):
        start = time.perf_counter()
        with pytest.raises(UnsafeJsonError):
            loads_strict(data, max_bytes=4 << 20, max_depth=6, max_items=100, max_str=64)
        assert time.perf_counter() - start < 1.0


def test_not_bytes_is_refused() -> None:
    with pytest.raises(UnsafeJsonError, match="expected bytes, got str"):
        loads_strict("[]", **LIMITS)  # type: ignore[arg-type]


@seed(SEED)
@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=64), hostile_values().map(render),
                 st.lists(hostile_values(), max_size=4).map(render)))
def test_anything_is_a_value_or_an_unsafe_json_error(data: bytes) -> None:
    try:
        doc = loads_strict(data, **LIMITS)  # type: ignore[arg-type]
    except UnsafeJsonError as exc:
        assert exc.path.startswith("$") and exc.problem
        return
    # What passes is plain JSON within the limits, as the standard parser reads it.
    assert doc == json.loads(data)


json_trees = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=5),
    max_leaves=30)


@seed(SEED)
@settings(max_examples=300, deadline=None)
@given(json_trees)
def test_plain_json_within_the_limits_reads_as_json_loads_does(doc: object) -> None:
    data = json.dumps(doc, ensure_ascii=False).encode()
    try:
        got = loads_strict(data, max_bytes=1 << 20, max_depth=10, max_items=10, max_str=40)
    except UnsafeJsonError as exc:  # only for a real breach: nesting too deep
        assert "nesting" in exc.problem
        return
    assert got == doc

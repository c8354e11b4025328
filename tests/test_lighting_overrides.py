"""The lighting override store: validated, atomic on disk, its end time kept across restarts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.control.lighting_overrides import (
    OverrideError,
    OverrideStore,
    overrides_path,
)
from edge_agent.protocol.clock import FakeClock


def test_set_persists_and_survives_a_restart(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000.0)
    store = OverrideStore(overrides_path(tmp_path), clock, fsync=False)
    seen: list[int] = []
    store.add_listener(lambda: seen.append(1))
    store.set("group:north", 40, clock.now() + 7200, "cmd-1")
    store.set("lamp-101", 0, clock.now() + 600, "cmd-2")
    assert seen == [1, 1]
    assert (overrides_path(tmp_path).stat().st_mode & 0o777) == 0o600
    clock.advance(3600)   # the gateway restarts an hour into the two-hour override
    again = OverrideStore(overrides_path(tmp_path), clock, fsync=False)
    active = again.active(clock.now())
    assert set(active) == {"group:north"}          # lamp-101's ten minutes are over
    assert active["group:north"].until_s == 1_800_000_000.0 + 7200
    assert active["group:north"].command_id == "cmd-1"
    assert again.next_end(clock.now()) == 1_800_000_000.0 + 7200
    assert again.active(1_800_000_000.0 + 7200) == {}


def test_clear_ends_an_override_now(tmp_path: Path) -> None:
    clock = FakeClock()
    store = OverrideStore(overrides_path(tmp_path), clock, fsync=False)
    store.set("lamp-1", 55.5, clock.now() + 60, "c")
    assert store.clear("lamp-1") is True
    assert store.clear("lamp-1") is False
    assert OverrideStore(overrides_path(tmp_path), clock).active(clock.now()) == {}


@pytest.mark.parametrize(("target", "level", "until", "cid", "word"), [
    ("", 50, 60, "c", "target"),
    ("group:", 50, 60, "c", "group"),
    ("lamp-1", 101, 60, "c", "level"),
    ("lamp-1", float("nan"), 60, "c", "level"),
    ("lamp-1", True, 60, "c", "level"),
    ("lamp-1", 50, float("inf"), "c", "end"),
    ("lamp-1", 50, 400 * 86400, "c", "end"),
    ("lamp-1", 50, 0, "c", "not after now"),
    ("lamp-1", 50, 60, "x" * 200, "command id"),
])
def test_bad_overrides_are_refused_and_change_nothing(tmp_path: Path, target: str,
                                                      level: float, until: float, cid: str,
                                                      word: str) -> None:
    clock = FakeClock(0.0)
    store = OverrideStore(overrides_path(tmp_path), clock, fsync=False)
    with pytest.raises(OverrideError, match=word):
        store.set(target, level, until, cid)
    assert not overrides_path(tmp_path).exists()


def test_a_damaged_file_is_set_aside(tmp_path: Path) -> None:
    path = overrides_path(tmp_path)
    path.write_bytes(b'{"overrides": [{"target": 1}]}')
    store = OverrideStore(path, FakeClock(), fsync=False)
    assert store.active(0) == {}
    assert json.loads(path.with_name(path.name + ".bad").read_bytes())["overrides"]

"""The bdSeq file: one more per connection, 255 then 0, kept across restarts, garbage refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.runtime.sparkplug.bdseq import BdSeqStore


def test_bdseq_starts_at_0_counts_per_connect_and_survives_a_restart(tmp_path: Path) -> None:
    # [tck-id-topics-nbirth-bdseq-increment]
    path = tmp_path / "sparkplug-bdseq"
    store = BdSeqStore(path)
    assert [store.next() for _ in range(3)] == [0, 1, 2]
    assert BdSeqStore(path).next() == 3


def test_bdseq_wraps_after_255(tmp_path: Path) -> None:
    path = tmp_path / "sparkplug-bdseq"
    path.write_text("254\n")
    store = BdSeqStore(path)
    assert [store.next() for _ in range(3)] == [255, 0, 1]


@pytest.mark.parametrize("content", [b"256", b"-1", b"abc", b"\xff\xfe", b"1" * 100, b""])
def test_a_bad_file_starts_again_at_0(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "sparkplug-bdseq"
    path.write_bytes(content)
    assert BdSeqStore(path).next() == 0
    assert path.read_text() == "0\n"


def test_an_unwritable_state_dir_costs_only_the_persistence(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = BdSeqStore(blocker / "sparkplug-bdseq")  # its directory is a file
    assert [store.next() for _ in range(2)] == [0, 1]

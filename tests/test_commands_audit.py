"""The gateway's command audit log (issue 12): append-only, survives restarts, answers repeated
ids, tolerates a torn last line, and remembers the last plan change of each cabinet."""

from __future__ import annotations

from pathlib import Path

from edge_agent.control.cmdaudit import AUDIT_FILE, KEEP_S, AuditLog


def test_the_log_survives_a_restart_and_indexes_verified_ids_only(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, fsync=False)
    log.append({"id": "a", "status": "accepted", "ts": 1000})
    log.append({"id": "a", "status": "done", "ts": 2000, "action": "plan", "device": "sig"})
    log.append({"id": "b", "status": "rejected", "ts": 3000})  # unverified: claims no id
    log.append({"id": "c", "status": "accepted", "ts": 4000})  # cut short by a restart
    again = AuditLog(tmp_path, fsync=False)
    seen_a = again.seen("a")
    assert seen_a is not None and seen_a["status"] == "done"
    assert again.seen("b") is None
    seen_c = again.seen("c")
    assert seen_c is not None and seen_c["status"] == "accepted"
    assert again.last_plan_change == {"sig": 2.0}
    assert again.health()["by_status"] == {"accepted": 2, "done": 1, "rejected": 1}
    assert (tmp_path / AUDIT_FILE).stat().st_mode & 0o777 == 0o600


def test_a_torn_or_damaged_line_is_skipped_and_counted(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, fsync=False)
    log.append({"id": "a", "status": "done", "ts": 1})
    with (tmp_path / AUDIT_FILE).open("ab") as fh:
        fh.write(b'["not a record"]\n{"id": "b", "status": "do')  # a power cut mid-line
    again = AuditLog(tmp_path, fsync=False)
    assert again.damaged == 2 and again.seen("a") is not None and again.seen("b") is None
    again.append({"id": "b", "status": "done", "ts": 2})
    after = AuditLog(tmp_path, fsync=False)  # the new record did not join the torn line
    assert after.damaged == 2 and after.seen("b") is not None


def test_the_log_is_bounded_and_a_rotation_keeps_what_the_journal_needs(tmp_path: Path) -> None:
    """A flood of unverified commands rotates the log; no recent verified id and no cabinet's
    last plan change is forgotten, so a replay of a live command is still answered, not run."""
    log = AuditLog(tmp_path, fsync=False, max_bytes=4096)
    day_ms = int(KEEP_S * 1000)
    log.append({"id": "old", "status": "done", "ts": 1_000})
    log.append({"id": "plan", "status": "done", "ts": 2_000, "action": "plan", "device": "sig"})
    log.append({"id": "live", "status": "done", "ts": day_ms})
    for i in range(400):  # each ~50 bytes: several rotations
        log.append({"id": f"junk-{i}", "status": "rejected", "ts": day_ms + 1_000 + i})
    assert log.rotations >= 3
    assert (tmp_path / AUDIT_FILE).stat().st_size <= 4096
    assert (tmp_path / f"{AUDIT_FILE}.1").stat().st_size <= 4096
    again = AuditLog(tmp_path, fsync=False)
    assert again.seen("live") is not None and again.seen("plan") is not None
    assert again.seen("old") is None  # verified longer ago than a command can live
    assert again.last_plan_change == {"sig": 2.0}


def test_a_rotation_cut_between_its_renames_loses_nothing(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, fsync=False)
    log.append({"id": "a", "status": "done", "ts": 1})
    (tmp_path / AUDIT_FILE).rename(tmp_path / f"{AUDIT_FILE}.1")  # the crash point
    again = AuditLog(tmp_path, fsync=False)
    assert again.seen("a") is not None

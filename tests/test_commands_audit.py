"""The gateway's command audit log (issue 12): append-only, survives restarts, answers repeated
ids, tolerates a torn last line, and remembers the last plan change of each cabinet."""

from __future__ import annotations

from pathlib import Path

from edge_agent.control.cmdaudit import AUDIT_FILE, AuditLog


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

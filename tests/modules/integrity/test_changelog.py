"""The hash-chained change log: appends, verification, and tampering found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from yoroi.modules.integrity.changelog import ChangeLog, log_path


@pytest.fixture
def log(tmp_path: Path) -> ChangeLog:
    changes = ChangeLog.at_state(tmp_path)
    for n in range(5):
        changes.append({"path": f"/etc/f{n}", "kind": "modify"}, when=1000.0 + n)
    return changes


def _lines(log: ChangeLog) -> list[str]:
    return log.path.read_text().splitlines()


def _write(log: ChangeLog, lines: list[str]) -> None:
    log.path.write_text("".join(f"{line}\n" for line in lines))


def test_records_chain_from_a_random_genesis(log: ChangeLog, tmp_path: Path) -> None:
    assert log.path == log_path(tmp_path) == tmp_path / "integrity" / "changes.log"
    header, *records = (json.loads(line) for line in _lines(log))
    assert len(header["genesis"]) == 64 and records[0]["prev"] == header["genesis"]
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert all(b["prev"] == a["hash"] for a, b in zip(records, records[1:], strict=False))
    result = log.verify()
    assert result.ok and result.records == 5 and result.head == log.head()
    assert [r.change["path"] for r in log.records()] == [f"/etc/f{n}" for n in range(5)]


def test_another_writer_continues_the_same_chain(log: ChangeLog) -> None:
    other = ChangeLog(log.path)
    other.append({"path": "/etc/other"})
    log.append({"path": "/etc/again"})  # log's cached head is stale: it must re-read the tail
    result = log.verify()
    assert result.ok and result.records == 7
    assert ChangeLog(log.path).head().seq == 7


def test_an_edited_record_is_the_first_broken_link(log: ChangeLog) -> None:
    lines = _lines(log)
    record = json.loads(lines[3])
    record["change"]["path"] = "/etc/innocent"
    lines[3] = json.dumps(record)
    _write(log, lines)
    result = log.verify()
    assert not result.ok and result.broken_line == 4 and result.records == 2
    assert "edited" in (result.reason or "")


def test_an_edited_last_record_is_found(log: ChangeLog) -> None:
    lines = _lines(log)
    lines[-1] = lines[-1].replace("/etc/f4", "/etc/xx")
    _write(log, lines)
    assert log.verify().broken_line == 6


def test_a_deleted_record_is_found(log: ChangeLog) -> None:
    lines = _lines(log)
    del lines[2]
    _write(log, lines)
    result = log.verify()
    assert not result.ok and result.broken_line == 3 and "removed" in (result.reason or "")


def test_a_deleted_first_record_and_a_replaced_header_are_found(log: ChangeLog) -> None:
    lines = _lines(log)
    _write(log, [lines[0], *lines[2:]])
    assert log.verify().broken_line == 2
    header = json.loads(lines[0])
    header["genesis"] = "0" * 64
    _write(log, [json.dumps(header), *lines[1:]])
    result = log.verify()
    assert not result.ok and result.broken_line == 2 and result.records == 0


def test_a_rewritten_chain_is_caught_by_a_head_kept_elsewhere(log: ChangeLog) -> None:
    kept = log.head()
    _write(log, _lines(log)[:-1])  # the newest record cut: the shorter chain is valid alone
    assert log.verify().ok
    result = log.verify(expected_head=kept)
    assert not result.ok and "kept head" in (result.reason or "")


def test_garbage_lines_are_reported_not_raised(log: ChangeLog) -> None:
    lines = _lines(log)
    lines[2] = "{not json"
    _write(log, lines)
    result = log.verify()
    assert not result.ok and result.broken_line == 3
